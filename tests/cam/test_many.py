"""Several CAMs sharing one pass, and block maps read from someone else's pass, equal what each computes alone."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import visattn
from tests.conftest import randomize_parameters
from visattn.cam import BlockMapReader, block_maps, create_cam, explain_many, list_cams


def _model() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=5, layers=[1, 1, 1, 1], channels=[8, 16, 16, 32])


def _count_forwards(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("layers", [None, "layer3", ["layer2", "layer3"]])
@pytest.mark.parametrize("targets", [None, 2])
def test_explain_many_equals_each_cams_own_explain(layers: object, targets: int | None) -> None:
    model = _model()
    x = torch.randn(3, 3, 48, 40)
    options = {"scorecam": {"batch_size": 64}}
    alone = {m: create_cam(m, model, layers, **options.get(m, {})).explain(x, targets) for m in list_cams()}
    calls = _count_forwards(model)
    together = explain_many({m: create_cam(m, model, layers, **options.get(m, {})) for m in list_cams()}, x, targets)
    assert list(together) == list_cams()
    for method, result in together.items():
        torch.testing.assert_close(result.maps, alone[method].maps, msg=method)
        torch.testing.assert_close(result.logits, alone[method].logits)
        assert result.layer_maps.keys() == alone[method].layer_maps.keys()
        if targets is None:
            assert torch.equal(result.classes, alone[method].classes)
    with_score_cam, calls[0] = calls[0], 0
    create_cam("scorecam", model, layers, **options["scorecam"]).explain(x, targets)
    assert with_score_cam == 1 + calls[0]  # one pass for the six that share, then Score-CAM's own passes


def test_explain_many_restores_the_model_and_shares_only_matching_layers() -> None:
    model = _model()
    model.train()
    model.fc.weight.requires_grad_(False)
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    calls = _count_forwards(model)
    x = torch.randn(2, 3, 32, 32)
    cams = {"a": create_cam("gradcam", model, "layer3"), "b": create_cam("layercam", model, "layer3"),
            "c": create_cam("gradcam", model, "layer2")}
    results = explain_many(cams, x)
    assert calls[0] == 2  # a and b share; c has other layers
    torch.testing.assert_close(results["c"].maps, create_cam("gradcam", model, "layer2")(x))
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 5\)"):
        explain_many(cams, x, targets=9)
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert sum(len(m._forward_hooks) for m in model.modules()) == 1  # only the test's counter
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        explain_many(cams, x)


def _cbam_model() -> nn.Module:
    model = visattn.create_attention_resnet("resnet18", "cbam", small_input=True, num_classes=3, layers=[1, 1, 1, 1],
                                            channels=[8, 8, 16, 16])
    return randomize_parameters(model).eval()


def test_reader_keeps_the_first_pass_and_equals_block_maps() -> None:
    model = _cbam_model()
    x, other = torch.randn(2, 3, 24, 20), torch.randn(2, 3, 24, 20)
    expected = block_maps(model, x, patterns="layer[34]")
    with BlockMapReader(model, "layer[34]") as reader:
        with pytest.raises(RuntimeError, match="no forward pass"):
            reader.read(x.shape[-2:])
        with torch.no_grad():
            logits = model(x)
            model(other)  # a later pass (e.g. Score-CAM's masked inputs) is not mixed in
        got = reader.read(x.shape[-2:], logits)
        assert got.spatial.keys() == expected.spatial.keys() == {"layer3.0.se.spatial", "layer4.0.se.spatial"}
        for name in expected.spatial:
            torch.testing.assert_close(got.spatial[name], expected.spatial[name])
        for name in expected.channel:
            torch.testing.assert_close(got.channel[name], expected.channel[name])
        with torch.no_grad():
            model(other)  # after a read, the next pass is kept
        torch.testing.assert_close(reader.read(x.shape[-2:]).spatial["layer3.0.se.spatial"],
                                   block_maps(model, other, patterns="layer3").spatial["layer3.0.se.spatial"])
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    reader.close()  # idempotent
    with pytest.raises(RuntimeError, match="inside a `with` block"):
        reader.read(x.shape[-2:])


def test_reader_self_attention_rows_equal_block_maps() -> None:
    model = randomize_parameters(visattn.create_attention_resnet(
        "resnet18", "nonlocal", small_input=True, num_classes=3, layers=[1, 1, 1, 1], channels=[8, 8, 16, 16])).eval()
    x = torch.randn(2, 3, 16, 16)
    queries = ((0.25, 0.5), (0.9, 0.1))
    expected = block_maps(model, x, queries=queries)
    with BlockMapReader(model, queries=queries) as reader, torch.no_grad():
        model(x)
        got = reader.read(x.shape[-2:])
    assert got.self_attention.keys() == expected.self_attention.keys() and len(got.self_attention) >= 2
    for name in expected.self_attention:
        torch.testing.assert_close(got.self_attention[name], expected.self_attention[name])
