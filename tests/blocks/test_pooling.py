"""The fused pooling ops equal PyTorch's own reductions, on every layout their fast paths take."""

from __future__ import annotations

import pytest
import torch

from visattn.blocks.pooling import max_with_index, mean_max, scale_channels


def _positions_view(x: torch.Tensor) -> torch.Tensor:
    """(B, H*W, C): the free view of a channels_last map that ChannelAttention and the fused CBAM pool over."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("dim", [1, 2])
def test_max_with_index_equals_torch_max(dtype: torch.dtype, dim: int) -> None:
    x = torch.randn(3, 10, 7, 5).to(dtype).contiguous(memory_format=torch.channels_last)
    x[0, 2] = 0.0  # a constant channel: every position ties, the first one must win
    x[1, :, 3, 1] = 7.0  # a position that ties across all channels
    x[2, 4, 1, 1] = float("nan")  # NaN is the maximum, as in torch.max
    flat = _positions_view(x)
    for t in (flat, flat.contiguous().transpose(1, 2).contiguous().transpose(1, 2)):  # fast path and strided one
        peak, index = max_with_index(t, dim)
        expected_peak, expected_index = t.max(dim, keepdim=True)
        torch.testing.assert_close(peak, expected_peak, equal_nan=True, rtol=0, atol=0)
        assert torch.equal(index, expected_index)


def test_mean_max_gradients_match_autograd() -> None:
    x = torch.randn(2, 6, 5, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    for view, dim in ((_positions_view, 1), (lambda t: t, 1), (lambda t: t.flatten(2), 2)):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        mean, peak = mean_max(view(a), dim)
        ref_mean, ref_peak = view(b).mean(dim, keepdim=True), view(b).amax(dim, keepdim=True)  # no ties: same grads
        torch.testing.assert_close((mean, peak), (ref_mean, ref_peak))
        g_mean, g_peak = torch.randn_like(mean), torch.randn_like(peak)
        torch.autograd.backward((mean, peak), (g_mean, g_peak))
        torch.autograd.backward((ref_mean, ref_peak), (g_mean, g_peak))
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("dim", [1, 2, -2])
def test_max_with_index_over_a_middle_dim_of_a_contiguous_map(dtype: torch.dtype, dim: int) -> None:
    x = torch.randn(3, 6, 5, 4).to(dtype)
    x[0, :, 1, 2] = 0.0  # ties across channels: the first wins
    x[1, 3, 2, 2] = float("nan")
    peak, index = max_with_index(x, dim)
    expected_peak, expected_index = x.max(dim, keepdim=True)
    torch.testing.assert_close(peak, expected_peak, equal_nan=True, rtol=0, atol=0)
    assert torch.equal(index, expected_index)


@pytest.mark.parametrize("shape, dim", [((0, 4, 3, 3), 1), ((2, 0, 3, 3), 2), ((2, 4, 0, 3), 1)])
def test_max_with_index_on_empty_tensors_matches_torch_max(shape: tuple[int, ...], dim: int) -> None:
    x = torch.randn(shape)
    if x.shape[dim] == 0:  # torch.max itself refuses an empty reduction: so must we
        with pytest.raises((IndexError, RuntimeError)):
            max_with_index(x, dim)
        return
    peak, index = max_with_index(x, dim)
    expected = x.max(dim, keepdim=True)
    assert peak.shape == expected.values.shape and index.shape == expected.indices.shape



def test_float64_means_accumulate_in_float64() -> None:
    # An offset of 1000 leaves float32 ~6e-5 of absolute precision: float64 inputs must not pass through it.
    from visattn.blocks import SqueezeExcite

    x = torch.randn(2, 8, 16, 16, dtype=torch.float64) + 1000
    mean, _ = mean_max(x.flatten(2), 2)
    torch.testing.assert_close(mean.squeeze(2), x.flatten(2).mean(2), rtol=0, atol=1e-10)
    se = SqueezeExcite(8).double()
    torch.testing.assert_close(se.channel_weights(x), se.gate(se.fc2(se.act(se.fc1(x.mean((2, 3)))))),
                               rtol=0, atol=1e-10)


def test_gradients_of_gradients() -> None:
    # Gradient penalties and nested torch.func.grad differentiate the backward passes themselves.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: mean_max(t, 1), (x,))
    assert torch.autograd.gradgradcheck(lambda t, v: scale_channels(t, v), (x, w))
    # Nested torch.func.grad against the same function in plain torch (the mean's second derivative is 0, the
    # product's is not): a backward treated as constant would give 0 here.
    def ours(t):
        mean, peak = mean_max(t, 1)
        return (scale_channels(t, mean.squeeze(1).mean((1, 2))[:, None].expand(2, 3)) * peak).sum()

    def plain(t):
        mean, peak = t.mean(1, keepdim=True), t.amax(1, keepdim=True)
        return (t * mean.squeeze(1).mean((1, 2))[:, None, None, None] * peak).sum()

    def hessian_times(f, direction):
        return torch.func.grad(lambda t: (torch.func.grad(f)(t) * direction).sum())(x.detach())

    direction = torch.randn_like(x)
    expected = hessian_times(plain, direction)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(hessian_times(ours, direction), expected)
    # Only the max used, per-sample under vmap, and a Jacobian: the scatter into the gradient must be out of place.
    per_sample = torch.func.vmap(torch.func.grad(lambda t: mean_max(t[None], 1)[1].square().sum()))(x.detach())
    torch.testing.assert_close(per_sample, 2 * x.detach().amax(1, keepdim=True) * (x == x.amax(1, keepdim=True)))
    jacobian = torch.func.jacrev(lambda t: mean_max(t, 1)[1].sum())(x.detach())
    torch.testing.assert_close(jacobian, (x == x.amax(1, keepdim=True)).double())
