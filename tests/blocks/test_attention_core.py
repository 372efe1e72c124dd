"""Score functions, 2-D positions, masks, heads and dropout of pixel attention, against naive references written
pair by pair from each equation (float64, 1e-10)."""

import copy
import itertools

import pytest
import timm
import torch
import torch.nn.functional as F

import visattn
from tests.conftest import make_trained_like, naive_sinusoid, randomize_parameters
from visattn import PixelSelfAttention
from visattn.blocks.positions import RelativePositionBias2d, grid_positions, sinusoidal_encoding_2d

SOFTMAX_SCORES = ("embedded_gaussian", "dot", "gaussian", "bilinear", "additive", "concat")


def _tokens(t, heads):  # (B, heads*d, H, W) -> (B, heads, H*W, d)
    b = t.shape[0]
    return t.reshape(b, heads, t.shape[1] // heads, -1).transpose(-1, -2)


def naive_block(block: PixelSelfAttention, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """z = x + BN(W_z y), y_i = sum_j softmax_j(s_ij) g_j, with every logit s_ij computed on its own."""
    b, c, h, w = x.shape
    heads, core, s = block.num_heads, block.attn, block.kv_stride

    def pool(t):
        if s == 1:
            return t
        if mask is not None:
            t = t.masked_fill(~mask[:, None], float("-inf"))
        p = F.max_pool2d(t, s, ceil_mode=True)
        return p.masked_fill(p == float("-inf"), 0.0)

    g = _tokens(pool(F.conv2d(x, block.value.weight, block.value.bias)), heads)
    if block.score == "gaussian":
        theta, phi = _tokens(x, heads), _tokens(pool(x), heads)
    else:
        theta = _tokens(F.conv2d(x, block.query.weight, block.query.bias), heads)
        phi = _tokens(pool(F.conv2d(x, block.key.weight, block.key.bias)), heads)
    kh, kw = -(-h // s), -(-w // s)
    q_pos = [(i, j) for i in range(h) for j in range(w)]
    k_pos = [(s * i + (s - 1) / 2, s * j + (s - 1) / 2) for i in range(kh) for j in range(kw)]
    d = theta.shape[-1]
    if core.position == "sinusoidal":
        theta = theta + torch.stack([naive_sinusoid(*p, d) for p in q_pos])
        phi = phi + torch.stack([naive_sinusoid(*p, d) for p in k_pos])
    key_ok = None if mask is None else F.max_pool2d(mask[:, None].double(), s, ceil_mode=True).flatten(1) > 0
    y = torch.zeros(b, heads, h * w, g.shape[-1], dtype=x.dtype)
    for bi, hi in itertools.product(range(b), range(heads)):
        logits = torch.empty(h * w, kh * kw, dtype=x.dtype)
        for i, j in itertools.product(range(h * w), range(kh * kw)):
            qi, kj = theta[bi, hi, i], phi[bi, hi, j]
            if block.score == "embedded_gaussian" or block.score == "gaussian":
                val = qi @ kj * core.scale
            elif block.score == "dot":
                val = qi @ kj
            elif block.score == "bilinear":
                val = qi @ core.bilinear_weight[hi] @ kj
            elif block.score == "additive":
                val = core.additive_weight[hi] @ torch.tanh(qi + kj)
            else:  # concat: W_c acts on the concatenation itself
                val = core.additive_weight[hi] @ torch.tanh(core.concat_proj[hi] @ torch.cat([qi, kj])
                                                           + core.concat_bias[hi])
            if core.position == "relative":
                m = core.relative.max_distance
                dy = max(-m, min(m, round(q_pos[i][0] - k_pos[j][0])))
                dx = max(-m, min(m, round(q_pos[i][1] - k_pos[j][1])))
                val = val + core.relative.table[hi, dy + m, dx + m]
            if key_ok is not None and not key_ok[bi, j]:
                val = torch.tensor(float("-inf"), dtype=x.dtype)
            logits[i, j] = val
        y[bi, hi] = torch.softmax(logits, -1) @ g[bi, hi]
    branch = block.norm(F.conv2d(y.transpose(-1, -2).reshape(b, -1, h, w), block.proj.weight, block.proj.bias))
    return x + (branch if mask is None else branch * mask[:, None])


def _block(score, position=None, heads=2, stride=1, channels=8, **kwargs):
    block = PixelSelfAttention(channels, score=score, num_heads=heads, rd_channels=4 * heads, kv_stride=stride,
                               position=position, max_distance=2, **kwargs).double()
    return randomize_parameters(block).eval()


@pytest.mark.parametrize("score", SOFTMAX_SCORES)
@pytest.mark.parametrize("position", [None, "relative", "sinusoidal"])
@pytest.mark.parametrize(("heads", "stride"), [(1, 1), (2, 2)])
def test_every_score_and_position_matches_its_equation(score, position, heads, stride):
    block = _block(score, position, heads, stride)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(block(x), naive_block(block, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(("score", "position", "masked"), [
    ("additive", None, False), ("embedded_gaussian", "relative", False), ("concat", "relative", False),
    ("bilinear", "sinusoidal", False), ("additive", "relative", True), ("embedded_gaussian", "relative", True)])
def test_gradients_through_the_recomputed_chunks_match_the_equation(score, position, masked, monkeypatch):
    from visattn.blocks import attention_core

    monkeypatch.setattr(attention_core, "_CHUNK_ELEMENTS", 2 * 2 * 30)  # many small query chunks
    block = _block(score, position, heads=2)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64, requires_grad=True)
    mask = None
    if masked:  # the second image padded to the right and below
        mask = torch.ones(2, 5, 6, dtype=torch.bool)
        mask[1, 3:], mask[1, :, 4:] = False, False
    weights = torch.randn(2, 8, 5, 6, dtype=torch.float64)  # a loss that is not just a sum
    params = [x, *block.parameters()]
    grads = torch.autograd.grad((block(x, mask) * weights).sum(), params)
    naive = torch.autograd.grad((naive_block(block, x, mask) * weights).sum(), params, allow_unused=True)
    for got, expected in zip(grads, naive, strict=True):
        torch.testing.assert_close(got, expected if expected is not None else torch.zeros_like(got),
                                   atol=1e-9, rtol=1e-9)


def test_scaled_dot_is_embedded_gaussian_and_bilinear_starts_as_it():
    block = PixelSelfAttention(8, score="scaled_dot")
    assert block.score == "embedded_gaussian" and block.pairwise == "embedded_gaussian"
    assert PixelSelfAttention(8, pairwise="dot").score == "nonlocal_dot"
    assert PixelSelfAttention(8, score="dot").pairwise is None  # the softmax dot is not the paper's
    torch.manual_seed(0)
    scaled = randomize_parameters(PixelSelfAttention(8, score="embedded_gaussian", num_heads=2)).eval()
    bilinear = PixelSelfAttention(8, score="bilinear", num_heads=2).eval()
    state = {k: v for k, v in scaled.state_dict().items()}
    bilinear.load_state_dict(state, strict=False)  # the same projections; W = I / sqrt(d) from its init
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(bilinear(x), scaled(x), atol=1e-6, rtol=1e-5)


# --- positions ----------------------------------------------------------------------------------------------------


def test_relative_bias_clips_offsets_and_is_size_free():
    bias = RelativePositionBias2d(num_heads=1, max_distance=2)
    with torch.no_grad():
        bias.table.copy_(torch.arange(25.0).view(1, 5, 5))  # entry = 5 * (dy + 2) + (dx + 2)
    q, k = grid_positions(1, 8), grid_positions(1, 8)
    row = bias(q, k)[0, 0]  # query (0, 0) against keys x = 0..7: dx = 0, -1, -2, -2, ...
    assert row.tolist() == [12, 11, 10, 10, 10, 10, 10, 10]
    # Pooled keys sit at their windows' centres: stride 2 puts key 0 at x = 0.5, rounded (half to even) to 0.
    assert bias(grid_positions(1, 1), grid_positions(1, 2, 2))[0, 0].tolist() == [12, 10]
    block = PixelSelfAttention(16, position="relative", max_distance=3, kv_stride=2)
    for size in ((8, 8), (13, 21)):  # trained at one size, run at any
        assert block(torch.randn(1, 16, *size)).shape == (1, 16, *size)
    assert block.attn.relative.table.shape == (1, 7, 7)


def test_sinusoidal_encoding_matches_the_formula():
    pos = torch.tensor([[0.0, 0.0], [3.0, 5.0], [1.5, 7.5]], dtype=torch.float64)
    for dim in (4, 6, 7):
        expected = torch.stack([naive_sinusoid(float(y), float(x), dim) for y, x in pos])
        torch.testing.assert_close(sinusoidal_encoding_2d(pos, dim), expected, atol=1e-12, rtol=0)


# --- masks --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", [*SOFTMAX_SCORES, "nonlocal_dot", "nonlocal_concat"])
@pytest.mark.parametrize(("position", "stride"), [(None, 1), ("relative", 2), ("sinusoidal", 1), (None, 3)])
def test_a_padded_image_equals_the_cropped_image_over_its_valid_pixels(score, position, stride):
    if position == "relative" and score.startswith("nonlocal"):
        pytest.skip("relative positions need a softmax score")
    block = _block(score, position, heads=2, stride=stride)
    crops = [(4, 5), (6, 3)]  # each image's real size, top-left in a 6 x 7 canvas
    x = torch.randn(2, 8, 6, 7, dtype=torch.float64)
    mask = torch.zeros(2, 6, 7, dtype=torch.bool)
    for i, (h, w) in enumerate(crops):
        mask[i, :h, :w] = True
    out = block(x, mask)
    for i, (h, w) in enumerate(crops):
        alone = block(x[i:i + 1, :, :h, :w])
        torch.testing.assert_close(out[i:i + 1, :, :h, :w], alone, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out[~mask[:, None].expand_as(x)], x[~mask[:, None].expand_as(x)])  # pass through
    if score in SOFTMAX_SCORES:
        torch.testing.assert_close(out, naive_block(block, x, mask), atol=1e-10, rtol=1e-10)


def test_mask_errors():
    block = PixelSelfAttention(8)
    x = torch.randn(2, 8, 4, 4)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(B, H, W\) = \(2, 4, 4\)"):
        block(x, torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="marks every pixel of an image as padding"):
        block(x, torch.zeros(2, 4, 4, dtype=torch.bool))


def test_masked_query_attention_gives_padded_keys_no_weight():
    block = _block("additive", "relative", heads=2)
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64)
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    mask[:, 2:] = False
    weights = block.query_attention(x, torch.tensor([0, 5]), mask=mask, per_head=True)
    assert weights.shape == (1, 2, 2, 16)
    assert torch.all(weights[..., 8:] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 2, dtype=torch.float64))


# --- heads, dropout, identity -------------------------------------------------------------------------------------


def test_per_head_maps_average_to_the_mean_map():
    block = _block("concat", "sinusoidal", heads=2)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    heads = block.query_attention(x, torch.tensor([3, 12]), per_head=True)
    assert heads.shape == (2, 2, 2, 25)
    torch.testing.assert_close(heads.mean(1), block.query_attention(x, torch.tensor([3, 12])))
    assert not torch.allclose(heads[:, 0], heads[:, 1])  # the heads differ


@pytest.mark.parametrize("score", ["embedded_gaussian", "additive"])  # the fused kernel and the chunks
def test_attention_dropout_in_training_only(score):
    block = randomize_parameters(PixelSelfAttention(8, score=score, num_heads=2, attn_drop=0.5))
    x = torch.randn(2, 8, 5, 5)
    block.eval()
    torch.testing.assert_close(block(x), block(x))
    reference = copy.deepcopy(block)
    reference.attn.attn_drop = 0.0
    block.train()
    reference.train()
    dropped, again, plain = block(x), block(x), reference(x)
    assert not torch.allclose(dropped, again) and not torch.allclose(dropped, plain)


@pytest.mark.parametrize("kwargs", [dict(score="additive"), dict(score="concat", position="relative"),
                                    dict(score="bilinear", position="sinusoidal", num_heads=2),
                                    dict(score="dot", attn_drop=0.1)])
def test_identity_injection_holds_with_every_option(kwargs):
    model = make_trained_like(timm.create_model("resnet18", num_classes=5, layers=[1, 1, 1, 1])).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    model, report = visattn.inject(model, "nonlocal", stages=[3, 4], init="identity", **kwargs)
    assert len(report.sites) == 2
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), before, atol=0, rtol=0)


# --- memory: no N x N matrix kept for backward ---------------------------------------------------------------------


@pytest.mark.parametrize(("score", "position"), [("additive", None), ("concat", None),
                                                 ("embedded_gaussian", "relative"), ("bilinear", None)])
def test_no_pairwise_matrix_is_saved_for_backward(score, position):
    block = PixelSelfAttention(32, score=score, position=position, rd_channels=8)
    x = torch.randn(2, 32, 24, 24, requires_grad=True)  # N = 576: an N x N matrix per image has 331,776 entries
    largest = 0

    def pack(t):
        nonlocal largest
        largest = max(largest, t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = block(x)  # what forward keeps for backward (backward's own recomputation frees each chunk)
    y.sum().backward()
    assert largest < 576 * 576, largest
    assert x.grad is not None and all(p.grad is not None for p in block.parameters() if p.requires_grad)


@pytest.mark.parametrize("kwargs", [dict(score="additive"), dict(position="relative")])
def test_recomputed_chunks_under_bf16_autocast_follow_the_float32_gradients(kwargs):
    # The flash-style paths keep a float32 log-sum-exp and recompute bf16 logits in backward: within bf16 rounding.
    torch.manual_seed(0)
    block = PixelSelfAttention(32, num_heads=2, rd_channels=16, **kwargs).train()
    randomize_parameters(block)
    x = torch.randn(2, 32, 12, 12, requires_grad=True)
    block(x).square().sum().backward()
    reference, x.grad = x.grad.clone(), None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    y.float().square().sum().backward()
    assert (x.grad - reference).norm() / reference.norm() < 0.03
