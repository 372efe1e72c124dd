"""Cross-scale attention in an existing ResNet: one stage's output attends to an earlier stage's output.

``inject_cross(model, query_stage=4, context_stage=3)`` gives ``layer4`` a :class:`~visattn.CrossAttention2d` child,
``layer4.cross_attn``, applied to the stage's output with ``layer3``'s output as the context. The stage's class is
swapped for a subclass of itself whose ``forward`` adds that step (the same technique ``inject`` uses to give
torchvision blocks an attention slot), so no original module is replaced and every original state_dict key keeps
its name. The context is the stage's own input when ``context_stage = query_stage - 1``; an earlier stage's output is
kept by a forward hook for the duration of one forward pass. The block's output branch starts at zero, so the model
computes exactly what it computed before, which is checked on a probe as ``inject`` checks it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from timm.layers import register_notrace_module
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..blocks.cross_attention import CrossAttention2d
from ..utils import count_flops, count_params, eval_mode, model_device_dtype
from .inject import Injected, find_residual_blocks, probe_input_size, residual_out_channels, tensor_leaves
from .inject_report import InjectionReport, InjectionSite
from .weights import mark_injected

__all__ = ["inject_cross", "CrossAttendingStage"]

_IDENTITY_RTOL = 1e-5


@register_notrace_module  # its context comes from a hook or its input: one opaque call for FX tracing
class CrossAttendingStage(nn.Sequential):
    """A ResNet stage (``nn.Sequential`` of residual blocks) followed by cross-attention to a context map.

    Instances are made by :func:`inject_cross` from an existing stage by swapping its class; ``cross_attn`` is the
    block and ``context_stage`` the earlier stage it reads (None: the stage's own input).
    """

    cross_attn: CrossAttention2d
    _context: torch.Tensor | None
    _context_from_input: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for name, module in self._modules.items():
            if name != "cross_attn":
                y = module(y)
        if self._context_from_input:
            context = x
        else:
            context, self._context = self._context, None  # one pass's context, never a stale one
            if context is None:
                raise RuntimeError("the context stage did not run before this stage in this forward pass")
        return self.cross_attn(y, context)


def _keep_context(stage: CrossAttendingStage) -> Any:
    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        stage._context = output
    return hook


def inject_cross(
        model: nn.Module,
        query_stage: int = 4,
        context_stage: int = 3,
        *,
        init: Literal["identity", "default"] = "identity",
        input_size: tuple[int, int, int] | None = None,
        **block_kwargs: Any,
) -> Injected:
    """Let the output of stage ``query_stage`` attend to the output of the earlier stage ``context_stage``, in place.

    Args:
        model: a timm or torchvision ResNet-family model, trained or not.
        query_stage: the stage (``layerN`` -> N) whose output becomes the queries and is refined.
        context_stage: an earlier stage whose output gives the keys and values.
        init: ``'identity'`` (the model's outputs are unchanged at step 0; checked) or ``'default'`` (the same: the
            block's output branch always starts at zero; accepted for symmetry with ``inject``).
        input_size: ``(C, H, W)`` of the probe for the identity check and FLOP count (as ``inject``).
        **block_kwargs: options of :class:`~visattn.CrossAttention2d` (``score``, ``num_heads``, ``kv_stride``,
            ``position``, ...).

    Returns:
        ``Injected(model, report)``: the same model, and where the block went with its overhead.

    Raises:
        ValueError: unknown stages, a context stage that is not earlier, or a stage that already has one.
        RuntimeError: the outputs changed at step 0.

    Example:
        >>> model = timm.create_model('resnet50')
        >>> model, report = visattn.inject_cross(model, query_stage=4, context_stage=3, num_heads=4)
    """
    if init not in ("identity", "default"):
        raise ValueError(f"init must be 'identity' or 'default', got {init!r}")
    stages = find_residual_blocks(model)
    for arg, stage in (("query_stage", query_stage), ("context_stage", context_stage)):
        if isinstance(stage, bool) or not isinstance(stage, int) or stage not in stages:
            raise ValueError(f"{arg}={stage!r} is not a stage of this model; valid: {sorted(stages)}")
    if not context_stage < query_stage:
        raise ValueError(f"context_stage ({context_stage}) must come before query_stage ({query_stage}): the "
                         f"context must exist when the query stage runs")
    target: nn.Module = getattr(model, f"layer{query_stage}")
    if isinstance(target, CrossAttendingStage):
        raise ValueError(f"layer{query_stage} already attends to a context; inject into a model without one")
    if type(target) is not nn.Sequential:
        raise ValueError(f"layer{query_stage} is a {type(target).__name__}, not a plain nn.Sequential of blocks")

    device, dtype = model_device_dtype(model)
    channels = residual_out_channels(stages[query_stage][-1][1])
    context_channels = residual_out_channels(stages[context_stage][-1][1])
    probe = torch.randn(1, *probe_input_size(model, input_size), generator=torch.Generator().manual_seed(0)).to(device,
                                                                                                          dtype)
    keys_before, params_before = set(model.state_dict()), count_params(model)
    block = CrossAttention2d(channels, context_channels=context_channels, device=device, dtype=dtype, **block_kwargs)
    mark_injected(block)
    handle: RemovableHandle | None = None
    try:
        with eval_mode(model), torch.no_grad():
            flops_before, out_before = count_flops(model, probe)
            target.__class__ = CrossAttendingStage
            target.cross_attn = block
            target._context = None
            target._context_from_input = context_stage == query_stage - 1
            if not target._context_from_input:
                handle = getattr(model, f"layer{context_stage}").register_forward_hook(_keep_context(target))
            block.eval()
            flops_after, out_after = count_flops(model, probe)
        before, after = tensor_leaves(out_before), tensor_leaves(out_after)
        max_diff = max(((a.float() - b.float()).abs().max().item() for a, b in zip(after, before, strict=True)),
                       default=0.0)
        scale = max((b.abs().max().item() for b in before), default=0.0)
        if max_diff > _IDENTITY_RTOL * max(1.0, scale):
            raise RuntimeError(f"the injected cross-attention changed the outputs by up to {max_diff:.3g} at step 0")
    except BaseException:
        if handle is not None:
            handle.remove()
        if isinstance(target, CrossAttendingStage):  # any failure leaves the model as it was
            del target.cross_attn
            target.__class__ = nn.Sequential
            for attr in ("_context", "_context_from_input"):
                target.__dict__.pop(attr, None)
        raise
    block.train(target.training)
    report = InjectionReport(
        block="cross_attention", init=init,
        sites=[InjectionSite(path=f"layer{query_stage}.cross_attn", channels=channels, params=count_params(block))],
        params_before=params_before, flops_before=flops_before, flops_after=flops_after,
        input_size=tuple(probe.shape[1:]), max_abs_diff=max_diff,
        new_keys=sorted(set(model.state_dict()) - keys_before),
    )
    return Injected(model, report)
