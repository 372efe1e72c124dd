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

__all__ = ["IMAGE_EXTENSIONS", "ImageFileDataset", "scan_image_folder", "scan_tiny_imagenet_val", "collate_skipping",
           "read_rgb"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode any PIL-readable image (greyscale, RGBA, palette, 16-bit) to ``(H, W, 3)`` uint8 RGB."""
    with Image.open(path) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: scale to 8 bits, don't clip
            arr = np.asarray(img, dtype=np.float64)
            arr = (arr / max(arr.max(), 1.0) * 255.0).astype(np.uint8)
            return np.repeat(arr[..., None], 3, axis=2)
        return np.asarray(img.convert("RGB"))


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
    """Images read from files; an unreadable file gives ``None`` (see ``collate_skipping``)."""

    def __init__(self, samples: list[tuple[str, int]], classes: Sequence[str],
                 transform: Callable[..., dict[str, Any]] | None = None) -> None:
        self.samples = samples
        self.classes = tuple(classes)
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        path, label = self.samples[index]
        try:
            image = read_rgb(path)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):  # PIL's ways of saying "not an image"
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
