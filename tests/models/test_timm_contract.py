"""Every registered variant passes what timm's own model tests check (tests/test_models.py in timm): forward,
backward, default cfgs, features_only, forward_intermediates, and FX forward / backward through timm's feature
extraction. Inputs are smaller than timm's (the checks do not depend on the size), so the suite stays quick."""

import pytest
import timm
import torch
from timm.models._features_fx import create_feature_extractor, get_graph_node_names

import visattn
from visattn.models import variant_names
from visattn.models.pretrained import SHIPPED

VARIANTS = [*variant_names(), *SHIPPED]
HEAVY = {n for n in VARIANTS if n.startswith(("resnet34", "resnet50"))}


def _size(model, target):
    """timm's rule: the model's input size, capped at ``target``."""
    return tuple(min(v, target) for v in model.default_cfg["input_size"])


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


@pytest.mark.parametrize("name", _params(VARIANTS))
def test_forward_and_backward(name):
    model = timm.create_model(name, pretrained=False, num_classes=42).train()
    x = torch.randn(2, *_size(model, 64))
    out = model(x)
    out.mean().backward()
    assert out.shape == (2, 42) and not torch.isnan(out).any()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"


@pytest.mark.parametrize("name", _params(VARIANTS))
def test_default_cfg_matches_the_model(name):
    model = timm.create_model(name, pretrained=False).eval()
    cfg = model.default_cfg
    state = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state and f"{cfg['classifier']}.weight" in state
    x = torch.randn(1, *cfg["input_size"])  # the full input size, once: the heads below reuse its features
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape[-2:] == tuple(cfg["pool_size"])
        model.reset_classifier(0)
        assert model.forward_head(features).shape == (1, model.num_features)
        model.reset_classifier(0, "")
        assert model.forward_head(features).shape[-2:] == tuple(cfg["pool_size"])


@pytest.mark.parametrize("name", _params(VARIANTS))
def test_features_only_and_forward_intermediates(name):
    features = timm.create_model(name, pretrained=False, features_only=True).eval()
    x = torch.randn(1, *_size(features, 64))
    with torch.no_grad():
        outs = features(x)
    assert [o.shape[1] for o in outs] == features.feature_info.channels()
    assert [x.shape[-1] // o.shape[-1] for o in outs] == features.feature_info.reduction()
    model = timm.create_model(name, pretrained=False).eval()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
    assert [t.shape[1] for t in intermediates] == [i["num_chs"] for i in model.feature_info]
    torch.testing.assert_close(model.forward_head(final), model(x))


@pytest.mark.parametrize("name", _params(VARIANTS))
def test_fx_forward_and_backward(name):
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(2, *_size(model, 64))
    _, eval_nodes = get_graph_node_names(model)
    traced = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])
    with torch.no_grad():
        torch.testing.assert_close(next(iter(traced(x).values())), model(x))
    model.train()
    train_nodes, _ = get_graph_node_names(model)
    traced = create_feature_extractor(model.train(), return_nodes=[train_nodes[-1]])
    next(iter(traced(x).values())).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_weights_load_with_features_only(name):
    features = timm.create_model(name, pretrained=True, features_only=True).eval()
    full = timm.create_model(name, pretrained=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        last = features(x)[-1]
        torch.testing.assert_close(last, full.forward_features(x))  # the shipped weights, not random ones


def test_blocks_are_single_calls_for_fx():
    from timm.layers import is_notrace_module

    assert all(is_notrace_module(visattn.get_block(n)) for n in visattn.list_blocks(inputs=None))
