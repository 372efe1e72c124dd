"""Side inputs: a feature vector per image (metadata, measurements) for fusion models.

An image folder's vectors come from a CSV file: one row per image, its path relative to the folder in one column and
the features in others. Everything is checked before training starts, and a bad file is named with the row:
missing rows, repeated rows, missing columns, values that are not numbers, NaN and infinities. The built-in shapes
data makes its own: the class's one-hot code plus Gaussian noise, informative but noisy, so that neither the image
nor the vector alone is the whole answer.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import DataConfig, SideConfig

__all__ = ["SideDataset", "read_side_csv", "shapes_side", "side_width"]


def side_width(data: DataConfig) -> int | None:
    """The side vector's width that ``data`` gives, or None without a side input."""
    if data.side is None:
        return None
    return len(data.side.columns) if data.side.columns is not None else data.side.features


def read_side_csv(path: str | Path, images: Sequence[str], root: str | Path, side: SideConfig) -> np.ndarray:
    """The ``(len(images), F)`` float32 vectors of ``images`` (paths under ``root``), from the CSV at ``path``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a missing or repeated column or row, or a value that is not a finite number; the message names
            the file, the row (as a spreadsheet numbers it, the header being row 1) and the column.
    """
    path, root = Path(path).expanduser(), Path(root).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data.side csv {str(path)!r} does not exist")
    columns = list(side.columns or [])
    rows: dict[str, tuple[int, dict[str, str]]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in [side.file_column, *columns] if c not in header]
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing}; its header has {header}")
        for number, row in enumerate(reader, start=2):
            key = Path(row[side.file_column].strip()).as_posix()
            if key in rows:
                raise ValueError(f"{path} rows {rows[key][0]} and {number} both describe {key!r}")
            rows[key] = (number, row)
    out = np.empty((len(images), len(columns)), np.float32)
    absent = []
    for i, image in enumerate(images):
        key = Path(image).relative_to(root).as_posix()
        if key not in rows:
            absent.append(key)
            continue
        number, row = rows[key]
        for j, column in enumerate(columns):
            out[i, j] = _number(row[column], path, number, key, column)
    if absent:
        more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
        raise ValueError(f"{path} has no row for image {absent[0]!r}{', ' if len(absent) > 1 else ''}"
                         f"{', '.join(repr(a) for a in absent[1:3])}{more} (its {side.file_column!r} column holds "
                         f"paths relative to {root})")
    return out


def _number(text: str | None, path: Path, number: int, key: str, column: str) -> float:
    where = f"{path} row {number} ({key!r}), column {column!r}"
    try:
        value = float((text or "").strip())
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: {text!r} is not a finite number")
    return value


def shapes_side(labels: Sequence[int], classes: int, side: SideConfig, seed: int, split: str) -> np.ndarray:
    """The built-in data's side vectors: the one-hot code of each label in the first ``classes`` of
    ``side.features`` dimensions, plus ``N(0, side.noise^2)`` noise everywhere; the same for the same seed and split.
    """
    if side.features < classes:
        raise ValueError(f"data.side.features={side.features} leaves classes {side.features}..{classes - 1} without a "
                         f"code; use at least {classes}")
    rng = np.random.default_rng([seed, {"train": 0, "val": 1}[split], 0x51DE])
    out = rng.standard_normal((len(labels), side.features)).astype(np.float32) * np.float32(side.noise)
    out[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)] += 1.0
    return out


class SideDataset(Dataset):
    """A data set whose samples ``(image, label)`` become ``((image, side vector), label)``.

    Args:
        base: the image data set (an unreadable image stays None, as the loaders expect).
        side: ``(len(base), F)`` vectors, aligned with ``base``.
    """

    def __init__(self, base: Any, side: np.ndarray) -> None:
        if len(side) != len(base):
            raise ValueError(f"side has {len(side)} rows for {len(base)} images")
        self.base = base
        self.side = torch.from_numpy(np.ascontiguousarray(side, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[tuple[Any, torch.Tensor], int] | None:
        item = self.base[index]
        if item is None:
            return None
        image, label = item
        return (image, self.side[index]), label

    @property
    def classes(self) -> tuple[str, ...]:
        return self.base.classes

    @property
    def targets(self) -> list[int]:
        return list(self.base.targets)

    @property
    def transform(self) -> Any:  # the training loop seeds the augmentation it finds here
        return getattr(self.base, "transform", None)

    @property
    def features(self) -> int:
        return int(self.side.shape[1])
