"""Class activation maps (Grad-CAM family, Score-CAM, Eigen-CAM) and the attention blocks' own maps, batched in torch.

Example:
    >>> from visattn.cam import create_cam
    >>> with create_cam("gradcam", model) as cam:     # hooks attached; the model's state restored on exit
    ...     maps = cam(images)                         # (B, H, W) in [0, 1], on the model's device
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from .base import BaseCAM, CamResult, fuse_layer_maps, normalize_maps
from .block_maps import BlockMapReader, BlockMaps, block_maps
from .eigen import EigenCAM
from .gradient import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from .layers import LayerSpec, default_target_layer, resolve_layers
from .many import explain_many
from .score import ScoreCAM
from .targets import Targets

__all__ = [
    "create_cam", "list_cams", "canonical_cam_name", "DEFAULT_OVERLAY_METHODS", "BaseCAM", "CamResult", "GradCAM",
    "GradCAMPlusPlus", "XGradCAM",
    "HiResCAM", "LayerCAM", "ScoreCAM", "EigenCAM", "explain_many", "block_maps", "BlockMaps", "BlockMapReader",
    "Targets", "LayerSpec",
    "default_target_layer", "resolve_layers", "normalize_maps", "fuse_layer_maps",
]

_METHODS: dict[str, type[BaseCAM]] = {
    cls.name: cls for cls in (GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM, ScoreCAM, EigenCAM)}
# What overlays show unless told otherwise: the three gradient maps that differ most, and a class-agnostic one.
# Score-CAM is left out because it needs one forward pass per channel.
DEFAULT_OVERLAY_METHODS = ("gradcam", "gradcam++", "layercam", "eigencam")
_ALIASES = {"gradcampp": "gradcam++", "gradcam_pp": "gradcam++", "grad-cam": "gradcam", "score-cam": "scorecam",
            "eigen-cam": "eigencam", "layer-cam": "layercam", "hires-cam": "hirescam", "xgrad-cam": "xgradcam"}


def list_cams() -> list[str]:
    """Names accepted by :func:`create_cam`, in a stable order."""
    return list(_METHODS)


def canonical_cam_name(name: str) -> str:
    """The registered name for ``name`` or an alias of it (case-insensitive).

    Raises:
        ValueError: an unknown name, listing the valid ones.
    """
    if not isinstance(name, str):
        raise TypeError(f"method must be a string, got {type(name).__name__}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _METHODS:
        close = difflib.get_close_matches(key, list(_METHODS) + list(_ALIASES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown CAM method {name!r}{hint}; valid: {', '.join(_METHODS)}")
    return key


def create_cam(name: str, model: nn.Module, target_layers: LayerSpec = None, **kwargs: Any) -> BaseCAM:
    """Build a CAM method by name (see :func:`list_cams`) for ``model``.

    Args:
        name: method name or alias, e.g. ``'gradcam'``, ``'gradcam++'``, ``'scorecam'``.
        model: the classifier.
        target_layers: module name(s) / pattern(s) / module(s), or None for the last spatial stage.
        **kwargs: method options (e.g. ``batch_size`` for Score-CAM).
    """
    return _METHODS[canonical_cam_name(name)](model, target_layers, **kwargs)
