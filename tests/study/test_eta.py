"""The study's ETA: times are kept per machine; this machine's set the pace, others' are scaled to it."""

import json
import math
from pathlib import Path

import pytest

from visattn.config import load_train_config
from visattn.study.config import RunSpec
from visattn.study.eta import GridEta, format_duration

ROOT = Path(__file__).resolve().parents[2]


def _grid(tmp_path: Path, variants: list[str], seeds: list[int], epochs: int = 4) -> list[RunSpec]:
    cfg = load_train_config(ROOT / "configs" / "quickstart.yaml", [f"loop.epochs={epochs}"])
    return [RunSpec(v, s, cfg, tmp_path / f"{v}-seed{s}") for s in seeds for v in variants]


HERE = {"cpu": "Xeon", "cpu_features": ["amx_bf16"], "torch_threads": 2, "gpu": None, "torch": "2.14.1"}
EPYC = {"cpu": "EPYC", "cpu_features": ["avx2"], "torch_threads": 2, "gpu": None, "torch": "2.14.1"}


def _record(seconds_per_epoch: float, epochs: int = 4, machine: dict | None = None) -> dict:
    return {"train_seconds": seconds_per_epoch * epochs, "epochs": epochs, "machine": machine or EPYC}


def test_kept_records_set_the_pace_before_anything_is_timed(tmp_path):
    runs = _grid(tmp_path, ["baseline", "se", "cam"], [0, 1])
    eta = GridEta(runs, {"baseline-seed0": _record(100), "se-seed0": _record(120)}, HERE)
    assert eta.seconds_per_epoch("se") == 120
    assert eta.seconds_per_epoch("cam") == 110  # untimed anywhere: the mean of every recorded epoch
    assert eta.remaining() == 4 * (100 + 120 + 110) + 4 * 110  # seed 1's three runs and cam-seed0


def test_this_machine_scales_what_other_machines_recorded(tmp_path):
    runs = _grid(tmp_path, ["baseline", "se", "cam"], [0, 1])
    eta = GridEta(runs, {"baseline-seed0": _record(100), "se-seed0": _record(120)}, HERE)  # half as fast
    cam0 = runs[2]
    for epoch in (1, 2):  # a variant with no record: only its own time counts for it
        eta.epoch_done(cam0, {"epoch": epoch, "seconds": 40.0 * epoch})
    assert eta.seconds_per_epoch("cam") == 40 and eta.seconds_per_epoch("se") == 40  # no variant timed both ways
    baseline1 = runs[3]
    eta.epoch_done(baseline1, {"epoch": 1, "seconds": 50.0})
    assert eta.seconds_per_epoch("baseline") == 50
    assert eta.seconds_per_epoch("se") == pytest.approx(60)  # recorded 120 s, on a machine 2x slower than this one
    assert eta.remaining() == pytest.approx(2 * 40 + 3 * 50 + 4 * 60 + 4 * 40)


def test_records_from_this_hardware_count_as_its_own_and_others_scale_by_their_machine(tmp_path):
    # A grid shared by a slow machine (EPYC) and this one: the pace of one must not be applied to the other's records.
    runs = _grid(tmp_path, ["baseline", "se", "cam", "cbam"], [0, 1])
    newer_torch = dict(HERE, torch="2.15.0")  # library versions do not make another machine
    kept = {"baseline-seed0": _record(200), "se-seed0": _record(220), "cam-seed0": _record(110, machine=newer_torch),
            "cbam-seed0": _record(120, machine=HERE)}
    eta = GridEta(runs, kept, HERE)
    assert eta.seconds_per_epoch("cam") == 110 and eta.seconds_per_epoch("cbam") == 120
    assert eta.seconds_per_epoch("se") == 115  # nothing shared with EPYC yet: this machine's mean epoch
    se1 = runs[5]
    eta.epoch_done(se1, {"epoch": 1, "seconds": 110.0})  # se: 220 s on EPYC, 110 s here
    assert eta.seconds_per_epoch("se") == 110
    assert eta.seconds_per_epoch("baseline") == pytest.approx(100)  # EPYC's 200 s at this machine's 2x pace
    assert eta.seconds_per_epoch("cam") == 110  # timed on this hardware: not scaled by the EPYC's pace
    assert eta.remaining() == pytest.approx(4 * 100 + 3 * 110 + 4 * 110 + 4 * 120)


def test_a_resumed_run_counts_its_earlier_epochs_as_done(tmp_path):
    runs = _grid(tmp_path, ["baseline"], [0])
    runs[0].run_dir.mkdir()
    lines = [{"epoch": 1, "seconds": 30.0}, {"epoch": 2, "seconds": 60.0}]
    (runs[0].run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    eta = GridEta(runs, {}, HERE)
    assert math.isnan(eta.remaining()) and format_duration(eta.remaining()) == "?"
    eta.epoch_done(runs[0], {"epoch": 3, "seconds": 95.0})  # its clock goes on from the checkpoint's 60 s
    assert eta.seconds_per_epoch("baseline") == 35 and eta.remaining() == 35
    eta.finished(runs[0], {"epochs": 4})
    assert eta.remaining() == 0


def test_durations_read_as_hours_and_minutes():
    assert format_duration(59 * 60) == "59m" and format_duration(3600) == "1h00m"
    assert format_duration(9 * 3600 + 26 * 60 + 10) == "9h26m" and format_duration(math.inf) == "?"
