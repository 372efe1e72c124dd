"""What a user's mistake looks like: one line naming the file, value or what to do, and exit status 2 (130 on Ctrl-C),
never a traceback; and no run folder for a run that never started."""

import struct

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.cli import main

TINY = ["data.num_train=32", "data.num_val=16", "data.batch_size=16", "loop.epochs=1", "loop.progress=false",
        "eval.overlays=0", "model.kwargs={layers: [1, 1, 1, 1], channels: [16, 16, 16, 16], stem_width: 16}"]


def _one_line(capsys, status, code, *expected):
    err = capsys.readouterr().err
    assert code == status, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


def test_a_safetensors_header_claiming_2_to_the_60_bytes(tmp_path, capsys):
    hostile = tmp_path / "hostile.safetensors"
    hostile.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    _one_line(capsys, 2, main(["overlay", str(hostile), "--samples", "1"]), "is not a valid safetensors file")
    _one_line(capsys, 2, main(["evaluate-cams", str(hostile), "--num-images", "2"]),
              "is not a valid safetensors file")


class Payload:  # a pickled object that weights_only loading must refuse
    pass


def test_a_pickle_weights_only_refuses(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1), "payload": Payload()}, path)
    _one_line(capsys, 2, main(["overlay", str(path), "--model", "resnet18", "--samples", "1"]),
              "holds more than tensors", "weights_only=True")
    _one_line(capsys, 2, main(["train", "--config", "configs/quickstart.yaml", *TINY, f"model.pretrained={path}",
                               f"checkpoint.output_dir={tmp_path / 'runs'}"]), "holds more than tensors")


def test_on_corrupt_fail_names_the_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / split / c / f"{i}.png")
    (tmp_path / "train" / "b" / "9.png").write_bytes(b"not a png")
    code = main(["train", "--config", "configs/quickstart.yaml", *TINY, "data.name=imagefolder",
                 f"data.root={tmp_path / 'train'}", f"data.val_root={tmp_path / 'val'}", "data.batch_size=4",
                 "data.on_corrupt=fail", "data.num_workers=1", f"checkpoint.output_dir={tmp_path / 'runs'}"])
    _one_line(capsys, 2, code, "cannot read image", "9.png", "data.on_corrupt='fail'")


def test_resuming_with_another_architecture(tmp_path, capsys):
    out = f"checkpoint.output_dir={tmp_path}"
    assert main(["train", "--config", "configs/quickstart.yaml", *TINY, out]) == 0
    capsys.readouterr()
    code = main(["train", "--config", "configs/quickstart.yaml", *TINY, out, "--resume",
                 "--set", "model.kwargs.channels=[16, 16, 32, 32]"])
    _one_line(capsys, 2, code, "was written by another architecture", "of another shape", "--resume")


@pytest.mark.parametrize(("override", "expected"), [
    ("loop.device=tpu", "loop.device='tpu' is not a torch device"),
    ("model.kwargs.layerz=[1, 1, 1, 1]", "do not fit timm's 'resnet18_cbam'"),
])
def test_bad_device_and_timm_kwargs_leave_no_run_folder(tmp_path, capsys, override, expected):
    code = main(["train", "--config", "configs/quickstart.yaml", *TINY, override, f"checkpoint.output_dir={tmp_path}"])
    _one_line(capsys, 2, code, expected)
    assert not any(tmp_path.iterdir())


def test_ctrl_c_says_where_to_resume(tmp_path, capsys, monkeypatch):
    from visattn.training import run as run_module

    calls = []
    real = run_module.train_one_epoch

    def interrupted_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "train_one_epoch", interrupted_in_the_second_epoch)
    code = main(["train", "--config", "configs/quickstart.yaml", *TINY, "loop.epochs=3",
                 f"checkpoint.output_dir={tmp_path}"])
    _one_line(capsys, 130, code, "interrupted in epoch 2 of 3", "last.safetensors holds epoch 1",
              f"Resume with: visattn train --resume {tmp_path / 'quickstart'}")


def test_divergence_in_the_first_epoch_says_nothing_was_kept(tmp_path, capsys):
    code = main(["train", "--config", "configs/quickstart.yaml", *TINY, "optim.lr=1e30",
                 f"checkpoint.output_dir={tmp_path}"])
    _one_line(capsys, 2, code, "loss is", "No checkpoint was written yet")
