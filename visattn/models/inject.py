"""Put attention blocks into an existing (possibly trained) CNN of any family without breaking its weights.

Where the blocks go is read from the model's structure (:mod:`visattn.models.structure`): at the end of each residual
block's branch, before the add (after attention the block already has), or at the output of a stage without residual
blocks. The block fills an empty attention slot the forward already calls (timm's ``se``), or becomes a new child
``attn`` that the block's forward calls (:mod:`visattn.models.rewrite`). No original module is replaced (unless
``replace=True`` swaps existing attention out), so every original state_dict key keeps its name. With
``init='identity'`` each block starts as an exact identity, so the injected model computes what the original computed
until training moves it; that is measured on a probe, not assumed.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from ..blocks.registry import block_inputs, canonical_name, get_block
from ..utils import count_flops, count_params, eval_mode, input_channels, model_device_dtype
from .inject_report import InjectionReport, InjectionSite
from .rewrite import call_after_node, call_on_output, output_owner, undo
from .structure import ModelStructure, Site, find_structure
from .weights import mark_injected

__all__ = ["inject", "Injected", "find_sites", "probe_input_size", "tensor_leaves", "output_change"]

# Identity must hold to float rounding of two identical forward passes (non-deterministic GPU kernels included).
_IDENTITY_RTOL = 1e-5
_CHILD_NAME = "attn"


class Injected(NamedTuple):
    """What ``inject`` returns: the (same, modified) model and a report of what went where."""

    model: nn.Module
    report: InjectionReport


def find_sites(model: nn.Module, input_size: Sequence[int] | None = None) -> ModelStructure:
    """Where ``inject`` can put blocks in ``model``: sites per stage (stride 4 -> 1, ..., 32 -> 4) and stage outputs.

    Args:
        model: any CNN.
        input_size: ``(C, H, W)`` of the probe; default as :func:`probe_input_size`.
    """
    device, dtype = model_device_dtype(model)
    probe = torch.randn(1, *probe_input_size(model, input_size), generator=torch.Generator().manual_seed(0))
    with eval_mode(model), torch.no_grad():
        return find_structure(model, probe.to(device, dtype))


def _select(
        sites: dict[int, list[Site]],
        which_stages: Sequence[int] | None,
        which_blocks: str | Sequence[int],
) -> list[Site]:
    if which_stages is None:
        chosen_stages = sorted(sites)
    else:
        if isinstance(which_stages, int) or not all(isinstance(s, int) for s in which_stages):
            raise TypeError(f"stages must be a sequence of ints such as [3, 4], got {which_stages!r}")
        bad = [s for s in which_stages if s not in sites]
        if bad:
            raise ValueError(f"stages={list(which_stages)} names stages {bad} that this model lacks; valid: "
                             f"{sorted(sites)} (stage N has output stride 2^(N+1))")
        chosen_stages = sorted(set(which_stages))
    selected = []
    for s in chosen_stages:
        blocks = sites[s]
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
                    raise ValueError(f"blocks index {i} is out of range for stage {s}, which has {len(blocks)} "
                                     f"blocks ({', '.join(b.path for b in blocks)})")
            selected += [blocks[i] for i in sorted({i % len(blocks) for i in which_blocks})]
    return selected


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


_INJECT_ARGS = ("stages", "blocks", "replace", "init", "input_size")


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



def output_change(before: Any, after: Any) -> tuple[float, float]:
    """Largest |after - before| over the tensors of two model outputs (nested ones leaf by leaf), and the largest
    |before|, the scale the change is judged against."""
    a, b = tensor_leaves(after), tensor_leaves(before)
    diff = max(((x.float() - y.float()).abs().max().item() for x, y in zip(a, b, strict=True) if x.numel()),
               default=0.0)
    return diff, max((y.abs().max().item() for y in b if y.numel()), default=0.0)


@dataclass
class _Placed:
    """One block put into the model, and how to take it out again."""

    site: InjectionSite
    undo: Callable[[], None]


def _free_name(module: nn.Module) -> str:
    name, i = _CHILD_NAME, 1
    while hasattr(module, name):
        i += 1
        name = f"{_CHILD_NAME}{i}"
    return name


def _place(model: nn.Module, site: Site, attn: nn.Module, replace: bool) -> _Placed:
    """Put ``attn`` at ``site``: replacing its existing attention, into its empty slot, or as a new child."""
    module = model.get_submodule(site.path)
    info = dict(stage=site.stage, channels=site.channels, params=count_params(attn))
    if replace and site.attention is not None:
        parent_path, _, name = f"{site.path}.{site.attention}".rpartition(".")
        parent = model.get_submodule(parent_path)
        old = parent._modules[name]
        parent._modules[name] = attn
        return _Placed(InjectionSite(path=f"{parent_path}.{name}", where=f"replaces {type(old).__name__}", **info),
                       lambda: parent._modules.__setitem__(name, old))
    if site.slot is not None and site.attention is None:
        slot = site.slot
        registered = slot in module._modules

        def empty_slot() -> None:
            del module._modules[slot]
            if registered:
                module._modules[slot] = None
            else:
                vars(module)[slot] = None

        vars(module).pop(slot, None)
        module.add_module(slot, attn)
        return _Placed(InjectionSite(path=f"{site.path}.{slot}", where="branch end (empty slot)", **info), empty_slot)
    if site.kind == "stage_output":
        path = output_owner(model, site.path)
        module = model.get_submodule(path)
        previous, name = type(module), _free_name(module)
        call_on_output(module, name, attn)
        return _Placed(InjectionSite(path=f"{path}.{name}", where="stage output", **info),
                       lambda: undo(module, previous, name))
    previous, name = type(module), _free_name(module)
    call_after_node(module, site.after, name, attn)
    where = f"after {site.attention}" if site.attention else "branch end"
    return _Placed(InjectionSite(path=f"{site.path}.{name}", where=where, **info),
                   lambda: undo(module, previous, name))


def inject(
        model: nn.Module,
        block: str | type[nn.Module],
        *,
        stages: Sequence[int] | None = None,
        blocks: Literal["all", "last"] | Sequence[int] = "all",
        replace: bool = False,
        init: Literal["identity", "default"] = "identity",
        input_size: tuple[int, int, int] | None = None,
        **block_kwargs: Any,
) -> Injected:
    """Add an attention block to the residual blocks (or stage outputs) of any CNN, in place.

    Args:
        model: a timm or torchvision CNN (ResNet, EfficientNet, ConvNeXt, RegNet, MobileNet, DenseNet, VGG, ...),
            trained or not; also a ``features_only`` backbone.
        block: a registered block name (``'se'``, ``'cbam'``, ...) or a block class.
        stages: which stages get blocks, numbered by output stride (4 -> 1, 8 -> 2, 16 -> 3, 32 -> 4; on a ResNet
            stage N is ``layerN``); default all.
        blocks: within each chosen stage, ``'all'``, ``'last'`` or a list of block indices (negative allowed).
        replace: swap the attention a block already has (e.g. an EfficientNet's SE) for the new one; the outputs
            then change, and the report says by how much. Default: the new block follows the existing one.
        init: ``'identity'`` (outputs unchanged at step 0; checked) or ``'default'`` (the block's own random init).
        input_size: ``(C, H, W)`` of the probe used to find the sites, count FLOPs and check the identity; default the
            model's ``pretrained_cfg['input_size']`` or ``(3, 224, 224)``.
        **block_kwargs: passed to every block, e.g. ``rd_ratio=1/8``.

    Returns:
        ``Injected(model, report)``: the same model object, and what went where with its overhead and the state_dict
        keys that a checkpoint of the original model lacks (load one with :func:`visattn.load_weights`).

    Raises:
        ValueError: bad arguments, or a model with nowhere to put a block (token models such as ViTs).
        TypeError: non-int ``stages``, a misspelt inject argument (``stage=``), or ``init='identity'`` with a block
            class that has no ``identity_init`` argument.
        RuntimeError: ``init='identity'`` but the outputs changed (a block that does not honour ``identity_init``).

    Example:
        >>> model = timm.create_model('efficientnet_b0', pretrained=False)
        >>> model, report = inject(model, 'cbam', stages=[3, 4])
        >>> print(report)
    """
    if init not in ("identity", "default"):
        raise ValueError(f"init must be 'identity' or 'default', got {init!r}")
    if not isinstance(replace, bool):
        raise TypeError(f"replace must be True or False, got {replace!r}")
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

    device, dtype = model_device_dtype(model)
    input_size = probe_input_size(model, input_size)
    probe = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    keys_before = set(model.state_dict())
    params_before = count_params(model)
    placed: list[_Placed] = []
    try:
        with eval_mode(model), torch.no_grad():
            structure = find_structure(model, probe)
            if not structure.sites:
                raise ValueError(f"inject found nowhere to put {block_name!r}: {structure.describe_refusal(model)}")
            selected = _select(structure.sites, stages, blocks)
            flops_before, out_before = count_flops(model, probe)
            for site in selected:
                attn = _build(block_cls, site.channels, init == "identity", {"device": device, "dtype": dtype},
                              block_kwargs)
                attn.eval()  # eval_mode restores the model's flags; new modules start like their parents below
                mark_injected(attn)  # load_weights lets its keys be missing, registered class or not
                placed.append(_place(model, site, attn, replace))
            flops_after, out_after = count_flops(model, probe)
        max_diff, scale = output_change(out_before, out_after)
        replaced = any(p.site.where.startswith("replaces") for p in placed)
        if init == "identity" and not replaced and max_diff > _IDENTITY_RTOL * max(1.0, scale):
            raise RuntimeError(
                f"init='identity' but the injected {block_name} blocks changed the outputs by up to {max_diff:.3g}; "
                f"the block class does not honour identity_init"
            )
    except BaseException:
        for p in reversed(placed):  # any failure leaves the user's model as it was
            p.undo()
        raise

    for p in placed:  # match the parent's train/eval flag, which eval_mode has just restored
        parent_path = p.site.path.rpartition(".")[0]
        model.get_submodule(p.site.path).train(model.get_submodule(parent_path).training)
    report = InjectionReport(
        block=block_name,
        init=init,
        sites=[p.site for p in placed],
        params_before=params_before,
        flops_before=flops_before,
        flops_after=flops_after,
        input_size=input_size,
        max_abs_diff=max_diff,
        new_keys=sorted(set(model.state_dict()) - keys_before),
        removed_keys=sorted(keys_before - set(model.state_dict())),
    )
    return Injected(model, report)
