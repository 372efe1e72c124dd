"""End-to-end training runs on the built-in data: it learns, resumes exactly, is deterministic, stops on NaN."""

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from visattn.config import load_train_config
from visattn.pipelines.train import train
from visattn.training import loop as loop_module
from visattn.training import run as run_module
from visattn.training.loop import TrainingDiverged, evaluate
from visattn.training.run_folder import recorded_run_name, resolve_run_dir

ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.num_train=384", "data.num_val=192", "data.batch_size=32", "loop.progress=false", "optim.warmup_epochs=0",
        "eval.overlays=0"]


def _cfg(tmp_path, *extra):
    return load_train_config(ROOT / "configs" / "quickstart.yaml",
                             [*TINY, f"checkpoint.output_dir={tmp_path}", *extra])


def _metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _comparable(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds", "train_img_s")} for r in records]


@pytest.mark.slow
def test_short_run_learns_and_writes_its_files(tmp_path):
    result = train(_cfg(tmp_path, "loop.epochs=8", "data.num_train=4000", "data.num_val=1000", "data.batch_size=128",
                        "optim.lr=0.2", "eval.overlays=3"), config_path="quick.yaml")
    records = _metrics(result.run_dir)
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 0.25  # log(10) = 2.30 is the untrained loss
    assert result.best_accuracy > 0.2  # chance is 0.1; the full quickstart (34 epochs of 8000) reaches >= 0.95
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "last.safetensors", "best.safetensors", "curves.png",
            "summary.json"} <= files
    assert len(records) == 8
    saved = (result.run_dir / "config.yaml").read_text()
    assert "visattn_version" in saved and "num_train: 4000" in saved
    # The run ends with overlays of the best weights, rebuilt from the run folder alone.
    manifest = json.loads((result.run_dir / "overlays" / "manifest.json").read_text())
    assert len(manifest["images"]) == 3 and (result.run_dir / "overlays" / "index.html").is_file()
    assert manifest["run"]["weights"] == str(result.run_dir / "best.safetensors")


def test_same_seed_same_metrics_and_new_run_folder(tmp_path):
    first = train(_cfg(tmp_path, "loop.epochs=1", "loop.deterministic=true"), config_path="det.yaml")
    second = train(_cfg(tmp_path, "loop.epochs=1", "loop.deterministic=true"), config_path="det.yaml")
    assert second.run_dir != first.run_dir  # an earlier run is never overwritten
    assert _comparable(_metrics(first.run_dir)) == _comparable(_metrics(second.run_dir))


@pytest.mark.slow
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "loop.epochs=3", "data.num_workers=0")
    full = train(cfg, config_path="full.yaml")

    real_epoch = run_module.train_one_epoch

    def interrupted(*args, epoch, **kwargs):
        if epoch == 2:
            raise KeyboardInterrupt  # a kill after epoch 2's checkpoint
        return real_epoch(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(run_module, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, config_path="resumed.yaml")
    monkeypatch.setattr(run_module, "train_one_epoch", real_epoch)
    resumed = train(cfg, config_path="resumed.yaml", resume=True)
    assert resumed.run_dir.name == "resumed"
    assert _comparable(_metrics(resumed.run_dir)) == _comparable(_metrics(full.run_dir))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = loop_module.F.cross_entropy

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 12 else loss  # epoch 1 has 12 steps

    monkeypatch.setattr(loop_module.F, "cross_entropy", poisoned)
    with pytest.raises(TrainingDiverged, match="loss is nan at epoch 2"):
        train(_cfg(tmp_path, "loop.epochs=3"), config_path="nan.yaml")
    run_dir = tmp_path / "nan"
    assert len(_metrics(run_dir)) == 1
    from safetensors import safe_open

    with safe_open(str(run_dir / "last.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["progress"])["epoch"] == 1
        assert all(torch.isfinite(f.get_tensor(k)).all() for k in f.keys() if k.startswith("model."))


def test_inject_section_and_ema(tmp_path, capsys):
    cfg = _cfg(tmp_path, "loop.epochs=1", "model.name=resnet18", "model.attn={block: se, stages: [3, 4]}",
               "loop.ema_decay=0.9")
    with warnings.catch_warnings(record=True) as caught:  # the run prints inject's report; no warning repeats it
        warnings.simplefilter("always")
        result = train(cfg, config_path="inj.yaml")
    assert not [w for w in caught if "visattn.inject" in str(w.message)]
    assert re.search(r"new state_dict keys: \d+ \(a checkpoint of the original model", capsys.readouterr().out)
    record = _metrics(result.run_dir)[0]
    assert "ema_val_acc" in record


def test_cli_reports_config_errors(tmp_path, capsys):
    from visattn.cli import main

    assert main(["train", "--config", str(ROOT / "configs" / "quickstart.yaml"), "optim.lr_rate=0.1"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err


@pytest.mark.parametrize(("override", "message"), [
    ("data.name=cifar10", "cifar-10-batches-py"),  # where the files belong, not a traceback
    ("loop.amp=fp16", "needs CUDA"),
    ("eval.overlay_layers=[layer9]", "'layer9' matches no module"),
])
def test_cli_reports_what_train_rejects_without_a_traceback(tmp_path, capsys, override, message):
    from visattn.cli import main

    argv = ["train", "--config", str(ROOT / "configs" / "quickstart.yaml"), *TINY, f"checkpoint.output_dir={tmp_path}",
            f"data.root={tmp_path / 'nowhere'}", "eval.overlays=1", override]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("visattn train: ") and message in err and "Traceback" not in err


def test_resume_of_a_run_folder_uses_its_config(tmp_path, capsys):
    from visattn.cli import main

    narrow = "model.kwargs.channels=[16, 16, 16, 16]"
    cfg = _cfg(tmp_path, "loop.epochs=1", "data.num_train=64", "data.num_val=32", narrow)
    first = train(cfg, config_path="narrow.yaml")
    # No --config: the defaults would build a model the checkpoint does not fit; the folder's config.yaml does.
    assert main(["train", "--resume", str(first.run_dir), "loop.epochs=2"]) == 0
    assert "resume: using" in capsys.readouterr().out
    assert [r["epoch"] for r in _metrics(first.run_dir)] == [1, 2]
    assert recorded_run_name(first.run_dir) == "narrow"  # the run keeps its name
    # Resumed once under another config's name, the folder is still narrow.yaml's to resume.
    assert main(["train", "--config", str(ROOT / "configs" / "quickstart.yaml"), *TINY, "loop.epochs=3",
                 "data.num_train=64", "data.num_val=32", "model.kwargs.channels=[16, 16, 16, 16]",
                 "--resume", str(first.run_dir)]) == 0
    assert resolve_run_dir(cfg, "narrow.yaml", resume=True) == first.run_dir
    # A folder from before run names were recorded keeps its folder name.
    config = first.run_dir / "config.yaml"
    config.write_text(config.read_text().replace("run_name: narrow", "run_name: null").replace(
        "run_name: quickstart", "run_name: null"))
    assert recorded_run_name(first.run_dir) is None
    assert main(["train", "--resume", str(first.run_dir), "loop.epochs=4"]) == 0
    assert recorded_run_name(first.run_dir) == "narrow"
    config.unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(first.run_dir), "loop.epochs=5"]) == 2
    assert "has no config.yaml to rebuild the run from; pass --config" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "quickstart.yaml"), *TINY,
               f"checkpoint.output_dir={tmp_path}", "loop.epochs=1", "loop.device=cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = _metrics(tmp_path / "quickstart")
    assert len(records) == 1  # only rank 0 writes
    # Both ranks' batches are counted: 384 images / (32 per rank x 2 ranks) = 6 steps.
    assert records[0]["step"] == 6
    assert result.stdout.count("run folder:") == 1
    # The ranks evaluated the model rank 0 saved (BatchNorm statistics broadcast first), so a single process
    # evaluating the saved weights gets the logged validation loss.
    from visattn.data.datasets import build_datasets
    from visattn.pipelines.trained import load_trained
    from visattn.training.distributed import DistInfo

    trained = load_trained(tmp_path / "quickstart")
    alone = run_module._evaluate(trained.model, build_datasets(trained.config.data).val, trained.config, DistInfo(),
                                 torch.device("cpu"), "none")
    assert alone.loss == pytest.approx(records[0]["val_loss"], rel=1e-5)


def test_overlay_settings_are_checked_before_training(tmp_path):
    from visattn.config.loader import ConfigError

    with pytest.raises(ConfigError, match="unknown CAM method 'gradcm'"):
        _cfg(tmp_path, "eval.overlay_methods=[gradcm]")
    cfg = _cfg(tmp_path, "eval.overlays=2", "eval.overlay_layers=[layer5]")
    with pytest.raises(ValueError, match="'layer5' matches no module"):
        train(cfg, config_path="bad.yaml")
    assert not list(tmp_path.glob("*/metrics.jsonl"))  # nothing ran


def _interrupt_at(monkeypatch, stop_epoch):
    real_epoch = run_module.train_one_epoch

    def interrupted(*args, epoch, **kwargs):
        if epoch == stop_epoch:
            raise KeyboardInterrupt
        return real_epoch(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(run_module, "train_one_epoch", interrupted)
    return real_epoch


def test_bare_resume_continues_the_latest_run_of_the_config(tmp_path, monkeypatch, capsys):
    cfg = _cfg(tmp_path, "loop.epochs=2", "data.num_workers=0")
    finished = train(cfg, config_path="dup.yaml")
    real_epoch = _interrupt_at(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, config_path="dup.yaml")  # the second run of this config goes to dup-1 and stops after epoch 1
    monkeypatch.setattr(run_module, "train_one_epoch", real_epoch)
    before = (finished.run_dir / "metrics.jsonl").read_text()

    # The resumed run brings a changed optimiser setting: the config wins over the checkpoint's param_groups.
    changed = load_train_config(ROOT / "configs" / "quickstart.yaml",
                                [*TINY, f"checkpoint.output_dir={tmp_path}", "loop.epochs=2", "data.num_workers=0",
                                 "optim.weight_decay=0.01"])
    resumed = train(changed, config_path="dup.yaml", resume=True)
    assert resumed.run_dir == tmp_path / "dup-1"
    assert (finished.run_dir / "metrics.jsonl").read_text() == before  # the finished run is left alone
    records = _metrics(resumed.run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["seconds"] > records[0]["seconds"]  # time keeps counting across the resume
    assert "weight_decay 0.0005 -> 0.01" in capsys.readouterr().out
    from safetensors import safe_open

    with safe_open(str(resumed.run_dir / "last.safetensors"), "pt") as f:
        groups = json.loads(f.metadata()["optim"])["param_groups"]
    assert {g["weight_decay"] for g in groups} == {0.01, 0.0}  # decayed weights, and the undecayed 1-D group


def test_each_rank_draws_its_own_augmentations(tmp_path):
    from visattn.data.datasets import build_datasets
    from visattn.training.distributed import DistInfo

    cfg = _cfg(tmp_path, "data.augment=cifar")
    data = build_datasets(cfg.data)

    def first_image(rank):
        run_module._loader(data.train, cfg, True, DistInfo(rank=rank, world_size=2), epoch_seed=5)
        return data.train[0][0]  # the transform is seeded by _loader (num_workers=0)

    assert not torch.equal(first_image(0), first_image(1))
    assert torch.equal(first_image(1), first_image(1))  # still reproducible per rank


def test_bare_resume_never_picks_another_configs_numbered_folder(tmp_path):
    cfg = _cfg(tmp_path, "loop.epochs=1")
    own = train(cfg, config_path="resnet.yaml")
    other = train(cfg, config_path="resnet-50.yaml")  # "resnet-50" looks like run 50 of "resnet"
    assert other.run_dir.name == "resnet-50"
    assert resolve_run_dir(cfg, "resnet.yaml", resume=True) == own.run_dir
    nested = _cfg(tmp_path, "loop.epochs=1", "checkpoint.run_name=sub/exp")
    first, second = (train(nested, config_path="x.yaml") for _ in range(2))
    assert (first.run_dir.name, second.run_dir.name) == ("exp", "exp-1")
    assert resolve_run_dir(nested, "x.yaml", resume=True) == second.run_dir
    # exp.yaml's second run is the folder exp-1; a config named exp-1.yaml then runs in exp-1-1 and must resume
    # there, never in exp.yaml's exp-1.
    plain = _cfg(tmp_path, "loop.epochs=1", "data.num_train=64", "data.num_val=32")
    train(plain, config_path="exp.yaml")
    exp_second = train(plain, config_path="exp.yaml")
    assert exp_second.run_dir.name == "exp-1"
    with pytest.raises(FileNotFoundError, match=r"no run 'exp-1' to resume: .*exp-1 holds run 'exp'"):
        resolve_run_dir(plain, "exp-1.yaml", resume=True)
    mine = train(plain, config_path="exp-1.yaml")
    assert mine.run_dir.name == "exp-1-1" and resolve_run_dir(plain, "exp-1.yaml", resume=True) == mine.run_dir


def test_evaluation_of_no_image_is_an_error_not_zero_accuracy():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    unreadable = [(torch.empty(0), torch.empty(0, dtype=torch.long), 2)]  # collate_skipping's batch of 2 bad files
    with pytest.raises(RuntimeError, match=r"no image was evaluated \(all 2 were unreadable\)"):
        evaluate(model, unreadable, device=torch.device("cpu"), progress=False)
    with pytest.raises(RuntimeError, match="the validation set is empty"):
        evaluate(model, [], device=torch.device("cpu"), progress=False)
    one = [(torch.zeros(1, 3, 2, 2), torch.tensor([0]), 0)]
    assert evaluate(model, one, device=torch.device("cpu"), progress=False).images == 1


def test_unreadable_files_are_counted_once_across_epochs_and_resume(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (60 * i, 100 if c == "a" else 0, 0)).save(root / c / f"{i}.png")
    (root / "a" / "broken.png").write_bytes(b"not a png")
    data = ["data.name=imagefolder", f"data.root={root}", f"data.val_root={root}", "data.image_size=16",
            "data.num_workers=0", "data.batch_size=3"]  # 9 files: no partial batch to drop
    with pytest.warns(UserWarning, match="2 unreadable images were skipped in every epoch"):
        first = train(_cfg(tmp_path, *data, "loop.epochs=2"), config_path="skip.yaml")
    records = _metrics(first.run_dir)
    assert [r["train_skipped"] for r in records] == [1, 1] and records[-1]["val_skipped"] == 1
    with pytest.warns(UserWarning, match="2 unreadable images"):
        resumed = train(_cfg(tmp_path, *data, "loop.epochs=3"), config_path="skip.yaml", resume=True)
    assert json.loads((resumed.run_dir / "summary.json").read_text())["skipped_images"] == 2
