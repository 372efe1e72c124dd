"""Load a trained model back for inference: from a run folder, or from a weights file that carries its config.

Weights written by ``visattn train`` (``best.safetensors``) store the resolved config and the class names in their
safetensors metadata, so one file is enough to rebuild the model, its class names and its eval preprocessing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import timm
import torch
from safetensors.torch import load_file
from timm.data import ImageNetInfo, infer_imagenet_subset
from torch import nn

from ..config import TrainConfig
from ..config.loader import config_from_dict, load_config, merge_overrides
from ..data.side import side_width
from ..models import load_weights, read_state_dict
from ..models.weights import read_metadata
from ..training.model import build_model

__all__ = ["TrainedModel", "load_trained", "class_names", "timm_eval_config"]


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


def _read_weights(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    if "progress" in meta:  # a training checkpoint (last.safetensors): the model's tensors carry a 'model.' prefix
        state = load_file(str(path))
        return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    return read_state_dict(path)


def _classifier_outputs(state: dict[str, torch.Tensor]) -> int | None:
    for name in ("fc.weight", "head.fc.weight", "classifier.weight", "head.weight"):
        if name in state and state[name].ndim == 2:
            return int(state[name].shape[0])
    return None


# timm's interpolation names as OpenCV flags (albumentations resizes with OpenCV).
_CV2_INTERPOLATION = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                      "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}


def class_names(num_classes: int, *, imagenet: bool = True) -> list[str]:
    """Class names for a classifier without its own: with ``imagenet``, timm's ImageNet names (each synset's first
    name) when the width is an ImageNet subset's (1k, 12k, 21k/22k); otherwise ``class_0``, ``class_1``, ..."""
    subset = infer_imagenet_subset({"num_classes": num_classes}) if imagenet else None
    if subset is None:
        return [f"class_{i}" for i in range(num_classes)]
    info = ImageNetInfo(subset)
    return [info.index_to_description(i).split(",")[0].strip() for i in range(num_classes)]


def timm_eval_config(model_name: str, overrides: Sequence[str]) -> TrainConfig:
    """Eval preprocessing from the timm model's pretrained config, as ``timm.data.create_transform`` builds it:
    resize the short side (both sides for ``crop_mode='squash'``) to ``floor(size / crop_pct)`` with its
    interpolation, centre-crop ``size``, its mean and std. Resizing goes through OpenCV, which does not antialias a
    large downscale as PIL does: pixel values differ a little from timm's, the geometry does not."""
    if not timm.is_model(model_name):
        raise ValueError(f"model={model_name!r} is not a timm model name; e.g. {timm.list_models('resnet*')[:4]}")
    pretrained = timm.models.get_pretrained_cfg(model_name)
    size = pretrained.input_size[-1] if pretrained is not None else 224
    mean = list(pretrained.mean) if pretrained is not None else [0.485, 0.456, 0.406]
    std = list(pretrained.std) if pretrained is not None else [0.229, 0.224, 0.225]
    crop_pct = (pretrained.crop_pct if pretrained is not None else None) or 0.875
    interpolation = _CV2_INTERPOLATION.get(pretrained.interpolation if pretrained is not None else "", cv2.INTER_LINEAR)
    cfg = load_config(TrainConfig, None, [f"model.name={model_name}", f"data.image_size={size}",
                                          "data.augment=imagenet", f"data.mean={mean}", f"data.std={std}",
                                          *overrides])
    if cfg.data.eval_transforms is None:  # an override's own list wins
        size = cfg.data.image_size  # the pretrained cfg's, unless an override set another
        scale = math.floor(size / crop_pct)
        squash = pretrained is not None and getattr(pretrained, "crop_mode", "center") == "squash"
        resize = ({"name": "Resize", "height": scale, "width": scale, "interpolation": interpolation} if squash
                  else {"name": "SmallestMaxSize", "max_size": scale, "interpolation": interpolation})
        cfg.data.eval_transforms = [resize, {"name": "CenterCrop", "height": size, "width": size}]
    return cfg


def load_trained(
        source: str | Path,
        *,
        config: str | Path | None = None,
        model_name: str | None = None,
        overrides: Sequence[str] = (),
        device: str | torch.device = "cpu",
) -> TrainedModel:
    """Rebuild a trained model from a run folder or a weights file.

    Args:
        source: a run folder (``config.yaml`` + ``best.safetensors``, else ``last.safetensors``), or a weights file:
            ``best.safetensors`` / ``last.safetensors`` from ``visattn train``, any ``.safetensors`` state_dict, or a
            torch state_dict file (read with ``weights_only=True``).
        config: a YAML config to use instead of the one stored with the weights.
        model_name: a timm model name, for plain weights without a config: preprocessing then follows the model's
            pretrained config (input size, mean, std, centre crop).
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
    path = Path(source).expanduser()
    if path.is_dir():
        found = [path / n for n in ("best.safetensors", "last.safetensors") if (path / n).is_file()]
        config = config if config is not None else path / "config.yaml"
        if not found or not Path(config).is_file():
            missing = "best.safetensors or last.safetensors" if not found else Path(config).name
            raise FileNotFoundError(f"run folder {str(path)!r} has no {missing}; expected the output of "
                                    "'visattn train'")
        weights = found[0]
    elif path.is_file():
        weights = path
    else:
        raise FileNotFoundError(f"source={str(source)!r} is neither a run folder nor a weights file")

    meta = read_metadata(weights)
    state = _read_weights(weights, meta)
    if config is not None:
        cfg = load_config(TrainConfig, config, overrides)
    elif model_name is not None:
        cfg = timm_eval_config(model_name, overrides)
    elif isinstance(meta.get("config"), dict):
        cfg = config_from_dict(TrainConfig, merge_overrides(meta["config"], overrides))
    else:
        raise ValueError(f"{str(weights)!r} carries no training config in its metadata; pass the YAML config it was "
                         "trained with (--config) or its timm model name (--model)")
    cfg = replace(cfg, model=replace(cfg.model, pretrained=None))  # the weights below replace any starting point

    classes = meta.get("classes")
    outputs = _classifier_outputs(state)
    if not isinstance(classes, list) or (outputs is not None and len(classes) != outputs):
        # A timm model's plain weights: ImageNet names when the classifier has an ImageNet subset's width.
        classes = class_names(outputs if outputs is not None else 1000, imagenet=model_name is not None)
    model, _ = build_model(cfg.model, num_classes=len(classes), side_features=side_width(cfg.data))
    load_weights(model, state)
    return TrainedModel(model.to(device).eval(), cfg, [str(c) for c in classes], weights)

