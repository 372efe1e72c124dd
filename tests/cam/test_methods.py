"""Each CAM method against a reference computed another way, and the identities between methods."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import visattn
from visattn.cam import create_cam, fuse_layer_maps, list_cams, normalize_maps

GRADIENT_METHODS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"]


class TinyNet(nn.Module):
    """conv -> ReLU -> (target) -> global average pool -> linear: the gradient dS/dA is W[class] / (h w)."""

    def __init__(self, channels: int = 5, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def _tiny(seed: int = 0) -> tuple[TinyNet, torch.Tensor]:
    torch.manual_seed(seed)
    model = TinyNet().double()
    return model, torch.randn(4, 3, 6, 5, dtype=torch.float64)


def _reference_layer_map(method: str, a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Paper formulas with the analytic gradient of GAP + linear, written per channel with numpy."""
    c, h, wd = a.shape
    g = np.broadcast_to(w[:, None, None] / (h * wd), a.shape)
    if method == "gradcam":
        cam = sum(g[k].mean() * a[k] for k in range(c))
    elif method == "hirescam":
        cam = (g * a).sum(0)
    elif method == "layercam":
        cam = (np.maximum(g, 0) * a).sum(0)
    elif method == "xgradcam":
        cam = sum((g[k] * a[k]).sum() / (a[k].sum() + 1e-7) * a[k] for k in range(c))
    else:  # gradcam++
        weights = []
        for k in range(c):
            alpha = g[k] ** 2 / (2 * g[k] ** 2 + a[k].sum() * g[k] ** 3 + 1e-6)
            alpha = np.where(g[k] != 0, alpha, 0)
            weights.append((alpha * np.maximum(g[k], 0)).sum())
        cam = sum(weights[k] * a[k] for k in range(c))
    return np.maximum(cam, 0)


def test_every_method_is_listed() -> None:
    assert list_cams() == ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "scorecam", "eigencam"]
    with pytest.raises(ValueError, match="unknown CAM method 'gradcan'.*did you mean 'gradcam'"):
        create_cam("gradcan", nn.Conv2d(3, 3, 1))


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_gradient_methods_match_the_formula(method: str) -> None:
    model, x = _tiny()
    classes = torch.tensor([0, 1, 2, 1])
    result = create_cam(method, model, "act").explain(x, classes)
    a = model.act(model.conv(x)).detach().numpy()
    w = model.fc.weight.detach().numpy()
    for i in range(len(x)):
        expected = _reference_layer_map(method, a[i], w[int(classes[i])])
        np.testing.assert_allclose(result.layer_maps["act"][i].numpy(), expected, rtol=1e-5, atol=1e-6)
        # The map is at input resolution already, so the output is the layer map min-max scaled twice (before and
        # after the layers are fused, as pytorch-grad-cam does).
        scaled = (expected - expected.min()) / (expected.max() - expected.min() + 1e-7)
        scaled = (scaled - scaled.min()) / (scaled.max() - scaled.min() + 1e-7)
        np.testing.assert_allclose(result.maps[i].numpy(), scaled, rtol=1e-5, atol=1e-6)


def test_gradcam_equals_hirescam_after_global_average_pooling() -> None:
    # Draelos & Carin 2020, Sec. 3: with GAP + linear the gradient is constant over space, so both coincide.
    model = timm.create_model("resnet18", num_classes=4, layers=[1, 1, 1, 1]).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(create_cam("gradcam", model)(x), create_cam("hirescam", model)(x), atol=1e-5, rtol=0)


def test_scorecam_matches_a_channel_by_channel_loop() -> None:
    model, x = _tiny()
    model.eval()
    classes = torch.tensor([2, 0, 1, 1])
    result = create_cam("scorecam", model, "act", batch_size=2).explain(x, classes)
    a = model.act(model.conv(x)).detach()
    for i in range(len(x)):
        cam = torch.zeros(x.shape[-2:], dtype=torch.float64)
        for k in range(a.shape[1]):
            m = a[i, k]
            if m.max() == m.min():
                continue
            masked = x[i] * ((m - m.min()) / (m.max() - m.min()))
            prob = model(masked[None]).softmax(1)[0, classes[i]]
            cam += prob * m
        torch.testing.assert_close(result.layer_maps["act"][i].double(), cam.clamp_min(0), rtol=1e-5, atol=1e-6)


def test_eigencam_is_the_first_principal_component() -> None:
    model, x = _tiny()
    result = create_cam("eigencam", model, "act").explain(x)
    a = model.act(model.conv(x)).detach().numpy()
    for i in range(len(x)):
        flat = a[i].reshape(a.shape[1], -1).T
        centred = flat - flat.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        projection = centred @ vt[0]
        if np.dot(projection - projection.mean(), a[i].mean(0).ravel()) < 0:
            projection = -projection
        expected = np.maximum(projection, 0).reshape(a.shape[2:])
        np.testing.assert_allclose(result.layer_maps["act"][i].numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "scorecam",
                                    "eigencam"])
def test_batch_equals_one_image_at_a_time(method: str) -> None:
    model = visattn.create_attention_resnet("resnet18", "cbam", small_input=True, num_classes=5,
                                            layers=[1, 1, 1, 1], channels=[8, 16, 16, 16]).eval()
    x = torch.randn(3, 3, 24, 20)
    cam = create_cam(method, model, ["layer3", "layer4"])
    batched = cam(x)
    single = torch.cat([cam(x[i:i + 1]) for i in range(3)])
    assert batched.shape == (3, 24, 20)
    assert batched.dtype == torch.float32
    assert 0 <= float(batched.min()) and float(batched.max()) <= 1
    assert float(batched.amax((1, 2)).min()) > 0.99  # every non-constant map reaches 1
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_several_layers_are_the_mean_of_each_layers_scaled_map() -> None:
    model = timm.create_model("resnet18", num_classes=4, layers=[1, 1, 1, 1]).eval()
    x = torch.randn(2, 3, 64, 64)
    fused = create_cam("gradcam", model, ["layer3", "layer4"]).explain(x)
    per_layer = [create_cam("gradcam", model, name).explain(x).layer_maps[name] for name in ("layer3", "layer4")]
    torch.testing.assert_close(fused.maps, fuse_layer_maps(per_layer, (64, 64)))
    # fuse_layer_maps on one layer: scale, then bilinear upsampling, then scale again.
    one = fuse_layer_maps([per_layer[1]], (64, 64))
    manual = normalize_maps(F.interpolate(normalize_maps(per_layer[1])[:, None], size=(64, 64), mode="bilinear")[:, 0])
    torch.testing.assert_close(one, manual)


def test_normalize_maps_scales_each_map_and_zeroes_constant_ones() -> None:
    maps = torch.stack([torch.arange(6.0).view(2, 3), torch.full((2, 3), 4.0)])
    out = normalize_maps(maps)
    torch.testing.assert_close(out[0], torch.arange(6.0).view(2, 3) / 5, atol=1e-6, rtol=0)
    assert torch.equal(out[1], torch.zeros(2, 3))


def test_a_class_target_explains_that_class() -> None:
    # Two channels that each fire in one half of the image; each class reads one channel.
    model = TinyNet(channels=2, classes=2).double()
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.bias.zero_()
        model.conv.weight[0, 0, 1, 1] = 1.0
        model.conv.weight[1, 1, 1, 1] = 1.0
        model.fc.weight.copy_(torch.eye(2))
    x = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    x[0, 0, :, :2] = 1.0  # channel 0 lights the left half
    x[0, 1, :, 2:] = 1.0  # channel 1 the right half
    for method in GRADIENT_METHODS + ["scorecam"]:
        cam = create_cam(method, model, "act")
        left, right = cam(x, 0)[0], cam(x, 1)[0]
        assert left[:, :2].min() > 0.99 and left[:, 2:].max() < 0.01, method
        assert right[:, 2:].min() > 0.99 and right[:, :2].max() < 0.01, method


def test_the_opt_in_bf16_channels_last_path_stays_close_and_leaves_the_model_alone():
    import timm

    from tests.conftest import make_trained_like
    from visattn.cam import create_cam

    model = make_trained_like(timm.create_model("resnet18", num_classes=10)).eval()  # every branch contributes
    x = torch.randn(2, 3, 64, 64)
    strides = {n: p.stride() for n, p in model.named_parameters()}
    with create_cam("gradcam", model, "layer4") as cam:
        reference = cam(x, 3)
    with create_cam("gradcam", model, "layer4", amp="bf16", channels_last=True) as cam:
        fast = cam(x, 3)
    assert fast.dtype == torch.float32 and fast.shape == reference.shape
    assert (fast - reference).abs().max() < 0.05  # bf16 rounding; docs/benchmarks.md gives the measured figure
    assert {n: p.stride() for n, p in model.named_parameters()} == strides  # parameters keep their layout
    with pytest.raises(ValueError, match="amp must be 'none' or 'bf16', got 'fp16'"):
        create_cam("gradcam", model, "layer4", amp="fp16")
