"""Targets (class indices or callables) and target-layer selection."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

import visattn
from visattn.cam import create_cam, default_target_layer, explain_many, resolve_layers
from visattn.cam.targets import target_classes, target_scores


def test_target_kinds() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    assert target_classes(logits, None).tolist() == [1, 0]
    assert target_classes(logits, 2).tolist() == [2, 2]
    assert target_classes(logits, [0, 2]).tolist() == [0, 2]
    assert target_classes(logits, torch.tensor([2, 1])).tolist() == [2, 1]
    # A scalar class as NumPy returns it (np.argmax) or as a 0-d tensor (labels[0]) applies to every image, like an int.
    assert target_classes(logits, np.int64(2)).tolist() == [2, 2]
    assert target_classes(logits, torch.tensor(1)).tolist() == [1, 1]
    assert target_classes(logits, lambda z: z[:, 0]) is None
    assert target_scores(logits, [0, 2]).tolist() == [0.0, 1.0]
    assert target_scores(logits, lambda z: z.sum(1)).tolist() == [3.0, 4.0]


@pytest.mark.parametrize(("targets", "error", "match"), [
    (3, ValueError, r"class indices in \[0, 3\), got \[3, 3\]"),
    ([0], ValueError, r"one class per image: expected shape \(2,\), got \(1,\)"),
    ([0.5, 1.0], TypeError, "integer class indices"),
    (1.0, TypeError, "targets must be None, an int"),
    (True, TypeError, "targets must be None, an int"),
    (torch.tensor(0.5), TypeError, "integer class indices"),
    (np.int64(7), ValueError, r"class indices in \[0, 3\), got \[7, 7\]"),
    ({"a": 1}, TypeError, "targets must be None"),
])
def test_bad_targets(targets: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        target_classes(torch.zeros(2, 3), targets)


def test_callable_target_must_score_each_image() -> None:
    with pytest.raises(ValueError, match=r"one score per image, shape \(2,\), got \(2, 3\)"):
        target_scores(torch.zeros(2, 3), lambda z: z)


def test_callable_target_through_a_cam() -> None:
    model = timm.create_model("resnet18", num_classes=4, layers=[1, 1, 1, 1]).eval()
    x = torch.randn(2, 3, 64, 64)
    by_index = create_cam("gradcam", model)(x, 3)
    by_callable = create_cam("gradcam", model)(x, lambda logits: logits[:, 3])
    torch.testing.assert_close(by_index, by_callable)


def test_layer_specs() -> None:
    model = timm.create_model("resnet18", num_classes=4, layers=[1, 1, 1, 1])
    assert [n for n, _ in resolve_layers(model, None)] == ["layer4"]
    assert [n for n, _ in resolve_layers(model, "layer3")] == ["layer3"]
    assert [n for n, _ in resolve_layers(model, "layer*.0.conv2")] == [f"layer{i}.0.conv2" for i in range(1, 5)]
    assert resolve_layers(model, model.layer2)[0][0] == "layer2"
    assert [n for n, _ in resolve_layers(model, ["layer3", model.layer4])] == ["layer3", "layer4"]
    with pytest.raises(ValueError, match="'layer5' matches no module of ResNet; did you mean 'layer4'"):
        resolve_layers(model, "layer5")
    with pytest.raises(ValueError, match="not a submodule"):
        resolve_layers(model, nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="empty list"):
        resolve_layers(model, [])
    with pytest.raises(ValueError, match="matches no module"):
        create_cam("gradcam", model, "lyer4")  # fails at construction, not at the first call


def test_default_layer_for_timm_and_other_models() -> None:
    assert default_target_layer(timm.create_model("convnext_atto", num_classes=3)) == "stages.3"
    tv = torchvision.models.resnet18(num_classes=3)
    with pytest.raises(ValueError, match="has no timm feature_info"):
        default_target_layer(tv)
    # Probed: the last module with a spatial output larger than 1x1 (avgpool's 1x1 output is skipped).
    assert default_target_layer(tv, torch.randn(1, 3, 64, 64)) == "layer4"
    maps = create_cam("gradcam", tv)(torch.randn(2, 3, 64, 64))
    assert maps.shape == (2, 64, 64)


def test_a_1x1_map_warns() -> None:
    model = timm.create_model("resnet18", num_classes=4, layers=[1, 1, 1, 1])
    with pytest.warns(UserWarning, match=r"1x1 map for 32x32 inputs.*small-input stem") as record:
        create_cam("gradcam", model)(torch.randn(1, 3, 32, 32))
    assert record[0].filename == __file__  # the warning names the caller's line, not visattn's internals
    with pytest.warns(UserWarning, match="1x1 map") as record:
        explain_many({"gradcam": create_cam("gradcam", model), "layercam": create_cam("layercam", model)},
                     torch.randn(1, 3, 32, 32))
    assert record[0].filename == __file__
    visattn.use_small_input_stem(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 2x2 now: no warning
        create_cam("gradcam", model)(torch.randn(1, 3, 32, 32))


def test_probing_for_the_default_layer_leaves_the_model_alone() -> None:
    tv = torchvision.models.resnet18(num_classes=3).train()
    before = {k: v.clone() for k, v in tv.state_dict().items()}
    assert default_target_layer(tv, torch.randn(2, 3, 64, 64)) == "layer4"
    assert tv.training
    for key, value in tv.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm running stats untouched


def test_a_shared_module_is_not_picked_by_the_probe() -> None:
    shared = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), shared, nn.Conv2d(4, 4, 3, padding=1), shared,
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert default_target_layer(model, torch.randn(1, 3, 8, 8)) == "2"  # the last conv; the ReLU runs twice


def test_inference_mode_is_refused_with_a_reason() -> None:
    model = timm.create_model("resnet18", num_classes=4, layers=[1, 1, 1, 1])
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        create_cam("gradcam", model)(torch.randn(1, 3, 64, 64))
    with torch.inference_mode():
        assert create_cam("eigencam", model)(torch.randn(1, 3, 64, 64)).shape == (1, 64, 64)
