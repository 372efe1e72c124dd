"""CBAM's channel-then-spatial gating as one autograd function that keeps only ``x`` and small tensors for backward.

Composed from modules, CBAM saves two feature-map-sized tensors per block for backward (its input ``x`` for the
channel gate and ``x * M_c`` for the spatial gate) and its backward makes several full passes that autograd then
accumulates into ``x``'s gradient. On CPU, where these blocks are memory-bound, that allocation and traffic is most of
CBAM's cost inside a ResNet. Here the forward pass saves ``x``, the two gates and the arg-max indices, and the backward
pass never rebuilds ``x * M_c`` and writes ``x``'s gradient into one buffer in place. The gates' own small networks
(MLP, 7x7 conv, norm) run under autograd on their tiny inputs in the forward pass, and backward differentiates those
small graphs, so any activation, gate or ``identity_init`` blend works unchanged and nothing runs twice.

Used by :class:`~visattn.blocks.cbam.CBAM` for ``order='channel_first'`` when autograd is on, outside autocast and
``torch.compile``; the composed modules remain the reference (the tests compare the two to float64 precision).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .pooling import max_with_index

if TYPE_CHECKING:
    from .cbam import CBAM

__all__ = ["fused_cbam_supported", "fused_channel_first_cbam"]

_CHUNK_ELEMENTS = 1 << 19  # 2 MB of float32 per temporary in _sum_positions


def fused_cbam_supported(block: CBAM, x: torch.Tensor) -> bool:
    """True when the fused path applies: channel-first order, autograd on (in train or eval mode), eager execution,
    no autocast, a 4-D input of at least ``block.fused_min_numel`` elements, and a spatial norm that is BatchNorm2d or
    none (the two the tests check against CBAM's equations).

    Under ``torch.compile`` the composed modules run instead: the compiler fuses them itself, and this function's
    backward differentiates graphs recorded in forward with ``retain_graph=True``, which compiled graphs refuse. Inside
    torch.func transforms the composed modules run too.
    """
    norm = block.spatial.norm
    if isinstance(x, torch.fx.Proxy):  # an FX tracer records the composed modules: the same maths, traceable
        return False
    return (block.order == "channel_first" and torch.is_grad_enabled() and x.ndim == 4
            and x.numel() >= max(block.fused_min_numel, 1)  # an empty batch gains nothing from fusing
            and not torch.compiler.is_compiling()
            and not _functorch_active()
            and not torch.is_autocast_enabled(x.device.type)
            and (type(norm) is nn.Identity or type(norm) is nn.BatchNorm2d))


def _functorch_active() -> bool:
    """True inside a torch.func transform (vmap, grad, jacrev, ...): the fused node's backward differentiates graphs
    recorded in forward, which those transforms cannot follow, so the composed modules run there."""
    peek = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)  # no public query yet
    return peek is not None and peek() is not None


def _channel_gate(block: CBAM, pooled: torch.Tensor) -> torch.Tensor:
    ca = block.channel
    return ca.gate(ca.fc2(ca.act(ca.fc1(pooled))).sum(dim=1))


def _spatial_gate(block: CBAM, descriptors: torch.Tensor) -> torch.Tensor:
    sa = block.spatial
    return sa.gate(sa.norm(sa.conv(descriptors)))


def _small_graph(gate: Callable[[CBAM, torch.Tensor], torch.Tensor], block: CBAM,
                 inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``gate(block, inputs)`` recorded by autograd from a leaf copy of ``inputs``: returns (leaf, output)."""
    with torch.enable_grad():
        leaf = inputs.detach().requires_grad_()
        return leaf, gate(block, leaf)


def _small_graph_grads(leaf: torch.Tensor, output: torch.Tensor, params: list[torch.Tensor],
                       grad_output: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Gradients of a :func:`_small_graph` w.r.t. its leaf and ``params``, the latter keyed by ``id``."""
    # retain_graph: a caller's backward(retain_graph=True) may run this node's backward again.
    grads = torch.autograd.grad(output, [leaf, *params], grad_output, retain_graph=True)
    return grads[0], {id(p): g for p, g in zip(params, grads[1:], strict=True)}


def _trainable(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


def _positions_first(t: torch.Tensor) -> bool:
    """True for a channels_last tensor, whose ``(B, H*W, C)`` view is free (an NCHW one has a free ``(B, C, H*W)``)."""
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _bpc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1])


def _bcp(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1], -1)


def _sum_positions(t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_p t[b, c, p] * weights[b, p]``, shape ``(B, C)``, over a free view of ``t``."""
    b = t.shape[0]
    weights = weights.reshape(b, -1).to(t.dtype)
    if _positions_first(t):
        return torch.bmm(weights[:, None, :], _bpc(t)).squeeze(1)
    # NCHW: one (C, H*W) mat-vec per image is ~3x slower on CPU than multiplying and summing a few images at a time,
    # in chunks small enough to stay in cache and off the page-faulting large-allocation path (measured).
    view, out = _bcp(t), t.new_empty(b, t.shape[1])
    step = max(1, _CHUNK_ELEMENTS // t[0].numel())
    for i in range(0, b, step):
        torch.sum(view[i:i + step] * weights[i:i + step, None, :], 2, out=out[i:i + step])
    return out


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
        positions = 1 if _positions_first(x) else 2  # pool over H*W in whichever view is free
        flat = _bpc(x) if positions == 1 else _bcp(x)
        pooled_max, spatial_index = (t.squeeze(positions) for t in max_with_index(flat, positions))
        pooled = torch.stack((flat.mean(positions), pooled_max), dim=1)  # (B, 2, C)
        pooled_leaf, channel_graph = _small_graph(_channel_gate, block, pooled)
        channel = channel_graph.detach()  # (B, C)
        out = x * channel[:, :, None, None]  # x1 = M_c(x) * x; becomes the output in place below
        peak, channel_index = max_with_index(out, 1)
        descriptors = torch.cat((out.mean(1, keepdim=True), peak), dim=1).contiguous(memory_format=torch.channels_last)
        desc_leaf, spatial_graph = _small_graph(_spatial_gate, block, descriptors)  # BatchNorm counts this batch once
        spatial = spatial_graph.detach()  # (B, 1, H, W)
        out.mul_(spatial)
        # The parameters as they are now: torch.func.functional_call swaps a module's parameters only for the
        # duration of the forward call, and backward must differentiate the tensors the small graphs used.
        ctx.params = params
        ctx.gate_params = (_trainable(block.channel), _trainable(block.spatial))
        ctx.graphs = (pooled_leaf, channel_graph, desc_leaf, spatial_graph)
        ctx.save_for_backward(x, channel, spatial, spatial_index, channel_index)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, channel, spatial, spatial_index, channel_index = ctx.saved_tensors
        pooled_leaf, channel_graph, desc_leaf, spatial_graph = ctx.graphs
        b, c, h, w = x.shape

        # One full-size buffer, grad_out * x, feeds both gates' gradients, so x * M_c is never rebuilt:
        #   dL/dM_c[b,c] gets sum_hw grad_out * x * M_s      dL/dM_s[b,h,w] = sum_c grad_out * x * M_c
        # and is then reused for dL/dx: a full-size allocation costs page faults on CPU (glibc maps tensors
        # above 32 MB afresh every time).
        buffer = grad_out * x
        grad_channel = _sum_positions(buffer, spatial)
        buffer.mul_(channel[:, :, None, None])
        grad_spatial = buffer.sum(1, keepdim=True)  # a reduction over C: cheaper than a batched mat-vec here
        channel_params, spatial_params = ctx.gate_params
        grad_desc, spatial_grads = _small_graph_grads(desc_leaf, spatial_graph, spatial_params, grad_spatial)
        grad_mean = grad_desc[:, :1] * (1.0 / c)  # (B, 1, H, W): the channel mean's share, the same for every c
        grad_peak = grad_desc[:, 1:]  # (B, 1, H, W): to the arg-max channel of each position

        # dL/dx1 = grad_out * M_s + grad_mean (+ grad_peak at the arg-max channels); dL/dM_c = sum_hw dL/dx1 * x
        grad_channel += _sum_positions(x, grad_mean)
        peak_x = x.gather(1, channel_index)  # x at each position's arg-max channel
        grad_channel.scatter_add_(1, channel_index.reshape(b, h * w), (peak_x * grad_peak).reshape(b, h * w))
        grad_pooled, channel_grads = _small_graph_grads(pooled_leaf, channel_graph, channel_params, grad_channel)

        # dL/dx = dL/dx1 * M_c + the channel gate's pooling terms, written into the buffer in place.
        grad_x = torch.mul(grad_out, spatial, out=buffer)
        grad_x += grad_mean
        grad_x.scatter_add_(1, channel_index, grad_peak.to(grad_x.dtype))
        grad_x.mul_(channel[:, :, None, None])
        grad_x += (grad_pooled[:, 0] * (1.0 / (h * w)))[:, :, None, None]
        _add_at_positions(grad_x, spatial_index, grad_pooled[:, 1])

        by_param = {**channel_grads, **spatial_grads}
        return (grad_x, None, *(by_param.get(id(p)) for p in ctx.params))


def fused_channel_first_cbam(block: CBAM, x: torch.Tensor) -> torch.Tensor:
    """``M_s(x1) * x1`` with ``x1 = M_c(x) * x``, as one autograd node (see the module docstring)."""
    return _ChannelFirstCBAM.apply(x, block, *block.parameters())
