"""Load a trained model back for inference: from a run folder, or from a weights file that carries its config.

Weights written by ``visattn train`` (``best.safetensors``) store the resolved config and the class names in their
safetensors metadata, so one file is enough to rebuild the model, its class names and its eval preprocessing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ..models import load_weights
from .config import TrainConfig
from .config_loader import config_from_dict, config_to_dict, load_config, merge_overrides
from .model import build_model

__all__ = ["TrainedModel", "load_trained", "weights_metadata"]


@dataclass
class TrainedModel:
    """A model rebuilt from training outputs, in eval mode.

    Attributes:
        model: the network with its trained weights.
        config: the training config (its ``data`` section gives the eval preprocessing).
        classes: class names, index-aligned with the logits.
        weights: the weights file that was loaded.
    """

    model: nn.Module
    config: TrainConfig
    classes: list[str]
    weights: Path


def weights_metadata(cfg: TrainConfig, classes: Sequence[str], **extra: Any) -> dict[str, Any]:
    """Metadata stored with best weights: enough to rebuild the model without the run folder."""
    return {**extra, "model": cfg.model.name, "config": config_to_dict(cfg), "classes": list(classes)}


def _metadata(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    out = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _classifier_outputs(path: Path) -> int | None:
    with safe_open(str(path), framework="pt") as f:
        for name in ("fc.weight", "head.fc.weight", "classifier.weight", "head.weight"):
            if name in f.keys():  # noqa: SIM118 - safe_open has keys(), not __contains__
                return int(f.get_slice(name).get_shape()[0])
    return None


def load_trained(
        source: str | Path,
        *,
        config: str | Path | None = None,
        overrides: Sequence[str] = (),
        device: str | torch.device = "cpu",
) -> TrainedModel:
    """Rebuild a trained model from a run folder or a weights file.

    Args:
        source: a run folder (``config.yaml`` + ``best.safetensors``) or a ``.safetensors`` weights file.
        config: a YAML config to use instead of the one stored with the weights (needed for weights without one).
        overrides: ``key=value`` config overrides (e.g. ``data.image_size=64``).
        device: where to put the model.

    Returns:
        A :class:`TrainedModel` in eval mode.

    Raises:
        FileNotFoundError: ``source`` does not exist, or a run folder lacks its files.
        ValueError: no config can be found for the weights, or the weights do not fit the model.

    Example:
        >>> trained = load_trained("weights/quickstart_resnet18_cbam_shapes.safetensors")
        >>> trained.classes[:3]
        ['circle', 'square', 'triangle']
    """
    path = Path(source)
    if path.is_dir():
        weights = path / "best.safetensors"
        config = config if config is not None else path / "config.yaml"
        for needed in (weights, Path(config)):
            if not needed.is_file():
                raise FileNotFoundError(f"run folder {str(path)!r} has no {needed.name}; expected the output of "
                                        "'visattn train'")
    elif path.is_file():
        weights = path
    else:
        raise FileNotFoundError(f"source={str(source)!r} is neither a run folder nor a weights file")

    meta = _metadata(weights)
    if config is not None:
        cfg = load_config(TrainConfig, config, overrides)
    elif isinstance(meta.get("config"), dict):
        cfg = config_from_dict(TrainConfig, merge_overrides(meta["config"], overrides))
    else:
        raise ValueError(f"{str(weights)!r} carries no training config in its metadata; pass the YAML config it was "
                         "trained with (--config)")
    cfg = replace(cfg, model=replace(cfg.model, pretrained=None))  # the weights below replace any starting point

    classes = meta.get("classes")
    outputs = _classifier_outputs(weights)
    if not isinstance(classes, list) or (outputs is not None and len(classes) != outputs):
        count = outputs if outputs is not None else 1000
        classes = [f"class_{i}" for i in range(count)]
    model, _ = build_model(cfg.model, num_classes=len(classes))
    load_weights(model, weights)
    return TrainedModel(model.to(device).eval(), cfg, [str(c) for c in classes], weights)

