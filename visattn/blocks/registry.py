"""Name -> block class registry, filled by the ``@register_block`` decorator (timm's registry pattern)."""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from timm.layers import register_notrace_module
from torch import nn

__all__ = ["register_block", "on_register", "list_blocks", "get_block", "canonical_name", "create_block", "is_block",
           "block_inputs", "aliases_of"]

BlockT = TypeVar("BlockT", bound=type[nn.Module])

_BLOCKS: dict[str, type[nn.Module]] = {}
_ALIASES: dict[str, str] = {}
_INPUTS: dict[str, int] = {}  # 1: an attn_layer block; 2: a block of two inputs (cross-attention, fusion)
# Called with each newly registered single-input block's name; visattn.models uses it to add timm variants
# (resnet18_<name>).
_ON_REGISTER: list[Callable[[str], None]] = []


def on_register(callback: Callable[[str], None]) -> None:
    """Call ``callback(name)`` for every single-input block registered from now on (visattn.models adds its timm
    variants this way)."""
    _ON_REGISTER.append(callback)

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def register_block(name: str, *, aliases: Sequence[str] = (), inputs: int = 1) -> Callable[[BlockT], BlockT]:
    """Register an attention block class under ``name`` (and optional aliases).

    A single-input block must follow timm's ``attn_layer`` contract: ``Block(channels, **kwargs)`` returning a module
    that maps ``(B, C, H, W) -> (B, C, H, W)``. To support ``inject(..., init='identity')`` it should also accept
    ``identity_init: bool``. A registered block is a leaf for FX tracing (timm's ``register_notrace_module``).
    Registering one also adds the timm models ``resnet18_<name>``, ``resnet34_<name>`` and
    ``resnet50_<name>``. A block of two inputs (``inputs=2``: ``forward(x, other)``) gets no timm models.

    Args:
        name: lower-case identifier, e.g. ``'my_gate'``.
        aliases: other names that resolve to the same class (not listed by ``list_blocks()``).
        inputs: 1 for an ``attn_layer`` block, 2 for a block that combines two inputs.

    Raises:
        ValueError: if a name is not a lower-case identifier, an alias is another block's name, or ``inputs`` is
            not 1 or 2.

    Example:
        >>> @register_block('my_gate')
        ... class MyGate(nn.Module):
        ...     def __init__(self, channels, **kwargs): ...
    """
    if inputs not in (1, 2):
        raise ValueError(f"inputs must be 1 (an attn_layer block) or 2, got {inputs!r}")
    for n in (name, *aliases):
        if not isinstance(n, str) or not _NAME_RE.match(n):
            raise ValueError(f"block name must be a lower-case identifier like 'my_block', got {n!r}")

    def decorator(cls: BlockT) -> BlockT:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_block({name!r}) expects an nn.Module subclass, got {cls!r}")
        for alias in aliases:  # validate everything before the registry changes
            if alias in _BLOCKS and alias != name:
                raise ValueError(f"alias {alias!r} of block {name!r} is already the name of block "
                                 f"{_BLOCKS[alias].__name__}; choose another alias")
        if name in _BLOCKS or name in _ALIASES:
            # Overwrite like timm's register_model does, so re-running a notebook cell works, but say so.
            warnings.warn(f"visattn block {name!r} is already registered; overwriting it with {cls.__name__}",
                          stacklevel=2)
            _ALIASES.pop(name, None)
        for alias in aliases:
            if _ALIASES.get(alias, name) != name:
                warnings.warn(f"visattn alias {alias!r} pointed to block {_ALIASES[alias]!r}; it now points to "
                              f"{name!r}", stacklevel=2)
        _BLOCKS[name] = cls
        _INPUTS[name] = inputs
        # FX tracing (timm's feature extraction, torchvision's create_feature_extractor, quantisation tools) keeps a
        # block as one call: its forward picks kernels by layout and device, which symbolic values cannot answer.
        register_notrace_module(cls)
        for alias in aliases:
            _ALIASES[alias] = name
        if inputs == 1:
            for callback in _ON_REGISTER:
                callback(name)
        return cls

    return decorator


def list_blocks(include_aliases: bool = False, *, inputs: int | None = 1) -> list[str]:
    """Names of the registered blocks, in registration order; with ``include_aliases`` the aliases follow.

    Args:
        include_aliases: append the aliases (sorted).
        inputs: 1 (default) for the ``attn_layer`` blocks, 2 for the blocks of two inputs, None for all.
    """
    names = [n for n in _BLOCKS if inputs is None or _INPUTS[n] == inputs]
    aliases = sorted(a for a, n in _ALIASES.items() if n in names)
    return names + aliases if include_aliases else names


def block_inputs(name: str) -> int:
    """How many inputs the block registered under ``name`` takes: 1 (``attn_layer`` blocks) or 2."""
    return _INPUTS[_canonical(name)]


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"block name must be a str, got {type(name).__name__} {name!r}")
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _BLOCKS:
        valid = list_blocks(include_aliases=True, inputs=None)
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown attention block {name!r}; valid names: {', '.join(valid)}.{hint}")
    return key


def get_block(name: str) -> type[nn.Module]:
    """Return the block class registered under ``name`` (or an alias).

    Raises:
        ValueError: if ``name`` is not registered; the message lists the valid names.
    """
    return _BLOCKS[_canonical(name)]


def canonical_name(name: str) -> str:
    """Resolve an alias to its registered name (``'squeeze_excite'`` -> ``'se'``)."""
    return _canonical(name)


def create_block(name: str, channels: int, *args: Any, **kwargs: Any) -> nn.Module:
    """Build the block registered under ``name`` for a ``channels``-wide feature map (a two-input block takes the
    second input's width next).

    Example:
        >>> block = create_block('cbam', 256, rd_ratio=1 / 8)
        >>> fuse = create_block('gated_fusion', 512, 16, out_channels=256)
    """
    return get_block(name)(channels, *args, **kwargs)


def aliases_of(name: str) -> list[str]:
    """The aliases of the block registered under ``name`` (or an alias of it), sorted."""
    target = _canonical(name)
    return sorted(a for a, n in _ALIASES.items() if n == target)


def is_block(module: nn.Module) -> bool:
    """True if ``module`` is an instance of a registered block class."""
    return isinstance(module, tuple(_BLOCKS.values()))
