"""Injected models through the tools users put them through: timm's and torchvision's FX feature extractors,
torch.export, torch.compile and ONNX (run with onnxruntime). Each output is checked against the eager model."""

import copy

import pytest
import torch
from timm.models._features_fx import create_feature_extractor as timm_feature_extractor
from timm.models._features_fx import get_graph_node_names as timm_node_names
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import visattn
from visattn.bench.inject import build, trained_like

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
MODELS = ["resnet18", "tv:resnet18", "efficientnet_b0", "convnext_atto", "densenet121", "tv:mobilenet_v3_small"]


def _injected(name, block):
    model = trained_like(build(name)).eval()
    model, _ = visattn.inject(model, block, input_size=(3, 64, 64))
    return model


def _close(out, ref):
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("block", ["se", "cbam", "nonlocal"])
@pytest.mark.parametrize("name", MODELS)
def test_fx_feature_extractors_of_timm_and_torchvision(name, block):
    model = _injected(name, block)
    with torch.no_grad():
        ref = model(X)
    for names, extract in ((get_graph_node_names, create_feature_extractor),
                           (timm_node_names, timm_feature_extractor)):
        nodes = names(model)[1]
        extractor = extract(model, return_nodes=[nodes[-1]])
        with torch.no_grad():
            _close(next(iter(extractor(X).values())), ref)
        assert model.training is False  # the extractor left the model's mode alone


@pytest.mark.parametrize("block", ["cbam", "nonlocal"])
@pytest.mark.parametrize("name", MODELS)
def test_torch_export(name, block):
    model = _injected(name, block)
    with torch.no_grad():
        ref = model(X)
        _close(torch.export.export(model, (X,)).module()(X), ref)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_torch_compile(name):
    model = _injected(name, "cbam")
    with torch.no_grad():
        ref = model(X)
        _close(torch.compile(copy.deepcopy(model))(X), ref)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "block"), [("resnet18", "cbam"), ("efficientnet_b0", "nonlocal"),
                                             ("tv:mobilenet_v3_small", "se")])
def test_onnx_export_runs_in_onnxruntime(name, block, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _injected(name, block)
    with torch.no_grad():
        ref = model(X)
    program = torch.onnx.export(model, (X,), dynamo=True, verbose=False)
    program.save(str(tmp_path / "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    out = session.run(None, {session.get_inputs()[0].name: X.numpy()})[0]
    _close(torch.from_numpy(out), ref)


@pytest.mark.parametrize("name", ["resnet18", "tv:resnet18", "efficientnet_b0"])
def test_cross_stage_injection_traces_and_keeps_no_proxy(name):
    # The context travels inside one forward pass: a traced graph runs on its own, and nothing is left behind.
    model = trained_like(build(name)).eval()
    model, report = visattn.inject_cross(model, query_stage=4, context_stage=2, input_size=(3, 64, 64))
    with torch.no_grad():
        ref = model(X)
    for names, extract in ((get_graph_node_names, create_feature_extractor),
                           (timm_node_names, timm_feature_extractor)):
        extractor = extract(model, return_nodes=[names(model)[1][-1]])
        leftovers = [m for m in model.modules() if any(isinstance(v, torch.fx.Proxy) for v in vars(m).values())]
        assert not leftovers, f"proxies kept on {[type(m).__name__ for m in leftovers]}"
        with torch.no_grad():
            _close(next(iter(extractor(X).values())), ref)
    with torch.no_grad():
        _close(torch.export.export(model, (X,)).module()(X), ref)
