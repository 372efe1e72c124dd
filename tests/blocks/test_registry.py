import pytest
import torch
from torch import nn

import visattn
from visattn.blocks import registry


def test_builtin_names_in_order():
    assert visattn.list_blocks()[:5] == ["se", "cam", "spatial", "cbam", "nonlocal"]


@pytest.mark.parametrize(("alias", "cls"), [("squeeze_excite", visattn.SqueezeExcite),
                                            ("channel", visattn.ChannelAttention),
                                            ("sam", visattn.SpatialAttention),
                                            ("CBAM", visattn.CBAM),
                                            ("non_local", visattn.PixelSelfAttention)])
def test_aliases_and_case_resolve(alias, cls):
    assert visattn.get_block(alias) is cls


def test_aliases_not_listed_by_default():
    assert "sam" not in visattn.list_blocks()
    assert "sam" in visattn.list_blocks(include_aliases=True)


def test_unknown_name_lists_valid_and_suggests():
    with pytest.raises(ValueError, match=r"unknown attention block 'cbm'.*se, cam.*Did you mean 'cbam'"):
        visattn.get_block("cbm")


def test_non_string_name_is_type_error():
    with pytest.raises(TypeError, match="block name must be a str"):
        visattn.get_block(3)


def test_create_block_passes_kwargs():
    block = visattn.create_block("se", 64, rd_channels=5)
    assert block.fc1.out_features == 5


@pytest.mark.parametrize("bad", ["Bad", "1x", "has-dash", ""])
def test_register_rejects_bad_names(bad):
    with pytest.raises(ValueError, match="lower-case identifier"):
        visattn.register_block(bad)


def test_register_rejects_non_module():
    with pytest.raises(TypeError, match="nn.Module subclass"):
        visattn.register_block("not_a_module")(int)


@pytest.fixture
def user_block():
    """Register a user block and remove it (and its timm variants) afterwards."""
    import timm.models._registry as timm_registry

    @visattn.register_block("test_double", aliases=("test_twice",))
    class Double(nn.Module):
        def __init__(self, channels, *, identity_init=False, device=None, dtype=None):
            super().__init__()
            self.scale = nn.Parameter(torch.full((), 0.0 if identity_init else 1.0, device=device, dtype=dtype))

        def forward(self, x):
            return x + self.scale * x

    yield Double
    registry._BLOCKS.pop("test_double")
    registry._ALIASES.pop("test_twice")
    for arch in ("resnet18", "resnet34", "resnet50"):
        timm_registry._clear_model_entries(f"{arch}_test_double")
        timm_registry._model_entrypoints.pop(f"{arch}_test_double", None)


def test_user_block_is_registered_everywhere(user_block):
    import timm

    assert visattn.get_block("test_twice") is user_block
    assert "test_double" in visattn.list_blocks()
    assert timm.list_models("*test_double") == ["resnet18_test_double", "resnet34_test_double", "resnet50_test_double"]
    model = timm.create_model("resnet18_test_double", num_classes=3)
    assert isinstance(model.layer1[0].se, user_block)


def test_reregistering_warns_and_overwrites(user_block):
    with pytest.warns(UserWarning, match="already registered"):
        visattn.register_block("test_double")(visattn.SqueezeExcite)
    assert visattn.get_block("test_double") is visattn.SqueezeExcite


def test_alias_may_not_shadow_another_blocks_name():
    with pytest.raises(ValueError, match="alias 'se' of block 'test_shadow' is already the name of block SqueezeExc"):
        visattn.register_block("test_shadow", aliases=("se",))(visattn.SqueezeExcite)
    assert "test_shadow" not in visattn.list_blocks() and visattn.get_block("se") is visattn.SqueezeExcite


def test_a_name_timm_already_uses_gets_no_variant_and_a_warning():
    import timm
    import timm.models._registry as timm_registry

    assert timm.is_model("resnet50_gn")  # timm's own GroupNorm ResNet-50
    try:
        with pytest.warns(UserWarning, match="timm already has a model named 'resnet50_gn'"):
            visattn.register_block("gn")(visattn.SqueezeExcite)
        assert not isinstance(timm.create_model("resnet50_gn").layer1[0].se, visattn.SqueezeExcite)
        assert isinstance(timm.create_model("resnet18_gn").layer1[0].se, visattn.SqueezeExcite)
    finally:
        registry._BLOCKS.pop("gn")
        for arch in ("resnet18", "resnet34"):
            timm_registry._clear_model_entries(f"{arch}_gn")
            timm_registry._model_entrypoints.pop(f"{arch}_gn", None)
