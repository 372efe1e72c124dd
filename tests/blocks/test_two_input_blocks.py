"""Cross-attention, gated fusion and inject_cross, against naive references written from their equations."""

import itertools

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

import visattn
from tests.blocks.test_attention_core import SOFTMAX_SCORES
from tests.conftest import make_trained_like, naive_sinusoid, randomize_parameters
from visattn import CrossAttention2d, GatedFusion
from visattn.blocks import block_inputs, create_block, list_blocks
from visattn.cam import block_maps

# --- cross-attention ----------------------------------------------------------------------------------------------


def _tok(t, heads):
    return t.reshape(t.shape[0], heads, t.shape[1] // heads, -1).transpose(-1, -2)


def naive_cross(block: CrossAttention2d, x, context):
    """x + BN(W_z y), y_i = sum_j softmax_j(s(q_i, k_j)) v_j; queries of x, keys and values of the context."""
    heads, core, s = block.num_heads, block.attn, block.kv_stride
    pool = (lambda t: F.max_pool2d(t, s, ceil_mode=True)) if s > 1 else (lambda t: t)
    v = _tok(pool(F.conv2d(context, block.value.weight, block.value.bias)), heads)
    q = _tok(F.conv2d(x, block.query.weight, block.query.bias), heads)
    k = _tok(pool(F.conv2d(context, block.key.weight, block.key.bias)), heads)
    (h, w), (ch, cw) = x.shape[-2:], context.shape[-2:]
    kh, kw = -(-ch // s), -(-cw // s)
    q_pos = [(i, j) for i in range(h) for j in range(w)]
    # A pooled context cell's centre, in context pixels, then in x's pixel units.
    k_pos = [((s * i + (s - 1) / 2 + 0.5) * h / ch - 0.5, (s * j + (s - 1) / 2 + 0.5) * w / cw - 0.5)
             for i in range(kh) for j in range(kw)]
    if core.position == "sinusoidal":
        q = q + torch.stack([naive_sinusoid(*p, q.shape[-1]) for p in q_pos])
        k = k + torch.stack([naive_sinusoid(*p, k.shape[-1]) for p in k_pos])
    y = torch.zeros(x.shape[0], heads, h * w, v.shape[-1], dtype=x.dtype)
    for b, hd in itertools.product(range(x.shape[0]), range(heads)):
        logits = torch.empty(h * w, kh * kw, dtype=x.dtype)
        for i, j in itertools.product(range(h * w), range(kh * kw)):
            qi, kj = q[b, hd, i], k[b, hd, j]
            if block.score == "embedded_gaussian":
                val = qi @ kj * core.scale
            elif block.score == "additive":
                val = core.additive_weight[hd] @ torch.tanh(qi + kj)
            else:
                raise NotImplementedError(block.score)
            if core.position == "relative":
                m = core.relative.max_distance
                dy = max(-m, min(m, round(q_pos[i][0] - k_pos[j][0])))
                dx = max(-m, min(m, round(q_pos[i][1] - k_pos[j][1])))
                val = val + core.relative.table[hd, dy + m, dx + m]
            logits[i, j] = val
        y[b, hd] = torch.softmax(logits, -1) @ v[b, hd]
    return x + block.norm(F.conv2d(y.transpose(-1, -2).reshape(x.shape[0], -1, h, w), block.proj.weight,
                                   block.proj.bias))


@pytest.mark.parametrize("score", ["embedded_gaussian", "additive"])
@pytest.mark.parametrize("position", [None, "relative", "sinusoidal"])
@pytest.mark.parametrize("stride", [1, 2])
def test_cross_attention_matches_its_equation_at_two_sizes(score, position, stride):
    block = CrossAttention2d(8, context_channels=6, score=score, num_heads=2, rd_channels=8, kv_stride=stride,
                             position=position, max_distance=2).double()
    randomize_parameters(block).eval()
    x, context = torch.randn(2, 8, 3, 4, dtype=torch.float64), torch.randn(2, 6, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(block(x, context), naive_cross(block, x, context), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("score", SOFTMAX_SCORES)
def test_cross_attention_is_an_identity_at_init_for_every_score(score):
    channels = 8 if score == "gaussian" else 12
    block = CrossAttention2d(channels, context_channels=8, score=score, num_heads=2)
    x = torch.randn(2, channels, 4, 4)
    torch.testing.assert_close(block(x, torch.randn(2, 8, 8, 8)), x, atol=0, rtol=0)


def test_cross_attention_errors():
    with pytest.raises(ValueError, match=r"score='gaussian' compares raw features: context_channels \(6\)"):
        CrossAttention2d(8, context_channels=6, score="gaussian")
    with pytest.raises(ValueError, match="context_channels must be a positive int"):
        CrossAttention2d(8, context_channels=0)
    block = CrossAttention2d(8, context_channels=6)
    with pytest.raises(ValueError, match=r"context must be \(B, 6, H', W'\) with the B = 2 of x, got \(2, 5, 4, 4\)"):
        block(torch.randn(2, 8, 4, 4), torch.randn(2, 5, 4, 4))


# --- gated fusion -------------------------------------------------------------------------------------------------


def test_gated_fusion_follows_the_paper():
    fuse = randomize_parameters(GatedFusion(5, 3, out_channels=4)).double()
    x1, x2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    h1 = torch.tanh(x1 @ fuse.encode1.weight.T + fuse.encode1.bias)
    h2 = torch.tanh(x2 @ fuse.encode2.weight.T + fuse.encode2.bias)
    w_z = torch.cat([fuse.gate1.weight, fuse.gate2.weight], dim=1)  # W_z acting on [x1; x2]
    z = torch.sigmoid(torch.cat([x1, x2], dim=1) @ w_z.T + fuse.gate1.bias)
    torch.testing.assert_close(fuse(x1, x2), z * h1 + (1 - z) * h2, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(fuse.gate, z)
    assert fuse.gate.shape == (6, 4) and bool(((fuse.gate > 0) & (fuse.gate < 1)).all())


def test_gated_fusion_of_maps_vectors_and_maps_of_two_sizes():
    fuse = randomize_parameters(GatedFusion(5, 3, out_channels=4)).double()
    maps1, maps2 = torch.randn(2, 5, 6, 6, dtype=torch.float64), torch.randn(2, 3, 3, 3, dtype=torch.float64)
    out = fuse(maps1, maps2)
    assert out.shape == (2, 4, 6, 6) and fuse.gate.shape == (2, 4, 6, 6)
    # Maps are fused pixel by pixel, the second first resized (bilinear) to the first's size.
    up = F.interpolate(maps2, size=(6, 6), mode="bilinear", align_corners=False)
    pixel = fuse(maps1[:, :, 2, 3], up[:, :, 2, 3])
    torch.testing.assert_close(out[:, :, 2, 3], pixel)
    vector = torch.randn(2, 3, dtype=torch.float64)  # a vector holds for every pixel of the map
    mixed = fuse(maps1, vector)
    torch.testing.assert_close(mixed[:, :, 1, 4], fuse(maps1[:, :, 1, 4], vector))
    with pytest.raises(ValueError, match=r"x2 must be \(B, 3\) or \(B, 3, H, W\), got \(2, 4\)"):
        fuse(maps1, torch.randn(2, 4))


def test_two_input_blocks_are_registered_apart():
    assert list_blocks(inputs=2) == ["cross_attention", "gated_fusion"]
    assert "cross_attention" not in list_blocks() and not timm.list_models("resnet18_cross_attention")
    assert block_inputs("gmu") == 2 and block_inputs("cbam") == 1
    assert isinstance(create_block("gated_fusion", 8, 3, out_channels=2), GatedFusion)
    with pytest.raises(ValueError, match="takes two inputs, so it has no place in a residual block"):
        visattn.inject(timm.create_model("resnet18"), "cross_attention")


# --- inject_cross -------------------------------------------------------------------------------------------------


def _resnet(kind):
    if kind == "timm":
        return make_trained_like(timm.create_model("resnet18", num_classes=5, layers=[1, 1, 1, 1])).eval()
    return make_trained_like(torchvision.models.resnet18(num_classes=5)).eval()


@pytest.mark.parametrize("kind", ["timm", "torchvision"])
@pytest.mark.parametrize(("query", "context"), [(4, 3), (4, 2)])
def test_inject_cross_is_an_identity_keeps_keys_and_trains(kind, query, context):
    model = _resnet(kind)
    keys = set(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    model, report = visattn.inject_cross(model, query_stage=query, context_stage=context, num_heads=2,
                                         position="relative", input_size=(3, 64, 64))
    # The stage's last block computes its output, so it holds the block (a Sequential would run a child it holds).
    path = f"layer{query}.{len(getattr(model, f'layer{query}')) - 1}.cross_attn"
    assert keys < set(model.state_dict()) and all(k.startswith(f"{path}.") for k in report.new_keys)
    assert report.max_abs_diff == 0 and report.sites[0].path == path
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=0, rtol=0)
    # It learns: after a few SGD steps its output branch is no longer zero and the model's outputs moved.
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    labels = torch.tensor([0, 1])
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        optimizer.step()
    block = model.get_submodule(path)
    assert block.norm.weight.abs().sum() > 0


def test_inject_cross_errors_leave_the_model_alone():
    model = _resnet("timm")
    with pytest.raises(ValueError, match=r"context_stage \(4\) must come before query_stage \(3\)"):
        visattn.inject_cross(model, query_stage=3, context_stage=4)
    with pytest.raises(ValueError, match=r"query_stage=5 is not a stage of this model; valid: \[1, 2, 3, 4\]"):
        visattn.inject_cross(model, query_stage=5)
    with pytest.raises(ValueError, match="score must be one of"):
        visattn.inject_cross(model, score="cosine")
    assert type(model.layer4[0]).__name__ == "BasicBlock" and not hasattr(model.layer4[0], "cross_attn")
    visattn.inject_cross(model, input_size=(3, 64, 64))
    with pytest.raises(ValueError, match=r"layer4.0 already attends to a context"):
        visattn.inject_cross(model)


def test_inject_cross_compiles_and_its_maps_are_read():
    model, _ = visattn.inject_cross(_resnet("timm"), query_stage=4, context_stage=2, input_size=(3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x))
    compiled(x).sum().backward()
    maps = block_maps(model, x, patterns="layer4.*cross_attn", queries=[(0.5, 0.5)])
    assert set(maps.self_attention) == {"layer4.0.cross_attn@0.5,0.5"}
    assert maps.self_attention["layer4.0.cross_attn@0.5,0.5"].shape == (2, 64, 64)
