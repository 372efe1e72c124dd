"""Checkpoints as single safetensors files, written atomically, read without unpickling anything.

A training checkpoint holds the model weights (``model.*``), the EMA weights (``ema.*``), the optimizer's tensors
(``optim.*``) and the RNG states (``rng.*``); everything that is not a tensor (epoch, step, metrics, optimizer
hyper-parameters, Python/NumPy RNG words) goes into the safetensors header as JSON. Safetensors cannot execute code,
so resuming from a file of unknown origin is safe.

Writes go to a temporary file in the same folder, are fsync'ed, then ``os.replace``d over the target: a process
killed at any moment leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..config import TrainConfig, config_to_dict
from ..files import atomic_write

__all__ = ["save_weights", "save_checkpoint", "load_checkpoint", "checkpoint_progress", "unwrap_model",
           "weights_metadata"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers, so state_dict keys never carry their prefixes."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _tensors(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    # safetensors wants contiguous CPU tensors that do not share storage.
    return {f"{prefix}{k}": v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def weights_metadata(cfg: TrainConfig, classes: Sequence[str], **extra: Any) -> dict[str, Any]:
    """Metadata stored with best weights: enough to rebuild the model without the run folder."""
    return {**extra, "model": cfg.model.name, "config": config_to_dict(cfg), "classes": list(classes)}


def save_weights(path: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None
                 ) -> None:
    """Write plain model weights (no prefixes) as safetensors, atomically; ``metadata`` values are JSON-encoded."""
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda tmp: save_file(_tensors(state_dict), tmp, metadata=meta))


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.state.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
                       ) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.removeprefix("optim.state.").split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, words, gauss_next = random.getstate()
    return tensors, {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [version, list(words),
                                                                                         gauss_next]}


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])  # resuming on fewer GPUs is fine
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, words, gauss_next = meta["python"]
    random.setstate((version, tuple(words), gauss_next))


def save_checkpoint(
        path: str | Path,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        ema: nn.Module | None = None,
        scaler: torch.amp.GradScaler | None = None,
        progress: Mapping[str, Any],
) -> None:
    """Write the full training state to ``path`` atomically.

    Args:
        path: the ``.safetensors`` file to (over)write.
        model: the model (wrappers are removed).
        optimizer: its optimizer.
        ema: the EMA model, if any.
        scaler: the fp16 loss scaler, if any (its scale and growth tracker: a fresh one would restart at 65536).
        progress: JSON-able run state (epoch, global step, best accuracy, ...), returned by ``load_checkpoint``.
    """
    tensors = _tensors(unwrap_model(model).state_dict(), "model.")
    if ema is not None:
        tensors.update(_tensors(ema.state_dict(), "ema."))
    optim_tensors, optim_meta = _optimizer_state(optimizer)
    rng_tensors, rng_meta = _rng_state()
    tensors.update(_tensors({**optim_tensors, **rng_tensors}))
    meta = {"progress": json.dumps(dict(progress)), "optim": json.dumps(optim_meta), "rng": json.dumps(rng_meta)}
    if scaler is not None:
        meta["scaler"] = json.dumps(scaler.state_dict())  # a few floats and ints (empty when disabled)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def checkpoint_progress(path: str | Path) -> dict[str, Any]:
    """The ``progress`` dict of a checkpoint (epoch, step, ...), read from its header alone.

    Raises:
        ValueError: if the file is not a visattn training checkpoint.
    """
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "progress" not in meta:
        raise ValueError(f"{path} is not a visattn training checkpoint (no 'progress' metadata)")
    return json.loads(meta["progress"])


def _check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse, in one sentence, a checkpoint of another architecture (torch would dump every key)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or reshaped:
        parts = [f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})" for keys, what in
                 ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape")) if keys]
        raise ValueError(f"{path} was written by another architecture than the config builds: {'; '.join(parts)} "
                         f"weights. Resume with the config it was trained with: visattn train --resume "
                         f"{path.parent} (without --config) uses the run folder's config.yaml")


def load_checkpoint(
        path: str | Path,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        ema: nn.Module | None = None,
        scaler: torch.amp.GradScaler | None = None,
        restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore what ``save_checkpoint`` wrote (in place) and return its ``progress`` dict.

    A ``scaler`` keeps its fresh state when the checkpoint holds none (it was written without fp16).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a visattn training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if "progress" not in meta:
            raise ValueError(f"{path} is not a visattn training checkpoint (no 'progress' metadata); for plain "
                             f"weights use visattn.load_weights")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no items())

    def section(prefix: str) -> dict[str, torch.Tensor]:
        return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

    weights = section("model.")
    _check_fits(unwrap_model(model), weights, path)
    unwrap_model(model).load_state_dict(weights)
    if ema is not None:
        ema.load_state_dict(section("ema."))
    if optimizer is not None:
        _restore_optimizer(optimizer, {k: v for k, v in tensors.items() if k.startswith("optim.")},
                           json.loads(meta["optim"]))
    scaler_state = json.loads(meta.get("scaler", "{}"))
    if scaler is not None and scaler_state:
        scaler.load_state_dict(scaler_state)
    if restore_rng:
        _restore_rng(tensors, json.loads(meta["rng"]))
    return json.loads(meta["progress"])
