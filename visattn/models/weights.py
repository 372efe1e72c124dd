"""Load a checkpoint into a model that may carry injected attention blocks."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.nn.parameter import is_lazy

from ..blocks.registry import is_block

__all__ = ["load_weights", "read_state_dict"]


def read_state_dict(source: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Read a state_dict from a ``.safetensors`` file, a torch file (``weights_only=True``) or a mapping.

    Wrappers that training scripts add (``{'state_dict': ...}``, ``{'model': ...}``, DDP's ``module.`` prefix) are
    removed.

    Raises:
        FileNotFoundError: no file at ``source``.
        ValueError: the file is not a valid safetensors file, or a torch file holding more than tensors (which
            ``weights_only`` loading refuses to unpickle).
    """
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
        if path.suffix == ".safetensors":
            try:
                state = load_file(str(path))
            except SafetensorError as err:
                raise ValueError(f"{path} is not a valid safetensors file ({err})") from None
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary code
            except pickle.UnpicklingError as err:
                lines = [line.strip() for line in str(err).splitlines() if "Unpickler error" in line]
                reason = lines[0][:200] if lines else type(err).__name__
                raise ValueError(f"{path} holds more than tensors, and visattn loads torch files with "
                                 f"weights_only=True, which never runs pickled code ({reason}); save a state_dict "
                                 f"of tensors, or the weights as .safetensors") from None
    elif isinstance(source, Mapping):
        state = source
    else:
        raise TypeError(f"source must be a path or a state_dict mapping, got {type(source).__name__}")
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    return {k.removeprefix("module."): v for k, v in state.items()}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON-decoded metadata of a ``.safetensors`` file (values that are not JSON stay strings); ``{}`` for
    other files.

    Raises:
        ValueError: a corrupt or hostile safetensors header (one claiming 2^60 bytes, say).
    """
    import json

    from safetensors import safe_open

    path = Path(path).expanduser()
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except SafetensorError as err:
        raise ValueError(f"{path} is not a valid safetensors file ({err})") from None
    out = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


_INJECTED = "visattn_injected"  # a plain attribute: survives deepcopy and .to(), stays out of the state_dict


def mark_injected(module: nn.Module) -> None:
    """Tag a module that :func:`visattn.inject` added, so :func:`load_weights` lets its keys be missing."""
    setattr(module, _INJECTED, True)


def is_injected(module: nn.Module) -> bool:
    """True for a module :func:`mark_injected` tagged."""
    return bool(getattr(module, _INJECTED, False))


def load_weights(
        model: nn.Module,
        source: str | Path | Mapping[str, torch.Tensor],
        *,
        allow_missing: tuple[str, ...] = (),
) -> list[str]:
    """Load weights strictly, except that keys of visattn attention blocks (registered classes, and any module
    :func:`visattn.inject` added) may be missing.

    This is how a checkpoint of the original model goes into an injected one: every original key must match, and the
    injected blocks keep their (identity) initialisation.

    Args:
        model: the model to load into.
        source: a ``.safetensors`` / torch file path or a state_dict.
        allow_missing: further key prefixes that may be missing or differ in shape (e.g. ``('fc.',)`` for a new
            classifier head); those keys keep the model's values.

    Returns:
        The keys left at their initial values (the attention blocks' own, and ``allow_missing`` ones).

    Raises:
        ValueError: if keys other than attention-block keys are missing, the checkpoint has unexpected keys, or a
            tensor's shape differs (outside ``allow_missing``, where the model keeps its own); nothing is loaded then.

    Example:
        >>> model, report = visattn.inject(timm.create_model('resnet50'), 'cbam')
        >>> visattn.load_weights(model, 'resnet50_trained.safetensors')
    """
    state = read_state_dict(source)
    own = model.state_dict()
    if own and all(k.startswith("module.") for k in own):  # a DataParallel / DDP wrapper saved or loaded as a whole
        state = {f"module.{k}": v for k, v in state.items()}
        # Given for the wrapped model's names ('fc.') or, as before, for the wrapper's ('module.fc.').
        allow_missing = tuple(p if p.startswith("module.") else f"module.{p}" for p in allow_missing)
    may_be_missing = tuple(f"{name}." for name, m in model.named_modules()
                           if name and (is_block(m) or is_injected(m))) + allow_missing
    # A new head under allow_missing (('fc.',) for another class count): the checkpoint's differently shaped tensors
    # are left out, and those keys keep their initial values like missing ones.
    # Lazy modules' parameters have no shape yet; load_state_dict materialises them from the checkpoint.
    sized = {k for k, v in own.items() if not is_lazy(v)}
    state = {k: v for k, v in state.items()
             if not (k in sized and k.startswith(allow_missing) and v.shape != own[k].shape)}
    # Check keys and shapes before loading anything, so that a mismatch leaves the model as it was.
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in sized and v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f"checkpoint does not fit {type(model).__name__}: {len(mismatched)} tensors differ in shape "
                         f"({'; '.join(mismatched[:3])}{'...' if len(mismatched) > 3 else ''}); for a new classifier "
                         f"head pass allow_missing=('fc.',) (its prefix) to keep the model's own")
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not k.startswith(may_be_missing)
               and not k.endswith("num_batches_tracked")]  # BatchNorm fills that one itself
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match {type(model).__name__}: {len(missing)} missing keys "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    result = model.load_state_dict(state, strict=False)
    kept = [k for k in result.missing_keys if k.startswith(may_be_missing)]
    if kept:
        warnings.warn(f"{len(kept)} keys (attention blocks{', ' + ', '.join(allow_missing) if allow_missing else ''}) "
                      f"were not in the checkpoint and keep their initial values",
                      UserWarning, stacklevel=2)
    return kept
