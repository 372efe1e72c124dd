import pytest
import timm
import torch

import visattn
from tests.conftest import BLOCK_NAMES
from visattn.models import variant_names


def test_every_block_has_three_timm_variants():
    registered = set(timm.list_models("resnet*"))
    for name in variant_names():
        assert name in registered
    assert timm.list_models("resnet??_cbam") == ["resnet18_cbam", "resnet34_cbam", "resnet50_cbam"]
    assert "resnet18_cbam_quickstart" in timm.list_models("*cbam*")  # the one with shipped weights


@pytest.mark.parametrize("name", variant_names())
def test_create_every_variant(name):
    model = timm.create_model(name, pretrained=False, num_classes=7).eval()
    block_name = name.split("_", 1)[1]
    assert isinstance(model.layer4[-1].se, visattn.get_block(block_name))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_small_input_keeps_resolution_into_layer4():
    model = timm.create_model("resnet18_cbam", num_classes=10, small_input=True)
    feats = model.forward_intermediates(torch.randn(1, 3, 32, 32), intermediates_only=True)
    assert feats[-1].shape[-2:] == (4, 4)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)


def test_attn_kwargs_reach_the_blocks():
    model = timm.create_model("resnet18_cbam", attn_kwargs=dict(order="parallel", spatial_kernel_size=3))
    assert model.layer2[0].se.order == "parallel"
    assert model.layer2[0].se.spatial.conv.kernel_size == (3, 3)


def test_bad_attn_kwargs_fail_clearly():
    with pytest.raises(TypeError, match="did you mean 'rd_ratio'"):
        timm.create_model("resnet18_se", attn_kwargs=dict(rd_ration=0.5))


def test_block_args_conflict_is_explained():
    with pytest.raises(ValueError, match="attn_kwargs"):
        timm.create_model("resnet18_se", block_args=dict(attn_layer="cbam"))


def test_pretrained_without_weights_is_clear():
    with pytest.raises(ValueError, match="has no pretrained weights"):
        timm.create_model("resnet18_se", pretrained=True)


@pytest.mark.parametrize("block", BLOCK_NAMES)
def test_device_dtype_pass_through_timm(block):
    model = timm.create_model(f"resnet18_{block}", device="meta", dtype=torch.bfloat16)
    for p in model.layer1[0].se.parameters():
        assert p.device.type == "meta" and p.dtype == torch.bfloat16


def test_quickstart_variant_keeps_one_stem_and_refuses_contradictions():
    backbone = timm.create_model("resnet18_cbam_quickstart", small_input=True, features_only=True)
    assert [f["reduction"] for f in backbone.feature_info] == [2, 2, 4, 8, 16]  # the stride-2 stem, applied once
    with pytest.raises(ValueError, match="always has its small-input stem of stride 2"):
        timm.create_model("resnet18_cbam_quickstart", small_input_stride=1)
    pretrained = timm.create_model("resnet18_cbam_quickstart", pretrained=True, features_only=True)
    assert pretrained.feature_info.reduction() == [2, 2, 4, 8, 16]
