"""evaluate_faithfulness: every metric for every method, ranked as expected, written as JSON and PNG."""

import json

import pytest
import torch

from tests.faithfulness.test_toys import REGION, RegionNet, input_gradient, mask_maps, random_maps, region_images
from visattn.faithfulness import FaithfulnessReport, evaluate_faithfulness
from visattn.faithfulness.report import METRICS

N = 3
CLASSES = torch.ones(N, dtype=torch.long)
# Reference "methods": the ground-truth region, a fixed random map (neither looks at the model), and a gradient.
METHODS = {
    "gradient": input_gradient,
    "ground truth": lambda model: lambda images, classes: mask_maps(len(images)),
    "random": lambda model: lambda images, classes: random_maps(len(images)),
}


@pytest.fixture(scope="module")
def report():
    masks = REGION.expand(N, *REGION.shape).clone()
    masks[2] = False  # one image without an object: left out of the pointing games
    return evaluate_faithfulness(RegionNet(), region_images(N), CLASSES, masks, METHODS, steps=6,
                                 percentiles=(20, 50, 80))


def test_metrics_rank_the_reference_methods(report):
    s = {name: scores.scalars() for name, scores in report.methods.items()}
    for good in ("gradient", "ground truth"):
        assert s[good]["deletion_auc"] < s["random"]["deletion_auc"]
        assert s[good]["insertion_auc"] > s["random"]["insertion_auc"]
        assert s[good]["road_morf"] < s["random"]["road_morf"]
        assert s[good]["road_gap"] > s["random"]["road_gap"]
        assert s[good]["pointing_game"] == s[good]["energy_pointing_game"] == 1.0
    assert s["random"]["energy_pointing_game"] < 0.3
    # Only the gradient depends on the model, so only it passes the sanity check.
    assert s["gradient"]["sanity_spearman"] < 0.5
    assert s["ground truth"]["sanity_spearman"] == s["random"]["sanity_spearman"] == pytest.approx(1.0)
    assert report.methods["gradient"].pointing.n_excluded == 1
    # REGION (rows 4-9, columns 5-11 of 16x16) holds the first central pixel (7, 7) and covers 42 of 256 pixels.
    assert report.baseline_scores() == pytest.approx({"pointing_game": 1.0, "energy_pointing_game": 42 / 256})
    assert "centre/uniform baseline" in report.table()


@pytest.mark.parametrize("markdown", [False, True])
def test_table_names_every_method_and_metric(report, markdown):
    table = report.table(markdown=markdown)
    for name in METHODS:
        assert name in table
    for _, label, arrow in METRICS:
        assert f"{label} {arrow}" in table
    assert "+conv1" in table  # the sanity steps
    assert "1 of 3 images excluded" in table
    assert table.startswith("| method") == markdown


def test_json_and_png_written(tmp_path):
    model = RegionNet()
    report = evaluate_faithfulness(model, region_images(2), CLASSES[:2], None, METHODS, out_dir=tmp_path / "out",
                                   steps=3, percentiles=(50,), sanity_layers=["fc"])
    assert isinstance(report, FaithfulnessReport)
    data = json.loads((tmp_path / "out" / "faithfulness.json").read_text())
    assert set(data["methods"]) == set(METHODS)
    assert data["methods"]["random"]["scores"]["pointing_game"] is None  # no masks
    assert data["methods"]["gradient"]["sanity"]["layers"] == ["fc"]
    assert len(data["methods"]["gradient"]["deletion_curve"]) == len(data["fractions"]) == 3
    assert data["better"]["deletion_auc"] == "lower" and data["better"]["insertion_auc"] == "higher"
    assert (tmp_path / "out" / "faithfulness.png").read_bytes().startswith(b"\x89PNG")
    assert not list((tmp_path / "out").glob(".*tmp"))  # atomic writes leave no temporary files
    assert "n/a" in report.table()


def test_all_zero_maps_get_no_sanity_score(tmp_path):
    methods = {"gradient": input_gradient,
               "zeros": lambda model: lambda images, classes: torch.zeros(len(images), *images.shape[2:])}
    report = evaluate_faithfulness(RegionNet(), region_images(2), CLASSES[:2], None, methods, out_dir=tmp_path,
                                   steps=2, percentiles=(50,), sanity_layers=["fc"])
    assert report.methods["zeros"].scalars()["sanity_spearman"] != report.methods["zeros"].scalars()[
        "sanity_spearman"]  # NaN: not the best score, 0
    line = next(row for row in report.table().splitlines() if row.startswith("zeros"))
    assert line.rstrip().endswith("n/a")
    assert "original map is constant (no ranking to keep): zeros 2 of 2" in report.table()
    data = json.loads((tmp_path / "faithfulness.json").read_text())
    assert data["methods"]["zeros"]["sanity"] == {"layers": ["fc"], "spearman": [None], "excluded": 2}
    assert data["methods"]["gradient"]["sanity"]["excluded"] == 0


def test_without_sanity_or_masks():
    model = RegionNet().train()
    report = evaluate_faithfulness(model, region_images(2), CLASSES[:2], None, {"random": METHODS["random"]},
                                   steps=2, percentiles=(50,), sanity=False)
    assert report.methods["random"].sanity is None and report.methods["random"].pointing is None
    assert "sanity check:" not in report.table()
    assert model.training
    report.plot()  # draws with a placeholder in the sanity panel


def test_invalid_arguments_raise_before_any_work():
    model, x = RegionNet(), region_images(2)
    with pytest.raises(ValueError, match="methods must be a non-empty mapping"):
        evaluate_faithfulness(model, x, CLASSES[:2], None, {})
    with pytest.raises(ValueError, match="methods must map str names to callables"):
        evaluate_faithfulness(model, x, CLASSES[:2], None, {"a": 3})
    with pytest.raises(ValueError, match="masks must have the saliency maps' shape"):
        evaluate_faithfulness(model, x, CLASSES[:2], torch.ones(2, 8, 8, dtype=torch.bool), METHODS)

    def never_called(model):
        raise AssertionError("the arguments should have been rejected before any method ran")

    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        evaluate_faithfulness(model, x, CLASSES[:2], None, {"m": never_called}, steps=1)
    with pytest.raises(ValueError, match="percentiles must be"):
        evaluate_faithfulness(model, x, CLASSES[:2], None, {"m": never_called}, percentiles=(50, 100))
    with pytest.raises(ValueError, match="'layer4' is not a submodule"):
        evaluate_faithfulness(model, x, CLASSES[:2], None, {"m": never_called}, sanity_layers=["layer4"])
