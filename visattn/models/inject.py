"""Put attention blocks into an existing (possibly trained) ResNet without breaking its weights.

The block goes into the residual branch's attention slot that timm already calls (``block.se``, after the last norm,
before the residual add); torchvision blocks are given that slot (see ``torchvision_blocks``). No original module is
replaced, so every original state_dict key keeps its name. With ``init='identity'`` each block starts as an exact
identity, so the injected model computes what the original computed until training moves it.
"""

from __future__ import annotations

import difflib
import inspect
import re
import warnings
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
from timm.models.resnet import BasicBlock as TimmBasicBlock
from timm.models.resnet import Bottleneck as TimmBottleneck
from torch import nn
from torchvision.models.resnet import BasicBlock as TvBasicBlock
from torchvision.models.resnet import Bottleneck as TvBottleneck

from ..blocks.registry import block_inputs, canonical_name, get_block
from ..utils import count_flops, count_params, eval_mode, input_channels, model_device_dtype
from .inject_report import InjectionReport, InjectionSite
from .torchvision_blocks import AttnBasicBlock, AttnBottleneck, can_add_attention_slot, with_attention_slot
from .weights import mark_injected

__all__ = ["inject", "inject_quietly", "Injected", "find_residual_blocks", "residual_out_channels", "probe_input_size",
           "tensor_leaves"]

_TIMM_BLOCKS = (TimmBasicBlock, TimmBottleneck)
_TV_BLOCKS = (TvBasicBlock, TvBottleneck, AttnBasicBlock, AttnBottleneck)
_STAGE_RE = re.compile(r"^layer(\d+)$")
# inject's load warning starts so (InjectionReport.load_warning); inject_quietly filters it by this pattern.
_LOAD_WARNING = r"visattn\.inject added"
# Identity must hold to float rounding of two identical forward passes (non-deterministic GPU kernels included).
_IDENTITY_RTOL = 1e-5


class Injected(NamedTuple):
    """What ``inject`` returns: the (same, modified) model and a report of what went where."""

    model: nn.Module
    report: InjectionReport


def find_residual_blocks(model: nn.Module) -> dict[int, list[tuple[str, nn.Module]]]:
    """Supported residual blocks per stage: ``{1: [('layer1.0', block), ...], ...}``.

    Raises:
        ValueError: if the model has no ``layerN`` stages holding timm or torchvision ResNet blocks.
    """
    stages: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, child in model.named_children():
        match = _STAGE_RE.match(name)
        if not match:
            continue
        blocks = [(f"{name}.{i}", b) for i, b in child.named_children() if isinstance(b, _TIMM_BLOCKS + _TV_BLOCKS)]
        if blocks:
            stages[int(match.group(1))] = blocks
    if not stages:
        children = ", ".join(f"{n} ({type(c).__name__})" for n, c in model.named_children()) or "none"
        raise ValueError(
            f"inject supports timm and torchvision ResNet-family models (stages layer1..layer4 of BasicBlock/"
            f"Bottleneck); {type(model).__name__} has no such blocks. Its top-level children: {children}"
        )
    return stages


def _select(
        stages: dict[int, list[tuple[str, nn.Module]]],
        which_stages: Sequence[int] | None,
        which_blocks: str | Sequence[int],
) -> list[tuple[str, nn.Module]]:
    if which_stages is None:
        chosen_stages = sorted(stages)
    else:
        if isinstance(which_stages, int) or not all(isinstance(s, int) for s in which_stages):
            raise TypeError(f"stages must be a sequence of ints such as [3, 4], got {which_stages!r}")
        bad = [s for s in which_stages if s not in stages]
        if bad:
            raise ValueError(f"stages={list(which_stages)} names stages {bad} that this model lacks; "
                             f"valid: {sorted(stages)} (layer1..layer{max(stages)})")
        chosen_stages = sorted(set(which_stages))
    selected = []
    for s in chosen_stages:
        blocks = stages[s]
        if which_blocks == "all":
            selected += blocks
        elif which_blocks == "last":
            selected.append(blocks[-1])
        elif (isinstance(which_blocks, str) or not isinstance(which_blocks, Sequence)
              or not all(isinstance(i, int) for i in which_blocks)):
            raise ValueError(f"blocks must be 'all', 'last' or a list of block indices, got {which_blocks!r}")
        else:
            for i in which_blocks:
                if not -len(blocks) <= i < len(blocks):
                    raise ValueError(f"blocks index {i} is out of range for layer{s}, which has {len(blocks)} blocks")
            selected += [blocks[i] for i in sorted({i % len(blocks) for i in which_blocks})]
    return selected


def residual_out_channels(block: nn.Module) -> int:
    """Channels a timm or torchvision residual block outputs."""
    last_conv = block.conv3 if isinstance(block, (TimmBottleneck, TvBottleneck)) else block.conv2
    return last_conv.out_channels


def _build(block_cls: Any, channels: int, identity: bool, dd: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    if identity:
        try:
            params = inspect.signature(block_cls).parameters
        except (TypeError, ValueError):
            params = {}
        # **kwargs may pass it on (a subclass of a visattn block); the measured output check catches one that does not.
        accepts = "identity_init" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if not accepts:
            raise TypeError(
                f"{getattr(block_cls, '__name__', block_cls)!r} takes no identity_init argument, so init='identity' "
                f"cannot make it start as an identity; add `identity_init: bool` to it or use init='default'"
            )
        kwargs = {**kwargs, "identity_init": True}
    return block_cls(channels, **kwargs, **dd)


_INJECT_ARGS = ("stages", "blocks", "init", "input_size")


def _accepted_kwargs(block_cls: Any) -> set[str] | None:
    """The argument names ``block_cls`` accepts; None when it may accept any (``**kwargs`` it does not check) or its
    signature cannot be read. visattn's own blocks take ``**kwargs`` only to reject unknown ones with a suggestion."""
    try:
        params = inspect.signature(block_cls).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params) and not getattr(block_cls, "__module__", "").startswith("visattn."):
        return None
    return {p.name for p in params if p.kind is not p.VAR_KEYWORD}


def tensor_leaves(out: Any) -> list[torch.Tensor]:
    """The tensors in a model output: a tensor, or lists, tuples and dicts of them."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in tensor_leaves(item)]
    return []


def probe_input_size(model: nn.Module, input_size: Sequence[int] | None = None) -> tuple[int, int, int]:
    """``(C, H, W)`` of the probe an injection checks its identity on: ``input_size``, else the model's
    ``pretrained_cfg['input_size']`` with its stem's input channels, else ``(3, 224, 224)``.

    Raises:
        ValueError: ``input_size`` is not three positive ints.
    """
    if input_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        input_size = tuple(cfg.get("input_size") or (3, 224, 224))
        channels = input_channels(model, guess=True)
        if channels is not None:  # timm keeps the pretrained cfg's 3 channels for in_chans=1 models
            input_size = (channels, *input_size[1:])
    input_size = tuple(input_size)
    if len(input_size) != 3 or not all(isinstance(v, int) and v > 0 for v in input_size):
        raise ValueError(f"input_size must be (channels, height, width) of positive ints, got {input_size!r}")
    return input_size  # type: ignore[return-value]


def inject(
        model: nn.Module,
        block: str | type[nn.Module],
        *,
        stages: Sequence[int] | None = None,
        blocks: Literal["all", "last"] | Sequence[int] = "all",
        init: Literal["identity", "default"] = "identity",
        input_size: tuple[int, int, int] | None = None,
        **block_kwargs: Any,
) -> Injected:
    """Add an attention block to residual blocks of a timm or torchvision ResNet, in place.

    Args:
        model: a timm ResNet/ResNeXt-family model or a torchvision ResNet, trained or not.
        block: a registered block name (``'se'``, ``'cbam'``, ...) or a block class.
        stages: which stages (``layer1``..``layer4`` -> 1..4) get blocks; default all.
        blocks: within each chosen stage, ``'all'``, ``'last'`` or a list of block indices (negative allowed).
        init: ``'identity'`` (outputs unchanged at step 0; checked) or ``'default'`` (the block's own random init).
        input_size: ``(C, H, W)`` of the probe used for the FLOP count and the identity check; default the model's
            ``pretrained_cfg['input_size']`` or ``(3, 224, 224)``.
        **block_kwargs: passed to every block, e.g. ``rd_ratio=1/8``.

    Returns:
        ``Injected(model, report)``: the same model object, and what went where with its overhead.

    Raises:
        ValueError: bad arguments, a model with no supported blocks, or a block whose attention slot is taken.
        TypeError: non-int ``stages``, a misspelt inject argument (``stage=``), or ``init='identity'`` with a block
            class that has no ``identity_init`` argument.
        RuntimeError: ``init='identity'`` but the outputs changed (a block that does not honour ``identity_init``).

    Example:
        >>> model = timm.create_model('resnet50', pretrained=False)
        >>> model, report = inject(model, 'cbam', stages=[3, 4])
        >>> print(report)
    """
    if init not in ("identity", "default"):
        raise ValueError(f"init must be 'identity' or 'default', got {init!r}")
    if isinstance(block, str) and block_inputs(block) == 2:
        raise ValueError(f"block {block!r} takes two inputs, so it has no place in a residual block; "
                         f"visattn.inject_cross adds cross-attention between two stages")
    block_cls = get_block(block) if isinstance(block, str) else block
    block_name = canonical_name(block) if isinstance(block, str) else getattr(block, "__name__", repr(block))
    if isinstance(block_cls, nn.Module):  # an instance would be "called" with (channels) as its forward input
        raise TypeError(f"block must be a registered name or an nn.Module class (one block is built per place), got "
                        f"the instance {type(block_cls).__name__}(...); pass {type(block_cls).__name__} instead")
    if not callable(block_cls):
        raise TypeError(f"block must be a registered name or an nn.Module class, got {block!r}")

    accepted = _accepted_kwargs(block_cls)
    for key in block_kwargs:  # `stage=[3]` is a typo of inject's own argument, not a block option
        close = difflib.get_close_matches(key, _INJECT_ARGS, n=1, cutoff=0.8)
        if close and accepted is not None and key not in accepted:
            raise TypeError(f"inject() got an unexpected keyword argument {key!r}; did you mean {close[0]!r}?")

    selected = _select(find_residual_blocks(model), stages, blocks)
    for path, res_block in selected:
        current = getattr(res_block, "se", None)
        if current is not None:
            raise ValueError(f"{path}.se already holds {type(current).__name__}; inject into a model without attention")
        if isinstance(res_block, _TV_BLOCKS) and not can_add_attention_slot(res_block):
            with_attention_slot(res_block)  # raises the ValueError that names the class, before anything changes

    device, dtype = model_device_dtype(model)
    input_size = probe_input_size(model, input_size)
    probe = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    keys_before = set(model.state_dict())
    params_before = count_params(model)

    original_classes = [(res_block, type(res_block)) for _, res_block in selected]
    try:
        with eval_mode(model), torch.no_grad():
            flops_before, out_before = count_flops(model, probe)
            sites = []
            for path, res_block in selected:
                channels = residual_out_channels(res_block)
                attn = _build(block_cls, channels, init == "identity", {"device": device, "dtype": dtype},
                              block_kwargs)
                attn.eval()  # the context manager restores the model's flags; new modules start like their parents
                mark_injected(attn)  # load_weights lets its keys be missing, registered class or not
                if isinstance(res_block, _TV_BLOCKS):
                    with_attention_slot(res_block)
                res_block.se = attn
                sites.append(InjectionSite(path=f"{path}.se", channels=channels, params=count_params(attn)))
            flops_after, out_after = count_flops(model, probe)
        # Outputs may be nested (features_only backbones return a list of maps): compare leaf by leaf.
        before, after = tensor_leaves(out_before), tensor_leaves(out_after)
        max_diff = max(((a.float() - b.float()).abs().max().item() for a, b in zip(after, before, strict=True)),
                       default=0.0)
        scale = max((b.abs().max().item() for b in before), default=0.0)
        if init == "identity" and max_diff > _IDENTITY_RTOL * max(1.0, scale):
            raise RuntimeError(
                f"init='identity' but the injected {block_name} blocks changed the outputs by up to {max_diff:.3g}; "
                f"the block class does not honour identity_init"
            )
    except BaseException:
        for res_block, cls in original_classes:  # any failure leaves the user's model as it was
            if hasattr(res_block, "se"):
                res_block.se = None
            if type(res_block) is not cls:  # a torchvision block given an attention slot: take the slot away again
                res_block.__class__ = cls
                del res_block.se
        raise

    for path, _ in selected:  # match the parent's train/eval flag, which eval_mode has just restored
        model.get_submodule(f"{path}.se").train(model.get_submodule(path).training)
    report = InjectionReport(
        block=block_name,
        init=init,
        sites=sites,
        params_before=params_before,
        flops_before=flops_before,
        flops_after=flops_after,
        input_size=input_size,
        max_abs_diff=max_diff,
        new_keys=sorted(set(model.state_dict()) - keys_before),
    )
    warnings.warn(report.load_warning(), UserWarning, stacklevel=2)
    return Injected(model, report)


def inject_quietly(model: nn.Module, block: str | type[nn.Module], **kwargs: Any) -> Injected:
    """``inject`` without its warning about state_dicts saved before injection.

    For callers that load weights holding the injected keys next (a shipped file, a run's own checkpoint) or that
    print the whole report themselves: to them the warning would only repeat what they already handle.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_LOAD_WARNING, category=UserWarning)
        return inject(model, block, **kwargs)
