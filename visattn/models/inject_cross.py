"""Cross-scale attention in an existing CNN: one stage's output attends to an earlier stage's output.

``inject_cross(model, query_stage=4, context_stage=3)`` gives the query stage's output module (timm's
``feature_info`` module for that stride, e.g. ``layer4`` of a ResNet, ``stages.3`` of a ConvNeXt, ``blocks.6`` of an
EfficientNet) a :class:`~visattn.CrossAttention2d` child ``cross_attn``, applied to its output with the context
stage's output as keys and values. Both modules have their class swapped for a subclass of their own (as ``inject``
does, :mod:`visattn.models.rewrite`): the context module hands its output to the query module, which uses it once.
Nothing is kept between forward passes and no hook is involved, so FX tracing (timm's and torchvision's feature
extractors), ``torch.export`` and ``torch.compile`` see one ordinary data flow. The block's output branch starts at
zero, so the model computes exactly what it computed before, which is checked on a probe as ``inject`` checks it.
Stages are numbered as in ``inject`` (output stride 4 -> 1, ..., 32 -> 4).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..blocks.cross_attention import CrossAttention2d
from ..utils import count_flops, count_params, eval_mode, model_device_dtype
from .inject import Injected, output_change, probe_input_size
from .inject_report import InjectionReport, InjectionSite
from .rewrite import output_owner, subclass_with_forward
from .structure import find_structure
from .weights import mark_injected

__all__ = ["inject_cross"]

_IDENTITY_RTOL = 1e-5
_CONTEXT = "_visattn_context"


def _query_class(base: type[nn.Module]) -> type[nn.Module]:
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        y = base.forward(self, *args, **kwargs)
        context = self.__dict__.pop(_CONTEXT, None)  # this pass's context, used once
        if context is None:
            raise RuntimeError("the context stage did not run before this stage in this forward pass")
        return self.cross_attn(y, context)

    return subclass_with_forward(base, forward, "CrossAttention")


def _context_class(base: type[nn.Module], query: nn.Module) -> type[nn.Module]:
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        out = base.forward(self, *args, **kwargs)
        query.__dict__[_CONTEXT] = out
        return out

    return subclass_with_forward(base, forward, "Context")


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
        model: a timm or torchvision CNN, trained or not.
        query_stage: the stage (numbered as in ``inject``; on a ResNet ``layerN`` -> N) whose output becomes the
            queries and is refined.
        context_stage: an earlier stage whose output gives the keys and values.
        init: ``'identity'`` (the model's outputs are unchanged at step 0; checked) or ``'default'`` (the same: the
            block's output branch always starts at zero; accepted for symmetry with ``inject``).
        input_size: ``(C, H, W)`` of the probe for the identity check and FLOP count (as ``inject``).
        **block_kwargs: options of :class:`~visattn.CrossAttention2d` (``score``, ``num_heads``, ``kv_stride``,
            ``position``, ...).

    Returns:
        ``Injected(model, report)``: the same model, and where the block went with its overhead.

    Raises:
        ValueError: unknown stages, a context stage that is not earlier, or a stage that already attends to one.
        RuntimeError: the outputs changed at step 0.

    Example:
        >>> model = timm.create_model('resnet50')
        >>> model, report = visattn.inject_cross(model, query_stage=4, context_stage=3, num_heads=4)
    """
    if init not in ("identity", "default"):
        raise ValueError(f"init must be 'identity' or 'default', got {init!r}")
    device, dtype = model_device_dtype(model)
    input_size = probe_input_size(model, input_size)
    probe = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    with eval_mode(model), torch.no_grad():
        outputs = find_structure(model, probe).stage_outputs
    for arg, stage in (("query_stage", query_stage), ("context_stage", context_stage)):
        if isinstance(stage, bool) or not isinstance(stage, int) or stage not in outputs:
            raise ValueError(f"{arg}={stage!r} is not a stage of this model; valid: {sorted(outputs)} (stage N has "
                             f"output stride 2^(N+1))")
    if not context_stage < query_stage:
        raise ValueError(f"context_stage ({context_stage}) must come before query_stage ({query_stage}): the "
                         f"context must exist when the query stage runs")
    (query_path, channels), (context_path, context_channels) = outputs[query_stage], outputs[context_stage]
    query_path = output_owner(model, query_path)  # a Sequential would run a child added to it
    query, context = model.get_submodule(query_path), model.get_submodule(context_path)
    if hasattr(query, "cross_attn"):
        raise ValueError(f"{query_path} already attends to a context; inject into a model without one")

    keys_before, params_before = set(model.state_dict()), count_params(model)
    block = CrossAttention2d(channels, context_channels=context_channels, device=device, dtype=dtype, **block_kwargs)
    mark_injected(block)
    query_cls, context_cls = type(query), type(context)
    try:
        with eval_mode(model), torch.no_grad():
            flops_before, out_before = count_flops(model, probe)
            query.__class__ = _query_class(query_cls)
            query.add_module("cross_attn", block)
            context.__class__ = _context_class(context_cls, query)
            block.eval()
            flops_after, out_after = count_flops(model, probe)
        max_diff, scale = output_change(out_before, out_after)
        if max_diff > _IDENTITY_RTOL * max(1.0, scale):
            raise RuntimeError(f"the injected cross-attention changed the outputs by up to {max_diff:.3g} at step 0")
    except BaseException:
        query._modules.pop("cross_attn", None)  # any failure leaves the model as it was
        query.__dict__.pop(_CONTEXT, None)
        query.__class__, context.__class__ = query_cls, context_cls
        raise
    block.train(query.training)
    report = InjectionReport(
        block="cross_attention", init=init,
        sites=[InjectionSite(path=f"{query_path}.cross_attn", channels=channels, params=count_params(block),
                             stage=query_stage, where=f"stage output, attends to {context_path}")],
        params_before=params_before, flops_before=flops_before, flops_after=flops_after,
        input_size=input_size, max_abs_diff=max_diff,
        new_keys=sorted(set(model.state_dict()) - keys_before),
    )
    return Injected(model, report)
