import re
import sys

import pytest
import torch

from visattn.bench import cams
from visattn.bench.timing import interleaved_medians

TINY = dict(layers=[1, 1, 1, 1], num_classes=10)


def test_quick_benchmark_agrees_with_pytorch_grad_cam_for_every_method():
    pytest.importorskip("pytorch_grad_cam")
    lines = []
    rows = cams.run_cam_benchmark(models=["resnet18"], model_kwargs=TINY, quick=True, markdown=True,
                                  printer=lines.append)
    assert [r["method"] for r in rows] == list(cams.DEFAULT_METHODS)
    for r in rows:
        assert r["model"] == "resnet18" and r["batch"] == 2 and r["image_size"] == 64
        assert r["max_abs_diff"] <= cams.TOLERANCE and r["agrees"] is True, r
        assert r["ours_img_s"] > 0 and r["theirs_img_s"] > 0 and r["forward_img_s"] > 0
        assert r["ratio"] == pytest.approx(r["ours_img_s"] / r["theirs_img_s"])
    assert "target" not in rows[0]["note"] and "SVD sign" in rows[-1]["note"]  # the 2.5x target is for b32, 224 px
    # torch-cam, where it has the method, agrees with us too (but for its own Grad-CAM++ formula); the bf16 /
    # channels_last path is timed and stays within bf16 rounding of our float32 maps.
    pytest.importorskip("torchcam")
    by_method = {r["method"]: r for r in rows}
    for method in ("gradcam", "xgradcam", "layercam"):
        assert by_method[method]["torchcam_max_abs_diff"] <= cams.TOLERANCE
    assert by_method["hirescam"]["torchcam_img_s"] is None  # torch-cam has no HiResCAM
    assert all(r["fast_img_s"] > 0 and r["fast_max_abs_diff"] < 0.05 for r in rows)
    assert lines[0].startswith("CAM benchmark on cpu") and "| model | method | ours img/s |" in lines[1]
    assert len(lines) == 1 + len(rows)
    # One column count in header, rule and rows: the bars of "max |Δ|" are escaped.
    table = "\n".join(lines[1:]).splitlines()
    assert len({len(re.split(r"(?<!\\)\|", line)) for line in table}) == 1


def test_no_side_leaves_hooks_or_changes_the_model():
    gc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = cams.build_model("resnet18", 0, "cpu", **TINY)
    x = torch.randn(2, 3, 64, 64)
    cams.their_call(gc, "gradcam", model, "layer4", x, [ClassifierOutputTarget(1), ClassifierOutputTarget(2)])
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    model.layer4.register_forward_hook(lambda *args: None)
    with pytest.raises(RuntimeError, match="left forward hooks on \\['layer4'\\]"):
        cams._check_no_hooks(model, "pytorch-grad-cam")


def test_interleaved_medians_times_every_call_after_warmup():
    calls = {"a": [], "b": []}
    seconds = interleaved_medians({k: (lambda k=k: calls[k].append(1)) for k in calls}, "cpu", repeats=3,
                                       warmup=1, after=lambda side: calls[side].append(0))
    assert set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())
    assert calls["a"] == [1, 0] * 4


def test_interleaved_medians_rotates_the_order_each_round():
    seen = []
    interleaved_medians({k: (lambda k=k: seen.append(k)) for k in "abc"}, "cpu", repeats=2, warmup=1)
    assert "".join(seen) == "abcbcacab"


def test_peak_memory_sees_a_large_allocation():
    peak = cams.peak_memory_bytes(lambda: torch.ones(64, 2**20).sum(), "cpu")  # 256 MiB
    if peak is None:
        pytest.skip("peak RSS cannot be measured on this platform")
    assert peak >= 200 * 2**20


def test_main_exit_status_follows_the_agreement(monkeypatch, capsys):
    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        return [{"model": "resnet18", "method": "gradcam", "max_abs_diff": 0.0, "agrees": True},
                {"model": "resnet18", "method": "scorecam", "max_abs_diff": 0.3, "agrees": None}]

    monkeypatch.setattr(cams, "run_cam_benchmark", fake)
    assert cams.main(["--models", "resnet18, resnet50", "--methods", "gradcam,scorecam", "--quick"]) == 0
    assert seen["models"] == ["resnet18", "resnet50"] and seen["methods"] == ["gradcam", "scorecam"]
    assert seen["quick"] and seen["memory"] and seen["batch_size"] is None

    monkeypatch.setattr(cams, "run_cam_benchmark", lambda **kw: [
        {"model": "resnet50", "method": "layercam", "max_abs_diff": 3e-3, "agrees": False}])
    assert cams.main(["--no-memory"]) == 1
    assert "resnet50/layercam (3.0e-03)" in capsys.readouterr().err


def test_bad_methods_are_rejected():
    pytest.importorskip("pytorch_grad_cam")
    with pytest.raises(ValueError, match="unknown CAM method 'gradkam'"):
        cams.run_cam_benchmark(methods=["gradkam"])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        cams.run_cam_benchmark(batch_size=0)


def test_missing_pytorch_grad_cam_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(ImportError, match=r"pip install 'visattn\[bench\]'"):
        cams.run_cam_benchmark()


def test_eigencam_difference_is_taken_up_to_the_svd_sign():
    import numpy as np

    theirs = np.random.default_rng(0).random((3, 4, 4), dtype=np.float32)
    flipped = 1 - theirs
    ours = torch.from_numpy(np.stack([theirs[0], flipped[1], theirs[2] + 1e-3]))
    diff, flips = cams._max_abs_diff(ours, theirs, flipped)
    assert flips == 1 and diff == pytest.approx(1e-3, rel=1e-3)
    assert cams._max_abs_diff(ours, theirs, None) == (pytest.approx(float(np.abs(flipped[1] - theirs[1]).max())), 0)
