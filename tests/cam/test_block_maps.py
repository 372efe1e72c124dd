"""The attention blocks' own maps, read during one forward pass, equal what each block computes directly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import visattn
from tests.conftest import randomize_parameters
from visattn.blocks import PixelSelfAttention
from visattn.cam import block_maps


def _cbam_model(order: str = "channel_first") -> torch.nn.Module:
    model = visattn.create_attention_resnet("resnet18", "cbam", small_input=True, num_classes=3, layers=[1, 1, 1, 1],
                                            channels=[8, 8, 16, 16], attn_kwargs={"order": order})
    return randomize_parameters(model).eval()


def _block_inputs(model: torch.nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, inp, n=n: seen.__setitem__(n, inp[0].detach())) for n in names]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("order", ["channel_first", "spatial_first", "parallel"])
def test_cbam_gates_equal_the_blocks_own_weights(order: str) -> None:
    model = _cbam_model(order)
    x = torch.randn(2, 3, 20, 16)
    maps = block_maps(model, x, scale=False)
    assert set(maps.spatial) == {f"layer{i}.0.se.spatial" for i in range(1, 5)}
    assert set(maps.channel) == {f"layer{i}.0.se.channel" for i in range(1, 5)}
    cbam = model.layer3[0].se
    x_in = _block_inputs(model, x, ["layer3.0.se"])["layer3.0.se"]
    with torch.no_grad():
        after_channel = cbam.channel(x_in) if order == "channel_first" else x_in
        spatial = cbam.spatial.spatial_weights(after_channel)
        after_spatial = cbam.spatial(x_in) if order == "spatial_first" else x_in
        channel = cbam.channel.channel_weights(after_spatial)
    expected = F.interpolate(spatial, size=(20, 16), mode="bilinear")[:, 0]
    torch.testing.assert_close(maps.spatial["layer3.0.se.spatial"], expected)
    torch.testing.assert_close(maps.channel["layer3.0.se.channel"], channel)
    assert maps.channel["layer3.0.se.channel"].shape == (2, 16)


def test_scaled_maps_span_zero_to_one_and_patterns_filter() -> None:
    model = _cbam_model()
    x = torch.randn(3, 3, 16, 16)
    maps = block_maps(model, x, patterns="layer4.*")
    assert list(maps.spatial) == ["layer4.0.se.spatial"]
    m = maps.spatial["layer4.0.se.spatial"]
    assert m.shape == (3, 16, 16)
    torch.testing.assert_close(m.amin((1, 2)), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(m.amax((1, 2)), torch.ones(3), atol=1e-5, rtol=0)
    assert block_maps(model, x, patterns="nothing*").spatial == {}


def test_se_model_has_channel_weights_only_and_state_is_restored() -> None:
    model = visattn.create_attention_resnet("resnet18", "se", num_classes=3, layers=[1, 1, 1, 1]).train()
    maps = block_maps(model, torch.randn(2, 3, 32, 32))
    assert maps.spatial == {} and set(maps.channel) == {f"layer{i}.0.se" for i in range(1, 5)}
    assert model.training and all(m.training for m in model.modules())
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


def _naive_attention_row(block: PixelSelfAttention, x: torch.Tensor, index: int) -> torch.Tensor:
    """f(q_i, k_j) / C(x) for one query from the paper's definitions, looping over heads."""
    q, k, _ = block.qkv(x)
    rows = []
    for h in range(block.num_heads):
        qi, kh = q[:, h, index], k[:, h]  # (B, d), (B, N, d)
        if block.pairwise in ("embedded_gaussian", "gaussian"):
            rows.append(torch.softmax(torch.einsum("bd,bnd->bn", qi, kh) * block.scale, -1))
        elif block.pairwise == "dot":
            rows.append(torch.einsum("bd,bnd->bn", qi, kh) / kh.shape[1])
        else:
            d = qi.shape[-1]
            w = block.concat_weight[h]
            rows.append(torch.relu((qi * w[:d]).sum(-1, keepdim=True) + (kh * w[d:]).sum(-1)) / kh.shape[1])
    return torch.stack(rows).mean(0)


@pytest.mark.parametrize("pairwise", ["embedded_gaussian", "dot", "gaussian", "concat"])
@pytest.mark.parametrize("kv_stride", [1, 2])
def test_self_attention_query_rows_match_the_definition(pairwise: str, kv_stride: int) -> None:
    block = randomize_parameters(PixelSelfAttention(8, pairwise=pairwise, num_heads=2, kv_stride=kv_stride)).double()
    x = torch.randn(2, 8, 5, 7, dtype=torch.float64)
    for flat in (0, 2 * 7 + 3, 5 * 7 - 1):  # first, a middle and the last pixel
        with torch.no_grad():
            got = block.query_attention(x, torch.tensor([flat]))[:, 0]
            expected = _naive_attention_row(block, x, flat)
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)
    if pairwise in ("embedded_gaussian", "gaussian"):
        torch.testing.assert_close(got.sum(-1).double(), torch.ones(2, dtype=torch.float64))


def test_self_attention_maps_in_a_model() -> None:
    model = visattn.create_attention_resnet("resnet18", "nonlocal", num_classes=3, layers=[1, 1, 1, 1]).eval()
    maps = block_maps(model, torch.randn(2, 3, 64, 64), patterns="layer3.*", queries=[(0.5, 0.5), (0.0, 1.0)])
    assert set(maps.self_attention) == {"layer3.0.se@0.5,0.5", "layer3.0.se@0,1"}
    assert all(m.shape == (2, 64, 64) for m in maps.self_attention.values())
    assert maps.spatial_maps().keys() == maps.self_attention.keys()
    with pytest.raises(ValueError, match=r"queries must be \(y, x\) pairs of fractions in \[0, 1\], got \(2, 0\)"):
        block_maps(model, torch.randn(1, 3, 32, 32), queries=[(2, 0)])


def test_patterns_may_name_a_stage_or_the_cbam_around_the_gates() -> None:
    model = _cbam_model()
    x = torch.randn(1, 3, 16, 16)
    for pattern in ("layer4", "layer4.0.se", "layer4.*"):
        maps = block_maps(model, x, patterns=pattern)
        assert list(maps.spatial) == ["layer4.0.se.spatial"], pattern
        assert list(maps.channel) == ["layer4.0.se.channel"], pattern


def test_each_head_of_a_query_can_be_read_apart() -> None:
    model = visattn.create_attention_resnet("resnet18", "nonlocal", num_classes=3, layers=[1, 1, 1, 1],
                                            attn_kwargs=dict(num_heads=2, position="relative")).eval()
    x = torch.randn(2, 3, 64, 64)
    maps = block_maps(model, x, patterns="layer3.*", heads=True, scale=False)
    key = "layer3.0.se@0.5,0.5"
    assert set(maps.self_attention) == {key, f"{key}#h0", f"{key}#h1"}
    # Interpolation is linear, so the heads' maps average to the mean map.
    torch.testing.assert_close((maps.self_attention[f"{key}#h0"] + maps.self_attention[f"{key}#h1"]) / 2,
                               maps.self_attention[key])
    assert set(block_maps(model, x, patterns="layer3.*").self_attention) == {key}  # off by default
