"""The first images of a config's validation split: raw for overlays, or as a model-ready batch with labels (and
object masks, where the data has them) for the faithfulness report. Every user of "the first N validation images"
goes through here, so all of them see the same images."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..config import DataConfig
from ..data.datasets import build_datasets, raw_images, shapes_indices

__all__ = ["validation_samples", "validation_batch"]


def _from_files(data: DataConfig) -> DataConfig:
    """``data`` reading image files as it goes: a few images need not decode a whole ``in_memory`` folder.

    The one difference: decoding up front drops unreadable files before ``data.val_split`` is drawn, so in a folder
    with unreadable files a held-out split drawn here can differ from the one training used.
    """
    return replace(data, in_memory=False) if data.in_memory else data


def validation_samples(data: DataConfig, count: int) -> list[tuple[str, np.ndarray]]:
    """The first ``count`` validation images of ``data`` as ``(name, (H, W, 3) uint8)``, before any transform.

    Overlays after training, ``visattn overlay --samples`` and the faithfulness report all explain these same images.

    Raises:
        ValueError: ``count`` is negative.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    return raw_images(build_datasets(_from_files(data)).val, count) if count else []


def validation_batch(data: DataConfig, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The first ``count`` validation images (eval transform), their labels, and object masks where the data has them.

    Raises:
        ValueError: ``count`` is not a positive int.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"num_images must be a positive int, got {count!r}")
    val = build_datasets(_from_files(data)).val
    count = min(count, len(val))
    built_in = shapes_indices(val)
    if built_in is not None:
        shapes, indices = built_in
        samples = [shapes.get_with_mask(i) for i in indices[:count]]
        images = torch.stack([s[0] for s in samples])
        masks = torch.stack([torch.as_tensor(s[1]) for s in samples]).bool()
        labels = torch.tensor([s[2] for s in samples])
        return images, labels, masks
    pairs = [val[i] for i in range(count)]
    keep = [p for p in pairs if p is not None]  # unreadable files come back as None
    return torch.stack([p[0] for p in keep]), torch.tensor([p[1] for p in keep]), None
