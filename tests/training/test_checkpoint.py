import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import timm
import torch

from visattn.files import atomic_write
from visattn.models import read_state_dict
from visattn.training.checkpoint import load_checkpoint, save_checkpoint, save_weights


def _model_and_optimizer():
    model = timm.create_model("resnet18", num_classes=3, layers=(1, 1, 1, 1), channels=(8, 8, 8, 8), stem_width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(4, 3, 32, 32)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    return model, opt


def test_round_trip_restores_model_optimizer_and_rng(tmp_path):
    model, opt = _model_and_optimizer()
    ema = timm.utils.ModelEmaV3(model, decay=0.9)
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model=model, optimizer=opt, ema=ema, progress={"epoch": 3, "step": 42, "best": 0.5})
    expected_random = (torch.rand(3), np.random.rand(3), __import__("random").random())

    model2, opt2 = _model_and_optimizer()
    ema2 = timm.utils.ModelEmaV3(model2, decay=0.9)
    torch.manual_seed(123)
    progress = load_checkpoint(path, model=model2, optimizer=opt2, ema=ema2)
    assert progress == {"epoch": 3, "step": 42, "best": 0.5}
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    state_a, state_b = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        assert torch.equal(state_a[index]["momentum_buffer"], state_b[index]["momentum_buffer"])
    assert opt2.param_groups[0]["momentum"] == 0.9
    # RNG streams continue exactly where the checkpoint left them.
    assert torch.equal(torch.rand(3), expected_random[0])
    assert np.array_equal(np.random.rand(3), expected_random[1])
    assert __import__("random").random() == expected_random[2]


def test_checkpoint_is_not_a_pickle(tmp_path):
    model, opt = _model_and_optimizer()
    save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=opt, progress={"epoch": 1})
    assert (tmp_path / "c.safetensors").read_bytes()[8:9] == b"{"  # safetensors: 8-byte length + JSON header


def test_weights_file_loads_as_plain_state_dict(tmp_path):
    model, _ = _model_and_optimizer()
    save_weights(tmp_path / "best.safetensors", model.state_dict(), {"val_acc": 0.9})
    state = read_state_dict(tmp_path / "best.safetensors")
    assert state.keys() == model.state_dict().keys()


def test_plain_weights_rejected_as_training_checkpoint(tmp_path):
    model, _ = _model_and_optimizer()
    save_weights(tmp_path / "best.safetensors", model.state_dict())
    with pytest.raises(ValueError, match="not a visattn training checkpoint"):
        load_checkpoint(tmp_path / "best.safetensors", model=model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors", model=model)


def test_atomic_write_gives_normal_permissions(tmp_path):
    atomic_write(tmp_path / "new.txt", lambda tmp: open(tmp, "w").write("x"))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("previous")

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, broken)
    assert target.read_text() == "previous"
    assert os.listdir(tmp_path) == ["f.txt"]


@pytest.mark.slow
def test_kill_during_writes_leaves_a_loadable_checkpoint(tmp_path):
    # A child rewrites a ~40 MB checkpoint in a loop; SIGKILL lands mid-write; the file must still load.
    script = textwrap.dedent(f"""
        import torch
        from visattn.training.checkpoint import save_checkpoint
        model = torch.nn.Linear(3200, 3200)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        i = 0
        while True:
            i += 1
            with torch.no_grad():
                model.weight.fill_(i)
            save_checkpoint({str(tmp_path / 'last.safetensors')!r}, model=model, optimizer=opt,
                            progress={{"epoch": i}})
            print(i, flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "1"  # the first checkpoint is complete
    time.sleep(0.7)
    child.send_signal(signal.SIGKILL)
    child.wait()
    model = torch.nn.Linear(3200, 3200)
    progress = load_checkpoint(tmp_path / "last.safetensors", model=model, restore_rng=False)
    assert progress["epoch"] >= 1
    assert torch.all(model.weight == progress["epoch"])  # weights and progress come from the same write


def test_grad_scaler_state_survives_a_checkpoint(tmp_path):
    from visattn.training.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    scaler.load_state_dict({"scale": 512.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 7,
                            "_growth_tracker": 3})  # as after a few overflows and good steps
    save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=optimizer, scaler=scaler, progress={"epoch": 1})
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    load_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=optimizer, scaler=fresh)
    assert fresh.state_dict() == scaler.state_dict()
    # A checkpoint written without a scaler leaves a scaler as it was.
    save_checkpoint(tmp_path / "d.safetensors", model=model, optimizer=optimizer, progress={"epoch": 1})
    other = torch.amp.GradScaler("cpu", init_scale=8.0)
    load_checkpoint(tmp_path / "d.safetensors", model=model, optimizer=optimizer, scaler=other)
    assert other.get_scale() == 8.0


def test_metrics_of_a_missing_file_are_empty(tmp_path):
    from visattn.training.reporting import read_metrics

    assert read_metrics(tmp_path / "nowhere.jsonl") == []


def test_next_write_removes_a_killed_writers_temporary_file(tmp_path):
    from visattn.files import atomic_write_text

    target = tmp_path / "last.safetensors"
    atomic_write_text(target, "v1")
    two_hours_ago = time.time() - 7200
    leftover = tmp_path / ".last.safetensors.k01sjy1s.tmp"  # what a SIGKILL mid-write leaves
    recent = tmp_path / ".last.safetensors.q9x_2abc.tmp"  # young: maybe a concurrent writer's, left alone
    longer = tmp_path / ".last.safetensors.x.k01sjy1s.tmp"  # the temporary file of "last.safetensors.x"
    other = tmp_path / ".summary.json.k01sjy1s.tmp"  # another file's
    for f in (leftover, recent, longer, other):
        f.write_text("half a file")
        if f is not recent:
            os.utime(f, (two_hours_ago, two_hours_ago))
    atomic_write_text(target, "v2")
    assert target.read_text() == "v2"
    assert not leftover.exists() and recent.exists() and longer.exists() and other.exists()
