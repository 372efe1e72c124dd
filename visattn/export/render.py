"""Heatmap to colour, and colour over the image: the two pixel operations every overlay is made of."""

from __future__ import annotations

import difflib
from numbers import Real
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.colors import Colormap
from PIL import Image

__all__ = ["colorize", "blend", "check_image"]

# Maps from min-max normalised CAMs carry float32 rounding just outside [0, 1]; anything further out is a caller bug.
_RANGE_TOLERANCE = 1e-6
_SUGGESTED_CMAPS = ("jet", "turbo", "viridis", "inferno", "magma", "plasma", "gray")


def _check_heatmap(heatmap: Any, name: str = "heatmap") -> np.ndarray:
    """Validate a 2-D map in [0, 1] (numpy or torch, any device) and return it as float32 numpy, clipped."""
    if isinstance(heatmap, torch.Tensor):
        heatmap = heatmap.detach().to("cpu", torch.float32).numpy()
    if not isinstance(heatmap, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(heatmap).__name__}")
    if heatmap.dtype == bool or not (np.issubdtype(heatmap.dtype, np.floating)
                                     or np.issubdtype(heatmap.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {heatmap.dtype}")
    if heatmap.ndim != 2 or heatmap.size == 0:
        hint = " (squeeze the batch/channel axes first)" if heatmap.ndim > 2 and heatmap.size else ""
        raise ValueError(f"{name} must be a non-empty 2-D (H, W) map, got shape {tuple(heatmap.shape)}{hint}")
    heatmap = heatmap.astype(np.float32, copy=False)
    if not np.isfinite(heatmap).all():
        raise ValueError(f"{name} must be finite, got {int((~np.isfinite(heatmap)).sum())} NaN/inf value(s)")
    low, high = float(heatmap.min()), float(heatmap.max())
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{low:.6g}, {high:.6g}]; normalise it first "
                         f"(e.g. (x - x.min()) / (x.max() - x.min()))")
    return np.clip(heatmap, 0.0, 1.0)


def check_image(image: Any, name: str = "image") -> np.ndarray:
    """Validate an ``(H, W, 3)`` uint8 RGB numpy image."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 RGB in [0, 255], got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} must have shape (H, W, 3), got {tuple(image.shape)}")
    return image


def _get_cmap(cmap: str | Colormap) -> Colormap:
    if isinstance(cmap, Colormap):
        return cmap
    if not isinstance(cmap, str):
        raise TypeError(f"cmap must be a matplotlib colormap name or Colormap, got {type(cmap).__name__}")
    if cmap not in matplotlib.colormaps:
        close = difflib.get_close_matches(cmap, list(matplotlib.colormaps), n=3)
        raise ValueError(f"cmap {cmap!r} is not a matplotlib colormap; did you mean {close or 'one of'} "
                         f"{list(_SUGGESTED_CMAPS)}? (all names: list(matplotlib.colormaps))")
    return matplotlib.colormaps[cmap]


def _colour(heat: np.ndarray, cmap: Colormap) -> np.ndarray:
    # Float RGBA then rounding, not bytes=True: matplotlib truncates there, so 0.5 * 255 would become 127, not 128.
    return np.rint(cmap(heat)[..., :3] * 255.0).astype(np.uint8)


def colorize(heatmap: np.ndarray | torch.Tensor, cmap: str | Colormap = "jet") -> np.ndarray:
    """Map a ``[0, 1]`` heatmap to RGB colours with a matplotlib colormap.

    Args:
        heatmap: ``(H, W)`` map in ``[0, 1]``, numpy or torch (any device, any real dtype). Values up to ``1e-6``
            outside the range are clipped.
        cmap: a name in ``matplotlib.colormaps`` or a ``Colormap``.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        TypeError: ``heatmap`` is not a real-valued array/tensor, or ``cmap`` is not a name/Colormap.
        ValueError: ``heatmap`` is not 2-D, holds NaN/inf or leaves ``[0, 1]``; ``cmap`` is an unknown name.

    Example:
        >>> colorize(np.linspace(0, 1, 16).reshape(4, 4), cmap="viridis").shape
        (4, 4, 3)
    """
    return _colour(_check_heatmap(heatmap), _get_cmap(cmap))


def _resize_map(heat: np.ndarray, height: int, width: int) -> np.ndarray:
    if heat.shape == (height, width):
        return heat
    # PIL's "F" (float32) mode keeps full precision; its bilinear weights are non-negative, so [0, 1] is kept.
    resized = Image.fromarray(np.ascontiguousarray(heat)).resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def blend(image: np.ndarray, heatmap: np.ndarray | torch.Tensor, *, alpha: float = 0.5,
          cmap: str | Colormap = "jet") -> np.ndarray:
    """Overlay a coloured heatmap on an image: ``(1 - alpha) * image + alpha * colorize(heatmap)``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        heatmap: map in ``[0, 1]`` as for ``colorize``; resized (bilinear) to ``(H, W)`` when its size differs.
        alpha: weight of the colour, in ``[0, 1]``: 0 gives the image back, 1 the colour alone.
        cmap: a name in ``matplotlib.colormaps`` or a ``Colormap``.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        TypeError: ``image`` is not a uint8 array, ``alpha`` not a number, or as ``colorize``.
        ValueError: ``image`` is not ``(H, W, 3)``, ``alpha`` is outside ``[0, 1]``, or as ``colorize``.

    Example:
        >>> overlay = blend(image, cam, alpha=0.4, cmap="turbo")  # doctest: +SKIP
    """
    image = check_image(image)
    if isinstance(alpha, bool) or not isinstance(alpha, Real):
        raise TypeError(f"alpha must be a number in [0, 1], got {type(alpha).__name__}: {alpha!r}")
    if not 0.0 <= float(alpha) <= 1.0:  # also rejects NaN
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    colour_map = _get_cmap(cmap)
    heat = _resize_map(_check_heatmap(heatmap), image.shape[0], image.shape[1])
    mixed = (1.0 - float(alpha)) * image.astype(np.float32) + float(alpha) * _colour(heat, colour_map)
    return np.rint(mixed).clip(0, 255).astype(np.uint8)
