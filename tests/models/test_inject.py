import pytest
import timm
import torch
import torchvision
from torch import nn

import visattn
from tests.conftest import BLOCK_NAMES, make_trained_like
from visattn.models import find_sites

MODELS = {
    "timm_resnet18": lambda: timm.create_model("resnet18", num_classes=10),
    "timm_resnet50": lambda: timm.create_model("resnet50", num_classes=10),
    "tv_resnet18": lambda: torchvision.models.resnet18(num_classes=10),
}


def _trained(name):
    return make_trained_like(MODELS[name]()).eval()


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("block", BLOCK_NAMES)
def test_identity_injection_keeps_outputs(model_name, block):
    model = _trained(model_name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    model, report = visattn.inject(model, block, input_size=(3, 64, 64))
    with torch.no_grad():
        after = model(x)
    assert (after - before).abs().max().item() <= 1e-5
    assert report.max_abs_diff <= 1e-5
    assert len(report.sites) == sum(len(s) for s in find_sites(model, (3, 64, 64)).sites.values())


def test_identity_check_is_not_vacuous():
    # The same model with default (random) init must change its outputs: the blocks are really in the path.
    model = _trained("timm_resnet18")
    _, report = visattn.inject(model, "cbam", init="default", input_size=(3, 64, 64))
    assert report.max_abs_diff > 1e-3


@pytest.mark.parametrize("model_name", MODELS)
def test_original_state_dict_loads_with_only_new_keys_missing(model_name):
    original = _trained(model_name)
    original_state = {k: v.clone() for k, v in original.state_dict().items()}
    model, report = visattn.inject(MODELS[model_name](), "cbam", input_size=(3, 64, 64))
    result = model.load_state_dict(original_state, strict=False)
    assert result.unexpected_keys == []
    # BatchNorm fills a missing num_batches_tracked itself and does not report it.
    assert sorted(result.missing_keys) == [k for k in report.new_keys if not k.endswith("num_batches_tracked")]
    assert all(any(k.startswith(s.path + ".") for s in report.sites) for k in report.new_keys)
    # ... and then computes exactly what the original computes.
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), original(x), rtol=0, atol=1e-5)


def test_parameter_names_kept():
    model = torchvision.models.resnet50()
    names_before = {n for n, _ in model.named_parameters()}
    visattn.inject(model, "se", input_size=(3, 64, 64))
    names_after = {n for n, _ in model.named_parameters()}
    assert names_before <= names_after
    assert all(".attn." in n for n in names_after - names_before)  # torchvision blocks have no slot: a new child


def test_report_counts_overhead_and_does_not_warn(recwarn):
    model = timm.create_model("resnet18")
    _, report = visattn.inject(model, "se", stages=[4], input_size=(3, 64, 64))
    assert not [w for w in recwarn if "inject" in str(w.message)]  # the report says it all
    assert [s.path for s in report.sites] == ["layer4.0.se", "layer4.1.se"]
    assert report.params_added == sum(p.numel() for p in model.layer4.parameters()) - sum(
        p.numel() for p in timm.create_model("resnet18").layer4.parameters())
    assert report.flops_added > 0
    text = str(report)
    assert "layer4.1.se" in text and "params:" in text and "FLOPs at 3x64x64" in text
    assert f"new state_dict keys: {len(report.new_keys)} " in text and "visattn.load_weights" in text


@pytest.mark.parametrize(("stages", "blocks", "expected"), [
    ([3, 4], "last", ["layer3.1.se", "layer4.1.se"]),
    (None, [0], ["layer1.0.se", "layer2.0.se", "layer3.0.se", "layer4.0.se"]),
    ([2], [-1, 0], ["layer2.0.se", "layer2.1.se"]),
])
def test_stage_and_block_selection(stages, blocks, expected):
    model, report = visattn.inject(timm.create_model("resnet18"), "spatial", stages=stages, blocks=blocks,
                                   input_size=(3, 32, 32))
    assert [s.path for s in report.sites] == expected
    assert model.layer1[1].se is None


def test_block_kwargs_and_classes_accepted():
    model, report = visattn.inject(timm.create_model("resnet18"), visattn.PixelSelfAttention, stages=[4],
                                   pairwise="dot", num_heads=2, input_size=(3, 32, 32))
    assert model.layer4[0].se.pairwise == "dot" and model.layer4[0].se.num_heads == 2
    assert report.block == "PixelSelfAttention"


def test_new_blocks_follow_model_device_dtype_and_mode():
    model = timm.create_model("resnet18").to(torch.float64).train()
    model.layer2.eval()  # a mixed state must survive the probe
    visattn.inject(model, "cbam", input_size=(3, 32, 32))
    assert model.layer1[0].se.channel.fc1.weight.dtype == torch.float64
    assert model.training and model.layer1[0].se.training
    assert not model.layer2.training and not model.layer2[0].se.training


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(stages=[5]), ValueError, r"lacks.*valid: \[1, 2, 3, 4\]"),
    (dict(stages=4), TypeError, "sequence of ints"),
    (dict(blocks="first"), ValueError, "'all', 'last' or a list"),
    (dict(blocks=1), ValueError, r"blocks must be 'all', 'last' or a list of block indices, got 1"),
    (dict(blocks=[2]), ValueError, r"out of range for stage 1, which has 2 blocks \(layer1.0, layer1.1\)"),
    (dict(replace=1), TypeError, "replace must be True or False"),
    (dict(init="zeros"), ValueError, "init must be 'identity' or 'default'"),
    (dict(input_size=(32, 32)), ValueError, "input_size must be"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        visattn.inject(timm.create_model("resnet18"), "se", **kwargs)


def test_a_block_instance_is_refused_naming_its_class():
    with pytest.raises(TypeError, match=r"got the instance SqueezeExcite\(\.\.\.\); pass SqueezeExcite instead"):
        visattn.inject(timm.create_model("resnet18"), visattn.blocks.SqueezeExcite(64))


def test_identity_init_through_kwargs_is_passed_on():
    class MySE(visattn.blocks.SqueezeExcite):  # takes identity_init through **kwargs
        def __init__(self, channels, **kwargs):
            super().__init__(channels, **kwargs)

    model = timm.create_model("resnet18", layers=[1, 1, 1, 1], channels=[8, 8, 8, 8])
    _, report = visattn.inject(model, MySE, input_size=(3, 32, 32))
    assert report.max_abs_diff == 0 and len(report.sites) == 4 and report.block == "MySE"


def test_unsupported_model_names_what_was_searched():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4), nn.ReLU())  # no feature map at all
    with pytest.raises(ValueError, match=r"nowhere to put 'se'.*no residual blocks and no stage outputs at strides 4 "
                                         r"to 32.*branch \+ shortcut add.*0 \(Flatten\), 1 \(Linear\)"):
        visattn.inject(model, "se", input_size=(3, 8, 8))


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"])
def test_transformers_are_refused_saying_why(name):
    with pytest.raises(ValueError, match=r"no NCHW feature maps.*token sequences or channels-last maps.*transformers"):
        visattn.inject(timm.create_model(name), "se")


def test_existing_attention_is_kept_and_followed():
    model = make_trained_like(timm.create_model("seresnet18", num_classes=10)).eval()
    model, report = visattn.inject(model, "cbam", input_size=(3, 32, 32))
    assert {s.where for s in report.sites} == {"after se"}
    assert type(model.layer1[0].se).__name__ == "SEModule" and type(model.layer1[0].attn).__name__ == "CBAM"
    assert report.max_abs_diff == 0 and not report.removed_keys


def test_replace_swaps_existing_attention_and_reports_the_change():
    original = make_trained_like(timm.create_model("seresnet18", num_classes=10)).eval()
    state = {k: v.clone() for k, v in original.state_dict().items()}
    model, report = visattn.inject(original, "cbam", replace=True, input_size=(3, 32, 32))
    assert {s.where for s in report.sites} == {"replaces SEModule"}
    assert [s.path for s in report.sites][:2] == ["layer1.0.se", "layer1.1.se"]
    assert type(model.layer1[0].se).__name__ == "CBAM"
    assert report.removed_keys and all(".se.fc" in k for k in report.removed_keys)
    assert report.max_abs_diff > 1e-3  # the SE gates are gone, so the outputs change, and the report says so
    assert "removed state_dict keys" in str(report)
    assert set(state) - set(model.state_dict()) == set(report.removed_keys)


def test_identity_needs_identity_init_argument():
    class NoIdentity(nn.Module):
        def __init__(self, channels, device=None, dtype=None):
            super().__init__()

        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="takes no identity_init argument"):
        visattn.inject(timm.create_model("resnet18"), NoIdentity)
    model, _ = visattn.inject(timm.create_model("resnet18"), NoIdentity, init="default", input_size=(3, 32, 32))
    assert isinstance(model.layer1[0].se, NoIdentity)


def test_block_that_ignores_identity_init_is_caught_and_undone():
    class Liar(nn.Module):
        def __init__(self, channels, identity_init=False, device=None, dtype=None):
            super().__init__()

        def forward(self, x):
            return 2 * x

    model = _trained("timm_resnet18")
    with pytest.raises(RuntimeError, match="does not honour identity_init"):
        visattn.inject(model, Liar, input_size=(3, 32, 32))
    assert all(getattr(m, "se", None) is None for m in model.modules())


def test_injected_model_trains():
    model, _ = visattn.inject(timm.create_model("resnet18", num_classes=4), "cbam", input_size=(3, 32, 32))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert model.layer1[0].se.channel.gate.blend.item() != 0.0


def test_features_only_backbone_and_one_channel_input():
    # A features_only model returns a list of maps; a 1-channel model keeps the pretrained cfg's 3-channel input_size.
    x = torch.randn(2, 3, 64, 64)
    model = make_trained_like(timm.create_model("resnet18", features_only=True)).eval()
    before = [t.clone() for t in model(x)]
    model, report = visattn.inject(model, "cbam")
    assert report.max_abs_diff <= 1e-5
    for a, b in zip(model(x), before, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    grey = timm.create_model("resnet18", in_chans=1, num_classes=3).eval()
    _, report = visattn.inject(grey, "se")
    assert report.input_size == (1, 224, 224)


class _Explodes(nn.Module):
    def __init__(self, channels, *, identity_init=False, device=None, dtype=None):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, device=device, dtype=dtype))

    def forward(self, x):
        raise ValueError("this block cannot run")


def test_any_failure_during_injection_leaves_the_model_as_it_was():
    model = timm.create_model("resnet18", num_classes=10).eval()
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match="this block cannot run"):
        visattn.inject(model, _Explodes)
    assert set(model.state_dict()) == keys
    assert all(getattr(m, "se", None) is None for m in model.modules() if hasattr(m, "se"))


def test_a_block_class_never_seen_is_found_from_its_forward():
    # torchvision's quantizable blocks add through a FloatFunctional module: no class name to match, one add to find.
    model = make_trained_like(torchvision.models.quantization.resnet18(num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    model, report = visattn.inject(model, "cbam", input_size=(3, 32, 32))
    assert len(report.sites) == 8 and report.sites[0].path == "layer1.0.attn"
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)


def test_load_weights_accepts_blocks_of_unregistered_classes_that_inject_added():
    class MyGate(nn.Module):  # not registered: only inject knows it added this
        def __init__(self, channels, *, identity_init=False, device=None, dtype=None):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))

        def forward(self, x):
            return x * (1 + self.w[:, None, None])

    original = timm.create_model("resnet18", num_classes=10)
    state = {k: v.clone() for k, v in original.state_dict().items()}
    model, _ = visattn.inject(original, MyGate, stages=[4])
    with pytest.warns(UserWarning, match="2 keys"):
        kept = visattn.load_weights(model, state)
    assert kept == ["layer4.0.se.w", "layer4.1.se.w"]


def test_a_typo_of_injects_own_argument_is_named():
    model = timm.create_model("resnet18", num_classes=10)
    with pytest.raises(TypeError, match="unexpected keyword argument 'stage'; did you mean 'stages'"):
        visattn.inject(model, "cbam", stage=[3])
    assert all(getattr(m, "se", None) is None for m in model.modules() if hasattr(m, "se"))


def test_failed_injection_into_torchvision_restores_the_block_classes():
    model = torchvision.models.resnet18(num_classes=10).eval()
    classes = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match="this block cannot run"):
        visattn.inject(model, _Explodes)
    assert [type(m) for m in model.modules()] == classes
    assert not any(hasattr(m, "se") for m in model.modules())


def test_a_user_block_with_open_kwargs_gets_them_all():
    class Open(nn.Module):
        def __init__(self, channels, *, identity_init=False, device=None, dtype=None, **options):
            super().__init__()
            self.options = options

        def forward(self, x):
            return x

    model, _ = visattn.inject(timm.create_model("resnet18", num_classes=10), Open, stages=[4], inits=3)
    assert model.layer4[0].se.options == {"inits": 3}  # close to 'init', but the block asked for any option
