"""ImageFolder data (ImageNet subsets, Tiny-ImageNet-200), with unreadable images counted instead of crashing.

``root/<class>/*.{jpg,png,...}`` as in torchvision's ``ImageFolder``. Tiny-ImageNet-200's validation split keeps its
own layout (``val/images/*.JPEG`` + ``val/val_annotations.txt``) and is read as is: point ``val_root`` at ``val/``.
An image that cannot be decoded yields ``None``; ``collate_skipping`` drops it and counts it, so the training loop
reports a summary (or stops, with ``on_corrupt='fail'``) instead of a worker dying mid-epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

__all__ = ["IMAGE_EXTENSIONS", "DECODE_ERRORS", "ImageFileDataset", "scan_image_folder", "scan_tiny_imagenet_val",
           "collate_skipping", "read_rgb"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# PIL's ways of saying "not an image". DecompressionBombError (a header claiming over 179 M pixels: a huge panorama or
# a corrupt size field) subclasses plain Exception, so it needs naming.
DECODE_ERRORS: tuple[type[Exception], ...] = (OSError, UnidentifiedImageError, ValueError, SyntaxError,
                                              Image.DecompressionBombError)


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode any PIL-readable image to ``(H, W, 3)`` uint8 RGB.

    Intensities are mapped to 8 bits as follows:

    - 8-bit modes (``L``, ``P``, ``RGB``, ``CMYK``, ``1``...) go through ``convert("RGB")``. Alpha (``RGBA``, ``LA``,
      ``P`` with transparency) is dropped, not composited, as timm's and torchvision's loaders do.
    - 16-bit greyscale (``I;16``, ``I;16B``, ``I;16L``) and 32-bit ``I`` whose values lie in ``0..65535`` are scaled by
      bit depth, ``round(value / 257)``, so a dark or 12-bit image stays as dark as it is (no per-image stretch).
    - ``I`` holding negative values or values above 65535 has no fixed range: it is min-max scaled to ``0..255`` per
      image.
    - ``F`` (float32, e.g. TIFF): multiplied by 255 when all finite values lie in ``[0, 1]``, else min-max scaled per
      image; NaN and inf become 0.

    A constant image that needs min-max scaling has no range to stretch; its value is clipped to ``0..255`` instead.

    Args:
        path: the image file.

    Returns:
        The ``(H, W, 3)`` uint8 array.

    Raises:
        DECODE_ERRORS: PIL cannot read or convert the file (or finds it too large).
    """
    with Image.open(path) as img:
        if img.mode.startswith("I;16") or img.mode == "I":
            grey = _integer_to_uint8(np.asarray(img).astype(np.int64))
        elif img.mode == "F":
            grey = _float_to_uint8(np.asarray(img, dtype=np.float64))
        else:
            return np.asarray(img.convert("RGB"))
    return np.repeat(grey[..., None], 3, axis=2)


def _integer_to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.size == 0 or (arr.min() >= 0 and arr.max() <= 65535):
        return np.rint(arr / 257.0).astype(np.uint8)  # 65535 / 257 == 255 exactly; 257 is odd, so no .5 ties
    return _min_max_to_uint8(arr.astype(np.float64))


def _float_to_uint8(arr: np.ndarray) -> np.ndarray:
    finite = np.isfinite(arr)
    arr = np.where(finite, arr, 0.0)
    values = arr[finite]
    if values.size == 0 or (values.min() >= 0.0 and values.max() <= 1.0):
        return np.rint(arr * 255.0).astype(np.uint8)
    return np.where(finite, _min_max_to_uint8(arr, finite), 0).astype(np.uint8)


def _min_max_to_uint8(arr: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``arr`` stretched so its smallest (valid) value is 0 and its largest 255; a constant one clipped instead."""
    values = arr if valid is None else arr[valid]
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return np.clip(np.rint((arr - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)


def scan_image_folder(
        root: str | Path,
        classes: Sequence[str] | int | None = None,
        max_per_class: int | None = None,
) -> tuple[list[tuple[str, int]], list[str]]:
    """``(path, label)`` pairs and class names of ``root/<class>/<image>``, sorted for determinism.

    Args:
        root: the folder holding one sub-folder per class.
        classes: keep these class folders (in this order), or the first N in sorted order; None keeps all.
        max_per_class: keep at most this many images per class (the first in sorted order).

    Raises:
        FileNotFoundError: ``root`` is missing or has no class folders.
        ValueError: a requested class folder does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not available:
        raise FileNotFoundError(f"{root} has no class sub-folders (expected {root}/<class>/<image>.jpg)")
    if classes is None:
        names = available
    elif isinstance(classes, int):
        if classes < 1:
            raise ValueError(f"data.classes must be >= 1 when an int, got {classes}")
        names = available[:classes]
    else:
        missing = [c for c in classes if c not in available]
        if missing:
            raise ValueError(f"data.classes names folders that {root} lacks: {missing[:5]}; it has {available[:10]}"
                             f"{'...' if len(available) > 10 else ''}")
        names = list(classes)
    samples = []
    for label, name in enumerate(names):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        samples += [(str(p), label) for p in files[:max_per_class]]
    return samples, names


def scan_tiny_imagenet_val(val_root: str | Path, class_names: Sequence[str]) -> list[tuple[str, int]]:
    """``(path, label)`` pairs of Tiny-ImageNet-200's ``val/`` (``images/`` + ``val_annotations.txt``)."""
    val_root = Path(val_root)
    index = {name: i for i, name in enumerate(class_names)}
    samples = []
    for line in (val_root / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in index:
            samples.append((str(val_root / "images" / parts[0]), index[parts[1]]))
    return sorted(samples)


class ImageFileDataset(Dataset):
    """Images read from files; an unreadable file gives ``None`` (see ``collate_skipping``), or with
    ``on_corrupt='fail'`` a ``ValueError`` that names it."""

    def __init__(self, samples: list[tuple[str, int]], classes: Sequence[str],
                 transform: Callable[..., dict[str, Any]] | None = None, on_corrupt: str = "skip") -> None:
        if on_corrupt not in ("skip", "fail"):
            raise ValueError(f"on_corrupt must be 'skip' or 'fail', got {on_corrupt!r}")
        self.samples = samples
        self.classes = tuple(classes)
        self.transform = transform
        self.on_corrupt = on_corrupt

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        path, label = self.samples[index]
        try:
            image = read_rgb(path)
        except DECODE_ERRORS as err:
            if self.on_corrupt == "fail":
                raise ValueError(f"cannot read image {path}: {err} (data.on_corrupt='fail'; set "
                                 f"data.on_corrupt=skip to skip unreadable files with a summary warning)") from None
            return None
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return image, label


def collate_skipping(batch: list[tuple[Any, int] | None]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``default_collate`` over the readable samples, plus how many were skipped."""
    kept = [item for item in batch if item is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, labels = default_collate(kept)
    return images, labels, skipped
