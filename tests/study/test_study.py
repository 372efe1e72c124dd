"""visattn study: the grid, the report, and what survives kill -9 and a second process."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import fake_cifar
from visattn.config import load_train_config
from visattn.config.loader import ConfigError
from visattn.study import load_study_config, plan_runs, run_study
from visattn.study.config import config_hash
from visattn.study.runner import read_record
from visattn.training.checkpoint import checkpoint_progress

# --- a tiny grid on tiny data -------------------------------------------------------------------------------------


def _colour_folder(root: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name, colour in (("blue", (30, 30, 200)), ("red", (200, 30, 30))):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(colour, 50, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


@pytest.fixture
def tiny_study(tmp_path):
    _colour_folder(tmp_path / "data" / "train", 20, seed=0)
    _colour_folder(tmp_path / "data" / "test", 6, seed=1)
    (tmp_path / "train.yaml").write_text(f"""
data: {{name: imagefolder, root: {tmp_path / 'data' / 'train'}, val_root: {tmp_path / 'data' / 'test'},
        in_memory: true, val_split: 8, image_size: 12, augment: crop_flip, batch_size: 8}}
model: {{name: resnet18, small_input: true, kwargs: {{layers: [1, 1, 1, 1], channels: [8, 8, 8, 8], stem_width: 8}}}}
optim: {{lr: 0.05, schedule: onecycle}}
loop: {{epochs: 3, amp: none, deterministic: true}}
""")
    (tmp_path / "study.yaml").write_text(f"""
train: train.yaml
seeds: [0, 1]
variants:
  baseline: {{}}
  se: {{model: {{name: resnet18_se}}}}
runs_dir: {tmp_path / 'runs'}
results_dir: {tmp_path / 'results'}
""")
    return tmp_path


def test_plan_is_seed_major_with_variant_overrides(tiny_study):
    study = load_study_config(tiny_study / "study.yaml")
    runs = plan_runs(study, ["optim.lr=0.02"])
    assert [r.name for r in runs] == ["baseline-seed0", "se-seed0", "baseline-seed1", "se-seed1"]
    assert [r.config.model.name for r in runs] == ["resnet18", "resnet18_se"] * 2
    assert [r.config.loop.seed for r in runs] == [0, 0, 1, 1]
    assert all(r.config.optim.lr == 0.02 for r in runs)
    assert runs[1].run_dir == tiny_study / "runs" / "se-seed0"
    with pytest.raises(ConfigError, match=r"unknown variant\(s\) \['cbam'\]"):
        plan_runs(study, variants=["cbam"])
    study.variants["typo"] = {"optim.lrr": 0.1}
    with pytest.raises(ConfigError, match=r"variant 'typo': unknown config key 'optim.lrr'; did you mean 'optim.lr'"):
        plan_runs(study)


def test_study_file_errors(tiny_study):
    with pytest.raises(ConfigError, match="baseline 'plain' is not one of the variants"):
        load_study_config(tiny_study / "study.yaml", ["baseline=plain"])
    with pytest.raises(ConfigError, match="unknown config key 'seed'; did you mean 'seeds'"):
        load_study_config(tiny_study / "study.yaml", ["seed=[1]"])
    with pytest.raises(ConfigError, match="train: 'nope.yaml' names no file"):
        load_study_config(tiny_study / "study.yaml", ["train=nope.yaml"])


def test_config_hash_ignores_paths_but_not_what_is_computed(tiny_study):
    cfg = load_train_config(tiny_study / "train.yaml")
    moved = load_train_config(tiny_study / "train.yaml", ["data.root=/elsewhere", "checkpoint.output_dir=x",
                                                          "loop.progress=false"])
    longer = load_train_config(tiny_study / "train.yaml", ["loop.epochs=4"])
    assert config_hash(cfg) == config_hash(moved) != config_hash(longer)


def test_grid_trains_reports_and_skips_finished_runs(tiny_study):
    study = load_study_config(tiny_study / "study.yaml")
    result = run_study(study, stream=open(os.devnull, "w"))
    assert result.complete and result.planned == 4 and not result.busy
    record = read_record(tiny_study / "runs" / "se-seed1")
    metrics = [json.loads(line) for line in (tiny_study / "runs" / "se-seed1" / "metrics.jsonl").read_text().split("\n")
               if line]
    assert record["epochs"] == 3 and [p["val_acc"] for p in record["curve"]] == [m["val_acc"] for m in metrics]
    assert 0 <= record["test_acc"] <= 1 and record["flops"] > 0 and record["params"] > 0
    assert record["config_hash"] == config_hash(plan_runs(study)[3].config)

    summary = json.loads((tiny_study / "results" / "summary.json").read_text())
    assert summary["finished"] == 4 and list(summary["variants"]) == ["baseline", "se"]
    se = summary["variants"]["se"]
    accs = {r["seed"]: r["test_acc"] for r in summary["records"] if r["variant"] == "se"}
    base = {r["seed"]: r["test_acc"] for r in summary["records"] if r["variant"] == "baseline"}
    assert se["test_acc_mean"] == pytest.approx(sum(accs.values()) / 2)
    assert se["vs_baseline"]["mean"] == pytest.approx(sum(accs[s] - base[s] for s in (0, 1)) / 2)
    assert se["params"] > summary["variants"]["baseline"]["params"]
    markdown = (tiny_study / "results" / "summary.md").read_text()
    assert "| se | 2 |" in markdown and "paired" in markdown
    for name in ("accuracy_vs_cost.png", "curves.png"):
        with Image.open(tiny_study / "results" / name) as image:
            image.load()
            assert image.size[0] > 500

    stamps = {p: p.stat().st_mtime_ns for p in (tiny_study / "runs").rglob("*") if p.is_file()}
    lines = []
    again = run_study(study, stream=_Lines(lines))
    assert again.complete and lines == []  # nothing trained, nothing said
    assert stamps == {p: p.stat().st_mtime_ns for p in (tiny_study / "runs").rglob("*") if p.is_file()}


def test_partial_report_says_how_many_seeds_each_comparison_rests_on():
    from visattn.study.report import aggregate, markdown_summary

    machines = [{"cpu": f"CPU {name}", "torch_threads": 2, "python": "3", "torch": "2", "timm": "1", "visattn": "0"}
                for name in ("A", "B")]

    def record(variant, seed, acc, machine=machines[0], seconds=60.0):
        return {"variant": variant, "seed": seed, "test_acc": acc, "best_val_test_acc": acc, "params": 10,
                "flops": 10, "train_img_s": 600 / seconds, "train_seconds": seconds, "epochs": 1, "best_epoch": 1,
                "amp": "none", "machine": machine}

    records = [record("baseline", 0, 0.80), record("baseline", 1, 0.82, machines[1], 150.0), record("se", 0, 0.81),
               record("se", 1, 0.84), record("cam", 0, 0.83), record("cbam", 2, 0.85, machines[1])]
    variants = aggregate(records, ["baseline", "se", "cam", "cbam"], "baseline", machines)
    markdown = markdown_summary({"title": "t", "baseline": "baseline", "finished": 6, "planned": 12,
                                 "machines": machines, "variants": variants, "records": records})
    assert "(1) CPU A, 2 threads" in markdown and "(2) CPU B, 2 threads" in markdown
    runs = markdown.split("## Runs")[1]
    assert "| cbam | 2 | 85.00 |" in runs and runs.rstrip().endswith("| none | 2 |")  # the run's machine
    assert "| cam | 0 | 83.00 |" in runs and "| none | 1 |" in runs
    table = markdown.split("## Runs")[0].splitlines()
    rows = {line.split(" | ")[0].strip("| "): line for line in table if line.startswith("| ")}
    assert "| 81.00 +- 1.41 |" in rows["baseline"]  # two seeds: mean +- sample std
    # Speed and minutes per machine (numbered as in the header), never averaged over machines.
    assert rows["baseline"].endswith("| 10 (1), 4 (2) | 1.0 (1), 2.5 (2) | - (1), - (2) |")
    assert rows["se"].endswith("| 10 (1) | 1.0 (1) | - (1) |") and rows["cbam"].endswith("| 10 (2) | 1.0 (2) | - (2) |")
    assert "+1.50 [" in rows["se"] and "inf" not in markdown and "nan" not in markdown
    assert "| 83.00 | +3.00 (one seed: no interval) |" in rows["cam"]  # one run: no spread, no interval
    assert "| 85.00 | - (no baseline run of the same seeds yet) |" in rows["cbam"]


def test_a_fresh_checkout_skips_the_runs_whose_records_are_kept_with_the_results(tiny_study):
    study = load_study_config(tiny_study / "study.yaml")
    first = run_study(study, stream=open(os.devnull, "w"))
    kept = sorted(p.name for p in (tiny_study / "results" / "records").iterdir())
    assert kept == ["baseline-seed0.json", "baseline-seed1.json", "se-seed0.json", "se-seed1.json"]
    assert json.loads((tiny_study / "results" / "records" / "se-seed1.json").read_text()) == \
        read_record(tiny_study / "runs" / "se-seed1")
    shutil.rmtree(tiny_study / "runs")  # what a new clone of the repository has: the results, no run folders
    lines = []
    again = run_study(study, stream=_Lines(lines))
    assert again.complete and lines == [] and not (tiny_study / "runs").exists()  # nothing trained
    assert again.records == first.records
    summary = json.loads((tiny_study / "results" / "summary.json").read_text())
    assert summary["finished"] == 4 and summary["records"] == first.records


def test_a_kept_record_of_another_config_is_refused(tiny_study):
    study = load_study_config(tiny_study / "study.yaml")
    run_study(study, variants=["baseline"], seeds=[0], stream=open(os.devnull, "w"))
    shutil.rmtree(tiny_study / "runs")
    with pytest.raises(ConfigError, match=r"records/baseline-seed0.json records a run of another config"):
        run_study(study, ["loop.epochs=4"], variants=["baseline"], seeds=[0], stream=open(os.devnull, "w"))


def test_study_overrides_reach_every_run_before_the_variants_own(tiny_study):
    study = load_study_config(tiny_study / "study.yaml",
                              ["overrides={model.name: resnet18_cbam, optim.lr: 0.03, loop.amp: auto}"])
    runs = plan_runs(study)
    assert [r.config.model.name for r in runs] == ["resnet18_cbam", "resnet18_se"] * 2  # the variant's wins
    assert all(r.config.optim.lr == 0.03 and r.config.loop.amp == "auto" for r in runs)
    lines = []
    result = run_study(study, variants=["baseline"], seeds=[0], stream=_Lines(lines))
    assert "loop.amp=auto" in lines[0] and "overrides: {loop.amp: none}" in lines[0]  # one note, before training
    assert sum("loop.amp=auto" in line for line in lines) == 1
    assert result.records[0]["amp"] in ("none", "bf16")
    bad = load_study_config(tiny_study / "study.yaml", ["overrides={optim.lrr: 0.1}"])
    with pytest.raises(ConfigError, match=r"^overrides: unknown config key 'optim.lrr'; did you mean 'optim.lr'"):
        plan_runs(bad)


def test_a_run_made_with_another_config_is_refused(tiny_study):
    study = load_study_config(tiny_study / "study.yaml")
    run_study(study, variants=["baseline"], seeds=[0], stream=open(os.devnull, "w"))
    with pytest.raises(ConfigError, match=r"baseline-seed0 was trained with another config"):
        run_study(study, ["loop.epochs=4"], variants=["baseline"], seeds=[0], stream=open(os.devnull, "w"))


class _Lines:
    def __init__(self, lines):
        self.lines = lines

    def write(self, text):
        if text.strip():
            self.lines.append(text)

    def flush(self):
        pass

    def isatty(self):
        return False


# --- kill -9 and two processes ------------------------------------------------------------------------------------

_STUDY_CMD = [sys.executable, "-m", "visattn", "study", "--config"]


def _start(tiny_study, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([*_STUDY_CMD, str(tiny_study / "study.yaml"), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _epochs(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.slow
def test_kill_9_then_restart_loses_nothing_and_matches_an_uninterrupted_study(tiny_study, tmp_path_factory):
    # Longer runs, so that the kill lands mid-run.
    (tiny_study / "train.yaml").write_text((tiny_study / "train.yaml").read_text().replace("epochs: 3", "epochs: 6"))
    runs = tiny_study / "runs"
    proc = _start(tiny_study)
    deadline = time.time() + 120
    while len(_epochs(runs / "se-seed0")) < 2:  # the first run finished, the second one half way
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = runs / "baseline-seed0"
    finished = {p: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file()}
    killed_at = checkpoint_progress(runs / "se-seed0" / "last.safetensors")["epoch"]  # the metrics may be 1 ahead
    assert read_record(first) is not None and read_record(runs / "se-seed0") is None

    out = subprocess.run([*_STUDY_CMD, str(tiny_study / "study.yaml")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert f"se-seed0: resuming after epoch {killed_at}" in out.stderr
    assert "baseline-seed0" not in out.stderr  # finished: not touched
    assert finished == {p: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file()}
    assert _epochs(runs / "se-seed0") == [1, 2, 3, 4, 5, 6]  # every epoch once

    # The same grid, never interrupted, gives the same numbers (deterministic CPU training resumes exactly).
    clean = tmp_path_factory.mktemp("clean")
    study = load_study_config(tiny_study / "study.yaml", [f"runs_dir={clean / 'runs'}",
                                                          f"results_dir={clean / 'results'}"])
    run_study(study, stream=open(os.devnull, "w"))
    for name in ("baseline-seed0", "se-seed0", "se-seed1"):
        resumed, fresh = read_record(runs / name), read_record(clean / "runs" / name)
        assert resumed["test_acc"] == fresh["test_acc"]
        assert [p["val_acc"] for p in resumed["curve"]] == [p["val_acc"] for p in fresh["curve"]]


@pytest.mark.slow
def test_two_processes_share_the_grid_and_never_train_a_run_twice(tiny_study):
    procs = [_start(tiny_study), _start(tiny_study)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for run in ("baseline-seed0", "se-seed0", "baseline-seed1", "se-seed1"):
        log = (tiny_study / "runs" / run / "train.log").read_text()
        assert log.count("run folder:") == 1, (run, outputs)  # one training start per run
        assert _epochs(tiny_study / "runs" / run) == [1, 2, 3]
    trained = [sum(f"{run}: test top-1" in out for out in outputs) for run in ("baseline-seed0", "se-seed1")]
    assert trained == [1, 1]
    summary = json.loads((tiny_study / "results" / "summary.json").read_text())
    assert summary["finished"] == 4  # the process that finished last wrote the whole grid


# --- the shipped study on other data: only data: changes ----------------------------------------------------------

STUDY = Path(__file__).resolve().parents[2] / "configs" / "study" / "cifar10_cpu.yaml"
_TINY_NET = ["model.kwargs={layers: [1, 1, 1, 1], channels: [16, 16, 16, 16], stem_width: 16}", "loop.epochs=1",
             "data.batch_size=4", "loop.amp=none"]


def _one_run(tmp_path, data_overrides):
    study = load_study_config(STUDY, [f"runs_dir={tmp_path / 'runs'}", f"results_dir={tmp_path / 'results'}"])
    result = run_study(study, [*data_overrides, *_TINY_NET], variants=["baseline", "cbam"], seeds=[0],
                       stream=open(os.devnull, "w"))
    assert result.complete and len(result.records) == 2
    return result.records


def test_the_cifar10_study_runs_on_cifar100_by_changing_data_only(tmp_path):
    fake_cifar(tmp_path / "data", "cifar100", n_per_batch=24)
    records = _one_run(tmp_path, ["data.name=cifar100", f"data.root={tmp_path / 'data'}", "data.val_split=4"])
    assert all(0 <= r["test_acc"] <= 1 for r in records)


def test_the_cifar10_study_runs_on_a_tiny_imagenet_layout_by_changing_data_only(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    lines = []
    for c, wnid in enumerate(("n01443537", "n01629819")):
        (root / "train" / wnid / "images").mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(6):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
        (root / "val" / "images").mkdir(parents=True, exist_ok=True)
        for i in range(2):
            name = f"val_{2 * c + i}.JPEG"
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "val" / "images" / name)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    records = _one_run(tmp_path, [f"data.root={root / 'train'}", f"data.val_root={root / 'val'}",
                                  "data.image_size=64", "data.val_split=4"])
    assert records[0]["flops"] > 0 and records[1]["params"] > records[0]["params"]
