"""CBAM's channel-then-spatial gating as one autograd function that keeps only ``x`` and small tensors for backward.

Composed from modules, CBAM saves two feature-map-sized tensors per block for backward (its input ``x`` for the
channel gate and ``x * M_c`` for the spatial gate) and its backward makes several full passes that autograd then
accumulates into ``x``'s gradient. On CPU, where these blocks are memory-bound, that allocation and traffic is most of
CBAM's cost inside a ResNet. Here the forward pass runs without recording, saves ``x``, the two gates and the small
descriptors, and the backward pass recomputes ``x * M_c`` once and writes ``x``'s gradient in place. The gates' own
small networks (MLP, 7x7 conv, norm) are re-run under autograd on their tiny inputs to get their gradients, so any
activation, gate or ``identity_init`` blend works unchanged.

Used by :class:`~visattn.blocks.cbam.CBAM` for ``order='channel_first'`` when it trains without autocast; the
composed modules remain the reference (the tests compare the two to float64 precision).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:
    from .cbam import CBAM

__all__ = ["fused_cbam_supported", "fused_channel_first_cbam"]


def fused_cbam_supported(block: CBAM, x: torch.Tensor) -> bool:
    """True when the fused path applies: channel-first order, training with autograd on, no autocast, a 4-D input of
    at least ``block.fused_min_numel`` elements, and a spatial norm that is BatchNorm2d or none (its batch statistics
    are recomputed exactly in backward)."""
    norm = block.spatial.norm
    return (block.order == "channel_first" and torch.is_grad_enabled() and x.ndim == 4
            and x.numel() >= block.fused_min_numel
            and not torch.is_autocast_enabled(x.device.type)
            and (type(norm) is nn.Identity or type(norm) is nn.BatchNorm2d))


def _channel_gate(block: CBAM, pooled: torch.Tensor) -> torch.Tensor:
    ca = block.channel
    return ca.gate(ca.fc2(ca.act(ca.fc1(pooled))).sum(dim=1))


def _spatial_gate(block: CBAM, descriptors: torch.Tensor, *, update_stats: bool) -> torch.Tensor:
    sa = block.spatial
    z = sa.conv(descriptors)
    norm = sa.norm
    if isinstance(norm, nn.BatchNorm2d) and norm.training and not update_stats:
        # The same batch statistics as the forward pass, without counting this batch in the running ones twice.
        z = F.batch_norm(z, None, None, norm.weight, norm.bias, training=True, eps=norm.eps)
    else:
        z = norm(z)
    return sa.gate(z)


def _positions_first(t: torch.Tensor) -> bool:
    """True for a channels_last tensor, whose ``(B, H*W, C)`` view is free (an NCHW one has a free ``(B, C, H*W)``)."""
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _bpc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1])


def _bcp(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1], -1)


def _sum_channels(t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_c t[b, c, p] * weights[b, c]``, shape ``(B, H*W)``, as one batched matmul over a free view of ``t``."""
    weights = weights.to(t.dtype)
    if _positions_first(t):
        return torch.bmm(_bpc(t), weights[:, :, None]).squeeze(2)
    return torch.bmm(weights[:, None, :], _bcp(t)).squeeze(1)


def _sum_positions(t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_p t[b, c, p] * weights[b, p]``, shape ``(B, C)``, as one batched matmul over a free view of ``t``."""
    weights = weights.reshape(t.shape[0], -1).to(t.dtype)
    if _positions_first(t):
        return torch.bmm(weights[:, None, :], _bpc(t)).squeeze(1)
    return torch.bmm(_bcp(t), weights[:, :, None]).squeeze(2)


def _add_at_positions(grad: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    """``grad[b, c, index[b, c]] += values[b, c]`` with ``index`` a flat position in ``H*W``, in place."""
    b, c, h, w = grad.shape
    if grad.is_contiguous():
        grad.view(b, c, h * w).scatter_add_(2, index[:, :, None], values[:, :, None].to(grad.dtype))
        return
    if _positions_first(grad):
        _bpc(grad).scatter_add_(1, index[:, None, :], values[:, None, :].to(grad.dtype))
        return
    bi, ci = (t.reshape(-1) for t in torch.meshgrid(torch.arange(b, device=grad.device),
                                                      torch.arange(c, device=grad.device), indexing="ij"))
    flat = index.reshape(-1)
    grad.index_put_((bi, ci, flat // w, flat % w), values.reshape(-1).to(grad.dtype), accumulate=True)


class _ChannelFirstCBAM(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, block: CBAM, *params: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        positions = 1 if _positions_first(x) else 2  # pool over H*W in whichever view is free
        flat = _bpc(x) if positions == 1 else _bcp(x)
        pooled_avg = flat.mean(positions)
        pooled_max, spatial_index = flat.max(positions)
        pooled = torch.stack((pooled_avg, pooled_max), dim=1)  # (B, 2, C)
        channel = _channel_gate(block, pooled)  # (B, C)
        out = x * channel[:, :, None, None]  # x1 = M_c(x) * x; becomes the output in place below
        mean = out.mean(1, keepdim=True)
        peak, channel_index = out.max(1, keepdim=True)
        descriptors = torch.cat((mean, peak), dim=1).contiguous(memory_format=torch.channels_last)
        spatial = _spatial_gate(block, descriptors, update_stats=True)  # (B, 1, H, W)
        out.mul_(spatial)
        ctx.block = block
        ctx.save_for_backward(x, channel, spatial, pooled, descriptors, spatial_index, channel_index)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, channel, spatial, pooled, descriptors, spatial_index, channel_index = ctx.saved_tensors
        block: CBAM = ctx.block
        b, c, h, w = x.shape
        params = list(block.parameters())
        trainable = [p for p in params if p.requires_grad]

        # grad_out * x feeds both gates' gradients through batched matmuls, so x * M_c is never rebuilt:
        #   dL/dM_s[b,h,w] = sum_c grad_out * x * M_c      dL/dM_c[b,c] = sum_hw dL/dx1 * x
        # Its buffer is then reused for dL/dx: a full-size allocation costs page faults on CPU (glibc maps
        # tensors above 32 MB afresh every time).
        buffer = grad_out * x
        grad_spatial = _sum_channels(buffer, channel).view(b, 1, h, w)
        with torch.enable_grad():
            desc = descriptors.detach().requires_grad_()
            gate = _spatial_gate(block, desc, update_stats=False)
        spatial_params = [p for p in block.spatial.parameters() if p.requires_grad]
        grads = torch.autograd.grad(gate, [desc, *spatial_params], grad_spatial)
        grad_desc, spatial_param_grads = grads[0], grads[1:]
        grad_mean = grad_desc[:, :1] * (1.0 / c)  # (B, 1, H, W): the channel mean's share, the same for every c
        grad_peak = grad_desc[:, 1:]  # (B, 1, H, W): to the arg-max channel of each position

        # dL/dx1 = grad_out * M_s + grad_mean (+ grad_peak at the arg-max channels)
        grad_channel = _sum_positions(buffer, spatial) + _sum_positions(x, grad_mean)
        peak_x = x.gather(1, channel_index)  # x at each position's arg-max channel
        grad_channel.scatter_add_(1, channel_index.reshape(b, h * w), (peak_x * grad_peak).reshape(b, h * w))
        with torch.enable_grad():
            pooled_leaf = pooled.detach().requires_grad_()
            gate_c = _channel_gate(block, pooled_leaf)
        channel_params = [p for p in block.channel.parameters() if p.requires_grad]
        grads = torch.autograd.grad(gate_c, [pooled_leaf, *channel_params], grad_channel)
        grad_pooled, channel_param_grads = grads[0], grads[1:]

        # dL/dx = dL/dx1 * M_c + the channel gate's pooling terms, written into the buffer in place.
        grad_x = torch.mul(grad_out, spatial, out=buffer)
        grad_x += grad_mean
        grad_x.scatter_add_(1, channel_index, grad_peak.to(grad_x.dtype))
        grad_x.mul_(channel[:, :, None, None])
        grad_x += (grad_pooled[:, 0] * (1.0 / (h * w)))[:, :, None, None]
        _add_at_positions(grad_x, spatial_index, grad_pooled[:, 1])

        by_param = dict(zip(channel_params + spatial_params, channel_param_grads + spatial_param_grads, strict=True))
        assert len(by_param) == len(trainable)
        return (grad_x, None, *(by_param.get(p) for p in params))


def fused_channel_first_cbam(block: CBAM, x: torch.Tensor) -> torch.Tensor:
    """``M_s(x1) * x1`` with ``x1 = M_c(x) * x``, as one autograd node (see the module docstring)."""
    return _ChannelFirstCBAM.apply(x, block, *block.parameters())
