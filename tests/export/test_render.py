"""visattn.export.render and grid: colours match matplotlib, blending is exact at its ends, bad input is named."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from visattn.export import blend, colorize, make_grid


def _reference(cmap: str, value: float) -> np.ndarray:
    return np.rint(np.asarray(matplotlib.colormaps[cmap](value)[:3]) * 255).astype(np.uint8)


@pytest.mark.parametrize("cmap", ["jet", "viridis", "gray"])
def test_colorize_endpoints_equal_matplotlib(cmap):
    heat = np.array([[0.0, 1.0]], dtype=np.float32)
    out = colorize(heat, cmap=cmap)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
    np.testing.assert_array_equal(out[0, 0], _reference(cmap, 0.0))
    np.testing.assert_array_equal(out[0, 1], _reference(cmap, 1.0))
    assert not np.array_equal(out[0, 0], out[0, 1])


def test_colorize_accepts_torch_and_clips_rounding_error():
    heat = torch.tensor([[-1e-7, 0.5], [1.0 + 1e-7, 1.0]], dtype=torch.float64)
    out = colorize(heat)
    np.testing.assert_array_equal(out[0, 0], _reference("jet", 0.0))
    np.testing.assert_array_equal(out[1, 0], out[1, 1])


def test_blend_alpha_ends_give_image_and_colour():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    heat = rng.random((5, 7)).astype(np.float32)
    np.testing.assert_array_equal(blend(image, heat, alpha=0.0), image)
    np.testing.assert_array_equal(blend(image, heat, alpha=1.0, cmap="viridis"), colorize(heat, cmap="viridis"))
    half = blend(image, heat, alpha=0.5).astype(int)
    expected = (image.astype(int) + colorize(heat).astype(int)) / 2
    assert np.abs(half - expected).max() <= 0.5


def test_blend_resizes_a_smaller_heatmap_to_the_image():
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    heat = np.zeros((4, 6), dtype=np.float32)
    heat[:, 3:] = 1.0  # right half hot
    out = blend(image, heat, alpha=1.0)
    assert out.shape == (32, 48, 3)
    np.testing.assert_array_equal(out[:, 0], np.broadcast_to(_reference("jet", 0.0), (32, 3)))
    np.testing.assert_array_equal(out[:, -1], np.broadcast_to(_reference("jet", 1.0), (32, 3)))


@pytest.mark.parametrize(("heatmap", "error", "match"), [
    (np.full((2, 2), 1.5), ValueError, r"heatmap must lie in \[0, 1\].*1\.5"),
    (np.full((2, 2), -0.1), ValueError, r"heatmap must lie in \[0, 1\]"),
    (np.array([[0.0, np.nan]]), ValueError, "heatmap must be finite"),
    (np.zeros((1, 2, 2)), ValueError, r"heatmap must be a non-empty 2-D.*\(1, 2, 2\)"),
    (np.zeros((0, 3)), ValueError, "heatmap must be a non-empty 2-D"),
    ([[0.0, 1.0]], TypeError, "heatmap must be a numpy array or torch tensor, got list"),
    (np.array([[True]]), TypeError, "heatmap must hold real numbers"),
])
def test_bad_heatmaps_are_named(heatmap, error, match):
    with pytest.raises(error, match=match):
        colorize(heatmap)
    with pytest.raises(error, match=match):
        blend(np.zeros((2, 2, 3), np.uint8), heatmap)


def test_unknown_cmap_lists_valid_names():
    with pytest.raises(ValueError, match=r"cmap 'jett' is not a matplotlib colormap.*jet"):
        colorize(np.zeros((2, 2)), cmap="jett")


@pytest.mark.parametrize(("alpha", "error"), [(1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError),
                                              ("0.5", TypeError), (True, TypeError)])
def test_bad_alpha_is_named(alpha, error):
    with pytest.raises(error, match="alpha"):
        blend(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2)), alpha=alpha)


@pytest.mark.parametrize(("image", "error", "match"), [
    (np.zeros((2, 2, 3), np.float32), TypeError, "image must be uint8.*float32"),
    (np.zeros((2, 2), np.uint8), ValueError, r"image must have shape \(H, W, 3\), got \(2, 2\)"),
    (np.zeros((2, 2, 4), np.uint8), ValueError, r"image must have shape \(H, W, 3\)"),
])
def test_bad_images_are_named(image, error, match):
    with pytest.raises(error, match=match):
        blend(image, np.zeros((2, 2)))


def test_grid_upscales_small_images_and_wraps_rows():
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[..., 0] = 255 * (np.indices((32, 32)).sum(axis=0) % 2)  # 1-pixel red / black checkerboard
    image[..., 2] = 255 - image[..., 0]  # ... and blue where not red
    panels = [(f"panel {i}", np.zeros((32, 32, 3), np.uint8)) for i in range(7)]  # 8 pictures: a row of 6, then 2
    one_row = make_grid(image, panels[:2], title="pred: circle (97.3 %)", panel_size=128)
    two_rows = make_grid(image, panels, title="pred: circle (97.3 %)", panel_size=128)
    assert one_row.dtype == np.uint8 and one_row.shape[2] == 3
    assert 3 * 128 <= one_row.shape[1] < 4 * 128 and 6 * 128 <= two_rows.shape[1] < 7 * 128
    assert 128 < one_row.shape[0] < 2 * 128 < two_rows.shape[0] < 3 * 128
    # Nearest upscaling x4: each pixel becomes a pure 4 x 4 block, with no blended colours in between.
    for colour in ([255, 0, 0], [0, 0, 255]):
        assert (one_row == colour).all(axis=2).sum() == 128 * 128 // 2


def test_grid_draws_title_and_labels():
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    blank = make_grid(image, [("", image)], title="", panel_size=64)
    titled = make_grid(image, [("gradcam", image)], title="pred: x (1.0 %)", panel_size=64)
    assert blank.shape == titled.shape and (blank != titled).any()


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"panel_size": 4}, ValueError, "panel_size must be >= 16, got 4"),
    ({"max_columns": 0}, ValueError, "max_columns must be >= 1"),
    ({"panels": [("x", np.zeros((4, 4), np.uint8))]}, ValueError, r"panels\[0\] \('x'\) image must have shape"),
    ({"panels": [np.zeros((4, 4, 3), np.uint8)]}, TypeError, r"panels\[0\] must be a \(label: str, image"),
])
def test_grid_bad_arguments_are_named(kwargs, error, match):
    arguments = {"panels": [], "title": "t", **kwargs}
    with pytest.raises(error, match=match):
        make_grid(np.zeros((4, 4, 3), np.uint8), **arguments)
