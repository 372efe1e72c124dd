"""PixelSelfAttention against a naive O(N^2) reference written straight from the paper's equations."""

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile

from tests.conftest import randomize_parameters
from visattn import PixelSelfAttention
from visattn.blocks.self_attention import PAIRWISE_FUNCTIONS


def naive_non_local(block: PixelSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """z = x + BN(W_z y), y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j), with the N x N matrix built explicitly."""
    b, c, h, w = x.shape
    heads = block.num_heads

    def tokens(t):  # (B, heads*d, H', W') -> (B, heads, N', d)
        return t.reshape(b, heads, t.shape[1] // heads, -1).transpose(-1, -2)

    pool = (lambda t: F.max_pool2d(t, block.pool.kernel_size, ceil_mode=True)) if hasattr(block.pool, "kernel_size") \
        else (lambda t: t)
    g = tokens(pool(F.conv2d(x, block.value.weight, block.value.bias)))
    if block.pairwise == "gaussian":
        theta, phi = tokens(x), tokens(pool(x))
    else:
        theta = tokens(F.conv2d(x, block.query.weight, block.query.bias))
        phi = tokens(pool(F.conv2d(x, block.key.weight, block.key.bias)))
    n_kv = phi.shape[-2]
    if block.pairwise in ("embedded_gaussian", "gaussian"):
        f = torch.softmax(theta @ phi.transpose(-1, -2) * block.scale, dim=-1)
    elif block.pairwise == "dot":
        f = theta @ phi.transpose(-1, -2) / n_kv
    else:  # concat: ReLU(w_f^T [theta_i, phi_j]) / N, built pair by pair
        d = theta.shape[-1]
        pairs = torch.cat([theta[..., :, None, :].expand(-1, -1, -1, n_kv, -1),
                           phi[..., None, :, :].expand(-1, -1, theta.shape[-2], -1, -1)], dim=-1)
        f = torch.relu((pairs * block.concat_weight[None, :, None, None, :]).sum(-1)) / n_kv
        assert pairs.shape[-1] == 2 * d
    y = (f @ g).transpose(-1, -2).reshape(b, -1, h, w)
    return x + block.norm(F.conv2d(y, block.proj.weight, block.proj.bias))


@pytest.mark.parametrize("pairwise", PAIRWISE_FUNCTIONS)
@pytest.mark.parametrize(("heads", "stride"), [(1, 1), (2, 1), (4, 2), (2, 3)])
def test_matches_naive_reference(pairwise, heads, stride):
    block = PixelSelfAttention(16, pairwise=pairwise, num_heads=heads, rd_channels=8, kv_stride=stride).double()
    randomize_parameters(block).eval()
    x = torch.randn(2, 16, 7, 5, dtype=torch.float64)
    torch.testing.assert_close(block(x), naive_non_local(block, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("pairwise", PAIRWISE_FUNCTIONS)
def test_gradients_match_naive_reference(pairwise):
    block = randomize_parameters(PixelSelfAttention(12, pairwise=pairwise, num_heads=2, rd_channels=8)).double()
    x = torch.randn(2, 12, 5, 6, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 12, 5, 6, dtype=torch.float64)
    (grad_fast,) = torch.autograd.grad((block(x) * upstream).sum(), x)
    (grad_ref,) = torch.autograd.grad((naive_non_local(block, x) * upstream).sum(), x)
    torch.testing.assert_close(grad_fast, grad_ref, atol=1e-9, rtol=1e-9)


def test_paper_unscaled_softmax_with_scale_one():
    block = randomize_parameters(PixelSelfAttention(8, scale=1.0)).double().eval()
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64)
    assert block.scale == 1.0
    torch.testing.assert_close(block(x), naive_non_local(block, x))


def test_scaled_dot_alias():
    assert PixelSelfAttention(8, pairwise="scaled_dot").pairwise == "embedded_gaussian"


def test_identity_at_init_even_with_random_embeddings():
    block = PixelSelfAttention(16)
    with torch.no_grad():
        for conv in (block.query, block.key, block.value, block.proj):
            conv.weight.normal_()
    x = torch.randn(2, 16, 5, 5)
    assert torch.equal(block.eval()(x), x)


def test_identity_without_norm_zeroes_proj():
    block = PixelSelfAttention(16, norm_layer=None)
    x = torch.randn(2, 16, 5, 5)
    assert torch.equal(block(x), x)


def test_identity_with_affine_free_norm():
    block = PixelSelfAttention(16, norm_layer="instancenorm")
    x = torch.randn(2, 16, 5, 5)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("kwargs", [{}, {"pairwise": "gaussian"}, {"pairwise": "gaussian", "num_heads": 2},
                                    {"rd_channels": 8, "num_heads": 8}], ids=["default", "gaussian", "gaussian-2h",
                                                                              "head-dim-1"])
def test_cpu_uses_fused_flash_kernel_not_math_path(kwargs):
    # The fused kernel needs contiguous q/k/v with unit stride and one head dim; otherwise PyTorch silently falls back
    # to the O(N^2) math path (gaussian: q/k have C/h columns, v C_inner/h; head dim 1: a "contiguous" stride of N).
    block = randomize_parameters(PixelSelfAttention(32, **kwargs)).train()
    x = torch.randn(1, 32, 16, 16, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        block(x).sum().backward()
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in ops
    assert "aten::_scaled_dot_product_attention_math" not in ops


@pytest.mark.slow
def test_runs_at_128x128_with_backward():
    # 16,384 pixels: a materialised attention matrix would be 1 GiB per image in float32.
    block = randomize_parameters(PixelSelfAttention(64, rd_channels=32)).train()
    x = torch.randn(1, 64, 128, 128, requires_grad=True)
    y = block(x)
    y.mean().backward()
    assert y.shape == x.shape and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(pairwise="cosine"), ValueError, "pairwise must be one of"),
    (dict(num_heads=0), ValueError, "num_heads must be a positive int"),
    (dict(kv_stride=1.5), ValueError, "kv_stride must be a positive int"),
    (dict(pairwise="dot", scale=0.1), ValueError, "scale only applies"),
    (dict(scale="0.5"), ValueError, r"scale must be a finite number > 0 \(or None for the default\), got '0.5'"),
    (dict(scale=0.0), ValueError, "scale must be a finite number > 0"),
    (dict(scale=float("inf")), ValueError, "scale must be a finite number > 0"),
    (dict(rd_channels=10, num_heads=4), ValueError, "divisible by num_heads"),
    (dict(pairwise="gaussian", num_heads=3), ValueError, "must divide them"),
    (dict(norm_layer="layernorm"), ValueError, "norm_layer='layernorm'"),
    (dict(score="cosine"), ValueError, r"score must be one of \('embedded_gaussian', 'dot', .*'nonlocal_concat'\)"),
    (dict(score="dot", pairwise="dot"), ValueError, "give score or pairwise, not both"),
    (dict(score="additive", scale=0.5), ValueError, "scale only applies to the dot-product scores"),
    (dict(score="nonlocal_dot", position="relative"), ValueError, "score='nonlocal_dot' has no softmax"),
    (dict(position="absolute"), ValueError, r"position must be one of \(None, 'relative', 'sinusoidal'\)"),
    (dict(position="relative", max_distance=0), ValueError, "max_distance must be a positive int, got 0"),
    (dict(attn_drop=1.0), ValueError, r"attn_drop must be a probability in \[0, 1\), got 1.0"),
])
def test_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        PixelSelfAttention(16, **kwargs)


def test_embedding_width_rounded_up_to_heads():
    assert PixelSelfAttention(40, rd_ratio=1 / 8, rd_divisor=1, num_heads=3).inner_channels % 3 == 0


@settings(max_examples=30, deadline=None)
@given(
    pairwise=st.sampled_from(PAIRWISE_FUNCTIONS),
    heads=st.sampled_from([1, 2]),
    stride=st.integers(1, 3),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
)
def test_property_matches_reference_over_shapes(pairwise, heads, stride, height, width):
    block = PixelSelfAttention(8, pairwise=pairwise, num_heads=heads, rd_channels=4, kv_stride=stride).double()
    randomize_parameters(block).eval()
    x = torch.randn(2, 8, height, width, dtype=torch.float64)
    torch.testing.assert_close(block(x), naive_non_local(block, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("pairwise", PAIRWISE_FUNCTIONS)
def test_float16_identity_and_no_overflow_on_large_activations(pairwise):
    # Post-ReLU maps of magnitude ~30: the unnormalised sums over N keys (dot: k^T v, concat: the ReLU sums) exceed
    # float16's 65504 although the normalised result is small, and a zero-initialised norm times inf is NaN.
    torch.manual_seed(0)
    block = PixelSelfAttention(256, pairwise=pairwise).eval()
    half = copy.deepcopy(block).half()
    x = torch.relu(torch.randn(1, 256, 32, 32)) * 30
    assert torch.equal(half(x.half()), x.half())  # still an exact identity at init
    with torch.no_grad():
        reference = block.attn(*block.qkv(x))
        attended = half.attn(*half.qkv(x.half())).float()
    assert torch.isfinite(attended).all()
    if pairwise in ("dot", "concat"):  # the softmax ones are near one-hot at these logits: fp16 may pick another key
        torch.testing.assert_close(attended, reference, rtol=2e-2, atol=1e-2 * float(reference.abs().max()))
