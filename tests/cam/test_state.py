"""A CAM leaves the user's model as it found it: no hooks, same flags, no gradients, no growing memory."""

from __future__ import annotations

import gc

import pytest
import timm
import torch
from torch import nn

from tests.test_utils import HeadFirst
from visattn.cam import create_cam, list_cams


def _model() -> nn.Module:
    return timm.create_model("resnet18", num_classes=5, layers=[1, 1, 1, 1], channels=[8, 16, 16, 32])


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _mixed_state(model: nn.Module) -> tuple[list[bool], list[bool]]:
    model.train()
    model.layer1.eval()  # a frozen stage inside a training model: model.train(flag) would flatten this
    model.conv1.weight.requires_grad_(False)
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


@pytest.mark.parametrize("method", list_cams())
def test_state_restored_after_a_call(method: str) -> None:
    model = _model()
    flags, grads = _mixed_state(model)
    cam = create_cam(method, model, **({"batch_size": 256} if method == "scorecam" else {}))
    cam(torch.randn(2, 3, 64, 64))
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert _hook_count(model) == 0
    assert all(p.grad is None for p in model.parameters())


def test_state_restored_after_an_exception() -> None:
    model = _model()
    flags, grads = _mixed_state(model)
    cam = create_cam("gradcam", model)
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 5\)"):
        cam(torch.randn(2, 3, 64, 64), targets=7)  # fails after the forward pass, with hooks attached
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert _hook_count(model) == 0

    with pytest.raises(RuntimeError, match="boom"), create_cam("layercam", model) as cam:
        cam(torch.randn(1, 3, 64, 64))
        assert _hook_count(model) == 1 and not model.training
        raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert _hook_count(model) == 0


def test_context_manager_keeps_hooks_between_calls_and_close_is_idempotent() -> None:
    model = _model()
    with create_cam("gradcam", model) as cam:
        cam(torch.randn(1, 3, 64, 64))
        assert cam.attached and _hook_count(model) == 1
        cam(torch.randn(1, 3, 64, 64))
        assert _hook_count(model) == 1
    assert not cam.attached and _hook_count(model) == 0
    cam.close()
    cam.close()
    assert _hook_count(model) == 0 and model.training


def test_backward_stops_at_the_target_layer() -> None:
    model = _model()
    below = []
    model.layer3.register_full_backward_hook(lambda *args: below.append(1))
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    create_cam("gradcam", model, "layer4")(x)
    assert below == []  # nothing below layer4 was differentiated
    assert x.grad is None
    assert all(p.grad is None for p in model.parameters())


def test_works_under_no_grad_and_with_inplace_ops_after_the_target() -> None:
    model = _model().eval()
    x = torch.randn(2, 3, 64, 64)
    # timm's BasicBlock applies ReLU(inplace=True) right after bn1 and adds the shortcut in place after bn2.
    with torch.no_grad():
        maps = create_cam("gradcam", model, ["layer4.0.bn1", "layer4.0.bn2"])(x)
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all()
    # The model's own output is unchanged by the clone the hook hands on.
    with torch.no_grad():
        expected = model(x)
    result = create_cam("gradcam", model, "layer4.0.bn1").explain(x)
    torch.testing.assert_close(result.logits, expected)


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is torch.Tensor)


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_repeated_calls_do_not_keep_tensors(method: str) -> None:
    model = _model()
    x = torch.randn(2, 3, 64, 64)
    with create_cam(method, model) as cam:
        cam(x)
        before = _live_tensors()
        for _ in range(5):
            cam(x)
        assert _live_tensors() <= before


def test_model_that_returns_no_logits_is_rejected() -> None:
    features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match=r"logits of shape \(B, K\), got \(1, 4, 6, 6\)"):
        create_cam("gradcam", features, "0")(torch.randn(1, 3, 8, 8))
    assert _hook_count(features) == 0


def test_a_target_layer_run_twice_is_rejected() -> None:
    block = nn.Conv2d(3, 3, 1)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = block
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.block(self.block(x)).mean((2, 3)))

    with pytest.raises(ValueError, match="'block' ran 2 times in one forward pass"):
        create_cam("gradcam", Twice(), "block")(torch.randn(1, 3, 4, 4))


def test_images_are_checked() -> None:
    cam = create_cam("gradcam", _model())
    with pytest.raises(ValueError, match=r"images must be a \(B, C, H, W\) float tensor.*shape \(3, 8, 8\)"):
        cam(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="dtype torch.uint8"):
        cam(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="images must be"):
        cam([[0.0]])


def test_images_must_match_the_model_and_be_normalised() -> None:
    cam = create_cam("gradcam", _model())
    with pytest.raises(ValueError, match="images have 1 channels but the model's stem conv takes 3"):
        cam(torch.randn(1, 1, 64, 64))
    # Raw pixels are most likely a mistake, but a model trained on them is valid: warn, and still explain.
    with pytest.warns(UserWarning, match="look like raw 0-255 pixel values") as caught:
        maps = cam(torch.rand(1, 3, 64, 64) * 255)
    assert maps.shape == (1, 64, 64) and caught[0].filename == __file__


def test_a_stage_skipped_by_grad_checkpointing_is_explained_in_the_error() -> None:
    model = _model()
    model.set_grad_checkpointing(True)
    with pytest.raises(ValueError, match=r"'layer3' ran 0 times.*set_grad_checkpointing\(False\).*'layer3.0'"):
        create_cam("gradcam", model, "layer3")(torch.randn(1, 3, 32, 32))
    assert create_cam("gradcam", model, "layer3.0")(torch.randn(1, 3, 32, 32)).shape == (1, 32, 32)


def test_stem_channels_come_from_the_stem_not_registration_order() -> None:
    maps = create_cam("gradcam", HeadFirst(), "features")(torch.randn(2, 3, 8, 8))
    assert maps.shape == (2, 8, 8)
    # Without timm's pretrained_cfg the model's own error names a channel mismatch.
    with pytest.raises(RuntimeError, match="channels"):
        create_cam("gradcam", HeadFirst(), "features")(torch.randn(2, 1, 8, 8))
