"""The scripts in benchmarks/ run, and what they measure holds where it must."""

import importlib.util
import re
import statistics
from pathlib import Path

import pytest

from visattn.data.synthetic import CLASSES

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pointing_oracles_without_a_model(capsys):
    results = _load("shapes_pointing_oracles").main(["--num-images", "60", "--tolerance", "0", "2"])
    assert set(results) == {"image centre", "object centre (oracle)", "mask centroid (oracle)"}
    out = capsys.readouterr().out
    assert "| object centre (oracle) | 2 px |" in out
    ring, circle = 1 + CLASSES.index("ring"), 1 + CLASSES.index("circle")
    centre, centroid = results["object centre (oracle)"], results["mask centroid (oracle)"]
    # A ring's centre and centre of mass lie in its hole, wider than 2 px at 32x32: always a miss.
    assert centre["0px"][ring] == centre["2px"][ring] == centroid["2px"][ring] == 0.0
    # A circle's centre is on it, up to an occluding stroke (at most 20 % of the object).
    assert centre["2px"][circle] == 1.0
    assert all(0.0 <= v <= 1.0 for row in centre.values() for v in row)
    assert centre["2px"][0] >= centre["0px"][0]  # a tolerance only adds hits


def test_pointing_oracles_rejects_bad_arguments():
    main = _load("shapes_pointing_oracles").main
    with pytest.raises(SystemExit):
        main(["--num-images", "0"])
    with pytest.raises(SystemExit):
        main(["--tolerance", "-1"])


def test_pointing_oracles_scores_a_trained_model():
    weights = BENCHMARKS.parent / "weights" / "quickstart_resnet18_cbam_shapes.safetensors"
    results = _load("shapes_pointing_oracles").main(
        ["--num-images", "40", "--weights", str(weights), "--methods", "gradcam", "--tolerance", "2"])
    assert list(results)[0] == "gradcam"
    # The shipped model points at the object far more often than chance, on the classes without a hole or a bite.
    filled = [1 + CLASSES.index(name) for name in ("circle", "square", "cross", "star")]
    assert sum(results["gradcam"]["2px"][i] for i in filled) / len(filled) > 0.75


def test_quickstart_time_runs_fresh_processes_and_reports_the_median(capsys):
    tiny = ["loop.epochs=1", "data.num_train=128", "data.num_val=64", "eval.overlays=0"]
    result = _load("quickstart_time").main(["--runs", "3", *tiny])
    out = capsys.readouterr().out
    runs = re.findall(r"run \d: ([\d.]+) s, best val top-1 ([\d.]+) %", out)
    assert len(runs) == 3 and "over 3 fresh processes" in out and "machine: " in out
    # The medians it returns are those of the runs it printed (to the printed precision).
    assert result["median_seconds"] == pytest.approx(statistics.median(float(s) for s, _ in runs), abs=0.05)
    assert 100 * result["median_accuracy"] == pytest.approx(statistics.median(float(a) for _, a in runs), abs=0.005)


def test_quickstart_time_rejects_zero_runs():
    with pytest.raises(SystemExit):
        _load("quickstart_time").main(["--runs", "0"])
