"""Decode an image folder once into memory, and hold a validation split out of a training set.

Small-image data sets (CIFAR as JPEGs, Tiny-ImageNet) spend more CPU time decoding files than augmenting them; on a
2-core machine that time comes straight out of training. ``decode_all`` reads every file once, in threads (Pillow
releases the GIL while it decodes), so each epoch only augments uint8 arrays.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from .folder import DECODE_ERRORS, read_rgb

__all__ = ["decode_all", "holdout_indices"]


def decode_all(paths: Sequence[str], *, on_corrupt: str = "skip", progress: bool = True,
               workers: int | None = None) -> tuple[list[np.ndarray], list[int]]:
    """Decode ``paths`` to ``(H, W, 3)`` uint8 arrays, in order.

    Args:
        paths: image files.
        on_corrupt: ``'skip'`` leaves unreadable files out and warns once, naming the first few; ``'fail'`` raises.
        progress: show a progress bar (tqdm decides whether the stream is a terminal).
        workers: decoding threads; default: the CPU count, at most 8.

    Returns:
        The decoded images and the indices into ``paths`` that they come from (all of them unless some were skipped).

    Raises:
        ValueError: ``on_corrupt='fail'`` and a file cannot be decoded; the message names it.
    """
    if on_corrupt not in ("skip", "fail"):
        raise ValueError(f"on_corrupt must be 'skip' or 'fail', got {on_corrupt!r}")

    def read(path: str) -> np.ndarray | BaseException:
        try:
            return read_rgb(path)
        except DECODE_ERRORS as err:
            return err

    workers = workers or min(8, os.cpu_count() or 1)
    images: list[np.ndarray] = []
    kept: list[int] = []
    unreadable: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(read, paths, chunksize=256)
        bar = tqdm(results, total=len(paths), desc="decoding images into memory", unit="img", leave=False,
                   disable=None if progress else True, dynamic_ncols=True)
        for index, result in enumerate(bar):
            if isinstance(result, BaseException):
                if on_corrupt == "fail":
                    raise ValueError(f"cannot read image {paths[index]}: {result} (data.on_corrupt='fail'; set "
                                     f"data.on_corrupt=skip to leave unreadable files out)")
                unreadable.append(paths[index])
                continue
            images.append(result)
            kept.append(index)
    if unreadable:
        shown = ", ".join(unreadable[:3]) + (f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else "")
        warnings.warn(f"left out {len(unreadable)} unreadable image(s) while decoding into memory: {shown}",
                      UserWarning, stacklevel=2)
    return images, kept


def holdout_indices(targets: Sequence[int], size: int | float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(targets))`` into ``(kept, held_out)``, stratified by class, both sorted.

    Each class gives its share of ``size`` (largest remainders get the rounding), drawn at random with ``seed``, so
    the held-out set has the class balance of the whole.

    Args:
        targets: the class index of every sample.
        size: how many samples to hold out (int >= 1), or which fraction of them (float in (0, 1)).
        seed: the draw's seed.

    Raises:
        ValueError: ``size`` is not a count below ``len(targets)`` or a fraction in (0, 1).
    """
    targets = np.asarray(targets)
    total = len(targets)
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ValueError(f"data.val_split must be a count or a fraction, got {size!r}")
    count = round(size * total) if isinstance(size, float) else size
    if isinstance(size, float) and not 0 < size < 1:
        raise ValueError(f"data.val_split as a fraction must lie in (0, 1), got {size}")
    if not 1 <= count < total:
        raise ValueError(f"data.val_split={size} holds out {count} of {total} training images; it must leave at "
                         f"least one on each side")
    classes, per_class = np.unique(targets, return_counts=True)
    exact = per_class * count / total
    share = np.floor(exact).astype(int)
    remainder_order = np.argsort(-(exact - share), kind="stable")
    share[remainder_order[:count - share.sum()]] += 1
    rng = np.random.default_rng(seed)
    held = [rng.permutation(np.flatnonzero(targets == c))[:n] for c, n in zip(classes, share, strict=True)]
    held_out = np.sort(np.concatenate(held))
    kept = np.setdiff1d(np.arange(total), held_out, assume_unique=True)
    return kept, held_out
