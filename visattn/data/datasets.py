"""Build the train and validation data sets named by a config's data section."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..config import DataConfig
from .cifar import load_cifar
from .folder import DECODE_ERRORS, ImageFileDataset, read_rgb, scan_image_folder, scan_tiny_imagenet_val
from .memory import decode_all, holdout_indices
from .side import SideDataset, read_side_csv, shapes_side
from .synthetic import ShapesDataset
from .transforms import build_transform

__all__ = ["ArrayDataset", "DataBundle", "build_datasets"]


class ArrayDataset(Dataset):
    """In-memory ``(H, W, 3)`` uint8 images (one array, or a list of them) with labels, through a transform.

    ``names`` label the images in overlays and reports (file paths for a decoded folder); default ``val_0000``...
    """

    def __init__(self, images: np.ndarray | Sequence[np.ndarray], targets: list[int], classes: Sequence[str],
                 transform: Callable[..., dict[str, Any]] | None = None, names: Sequence[str] | None = None) -> None:
        if names is not None and len(names) != len(targets):
            raise ValueError(f"names has {len(names)} entries for {len(targets)} images")
        self.images = images
        self.targets = targets
        self.classes = tuple(classes)
        self.transform = transform
        self.names = list(names) if names is not None else None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return image, self.targets[index]

    def name(self, index: int) -> str:
        """How image ``index`` is labelled in overlays."""
        return self.names[index] if self.names is not None else f"val_{index:04d}"


def raw_images(dataset: Dataset, count: int) -> list[tuple[str, np.ndarray]]:
    """The first ``count`` images of a data set as ``(name, RGB uint8)``, before any transform (for overlays)."""
    count = min(count, len(dataset))  # type: ignore[arg-type]
    if isinstance(dataset, SideDataset):
        return raw_images(dataset.base, count)
    built_in = shapes_indices(dataset)
    if built_in is not None:
        shapes, indices = built_in
        return [(f"val_{i:04d}", shapes.sample(j).image) for i, j in enumerate(indices[:count])]
    if isinstance(dataset, ArrayDataset):
        return [(dataset.name(i), dataset.images[i]) for i in range(count)]
    if isinstance(dataset, ImageFileDataset):
        images = []
        for path, _ in dataset.samples[:count]:
            try:
                images.append((path, read_rgb(path)))
            except DECODE_ERRORS as err:  # an unreadable file is skipped, as in training
                warnings.warn(f"skipped unreadable image {path}: {err}", UserWarning, stacklevel=2)
        return images
    raise TypeError(f"cannot read raw images from {type(dataset).__name__}")


def shapes_indices(dataset: Dataset) -> tuple[ShapesDataset, list[int]] | None:
    """The built-in data behind ``dataset`` and where its samples sit in it, or None for other data.

    A ``data.val_split`` of the built-in data is an :class:`IndexedDataset` over the generated train split; readers
    of what only the built-in data has (raw renders, object masks) reach it through here.
    """
    if isinstance(dataset, IndexedDataset) and isinstance(dataset.base, ShapesDataset):
        return dataset.base, dataset.indices
    if isinstance(dataset, ShapesDataset):
        return dataset, list(range(len(dataset)))
    return None


@dataclass
class DataBundle:
    """The two splits and what the model needs to know about them."""

    train: Dataset
    val: Dataset
    classes: tuple[str, ...]
    test: Dataset | None = None  # with data.val_split: the data set's own val / test split, scored at the end

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _require_root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise ValueError(f"data.root must name a folder for data.name={cfg.name!r}; the built-in data needs none: "
                         f"data.name=shapes")
    return Path(cfg.root).expanduser()


def _subset(n: int | None, size: int, seed: int) -> np.ndarray:
    """All indices, or ``n`` of them spread over the whole set (files are sorted by class), in order."""
    if n is None or n >= size:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).permutation(size)[:n])


class _Source:
    """One split's images before any transform: file samples or decoded arrays, and a way to make data sets."""

    def __init__(self, targets: list[int], classes: Sequence[str], *, samples: list[tuple[str, int]] | None = None,
                 images: np.ndarray | list[np.ndarray] | None = None, names: list[str] | None = None) -> None:
        self.targets, self.classes, self.samples, self.images, self.names = targets, classes, samples, images, names
        self.side: np.ndarray | None = None  # a feature vector per sample (data.side)
        self.on_corrupt = "skip"  # what an unreadable file does: skipped, or a ValueError naming it

    @property
    def paths(self) -> list[str]:
        """The image files, where the samples come from files."""
        return [path for path, _ in self.samples] if self.samples is not None else list(self.names or [])

    def take(self, indices: np.ndarray | None, transform: Callable[..., dict[str, Any]]) -> Dataset:
        """The data set of the samples at ``indices`` (all with None) through ``transform``."""
        keep = np.arange(len(self.targets)) if indices is None else indices
        dataset: Dataset
        if self.samples is not None:
            dataset = ImageFileDataset([self.samples[i] for i in keep], self.classes, transform, self.on_corrupt)
        else:
            assert self.images is not None
            images = self.images[keep] if isinstance(self.images, np.ndarray) else [self.images[i] for i in keep]
            names = [self.names[i] for i in keep] if self.names is not None else None
            dataset = ArrayDataset(images, [self.targets[i] for i in keep], self.classes, transform, names)
        return SideDataset(dataset, self.side[keep]) if self.side is not None else dataset


def _file_source(samples: list[tuple[str, int]], classes: Sequence[str], cfg: DataConfig) -> _Source:
    if not cfg.in_memory:
        source = _Source([label for _, label in samples], classes, samples=samples)
        source.on_corrupt = cfg.on_corrupt
        return source
    paths = [path for path, _ in samples]
    images, kept = decode_all(paths, on_corrupt=cfg.on_corrupt)
    return _Source([samples[i][1] for i in kept], classes, images=images, names=[paths[i] for i in kept])


def _bundle(cfg: DataConfig, train: _Source, evaluation: _Source, native_size: int | None) -> DataBundle:
    """Train and val sets, with ``data.val_split`` held out of ``train`` (then ``evaluation`` is the test set)."""
    train_tf = build_transform(cfg, train=True, native_size=native_size)
    eval_tf = build_transform(cfg, train=False, native_size=native_size)
    classes = tuple(train.classes)
    if cfg.val_split is None:
        return DataBundle(train.take(None, train_tf), evaluation.take(None, eval_tf), classes)
    kept, held_out = holdout_indices(train.targets, cfg.val_split, cfg.seed)
    return DataBundle(train.take(kept, train_tf), train.take(held_out, eval_tf), classes,
                      test=evaluation.take(None, eval_tf))


class IndexedDataset(Dataset):
    """The samples of ``base`` at ``indices``, in that order (a held-out part of a generated split)."""

    def __init__(self, base: Any, indices: Sequence[int]) -> None:
        self.base, self.indices = base, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.base[self.indices[index]]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.base.classes)

    @property
    def targets(self) -> list[int]:
        targets = self.base.targets
        return [targets[i] for i in self.indices]

    @property
    def transform(self) -> Any:
        return getattr(self.base, "transform", None)


def _shapes(cfg: DataConfig) -> DataBundle:
    """The built-in data: generated train and val splits (and with ``val_split``, val held out of train and the
    generated val split as the test set), with side vectors where ``cfg.side`` asks for them."""
    def split(name: str, n: int | None, train: bool) -> ShapesDataset:
        return ShapesDataset(name, num_samples=n, image_size=cfg.image_size, seed=cfg.seed,
                             transform=build_transform(cfg, train=train, native_size=cfg.image_size))

    def with_side(ds: Any, name: str, rows: np.ndarray | None = None) -> Any:
        if cfg.side is None:
            return ds
        side = shapes_side(ds.targets if rows is None else ds.base.targets, len(ShapesDataset.classes), cfg.side,
                           cfg.seed, name)
        return SideDataset(ds, side if rows is None else side[rows])

    train, val = split("train", cfg.num_train, True), split("val", cfg.num_val, False)
    classes = tuple(train.classes)
    if cfg.val_split is None:
        return DataBundle(with_side(train, "train"), with_side(val, "val"), classes)
    kept, held_out = holdout_indices(train.targets, cfg.val_split, cfg.seed)
    # The held-out images get the evaluation transform: the same generated split (its rendered arrays shared, as
    # sample() hands out copies), seen through another pipeline.
    train_eval = copy.copy(train)
    train_eval.transform = build_transform(cfg, train=False, native_size=cfg.image_size)
    return DataBundle(with_side(IndexedDataset(train, kept), "train", kept),
                      with_side(IndexedDataset(train_eval, held_out), "train", held_out), classes,
                      test=with_side(val, "val"))


def build_datasets(cfg: DataConfig) -> DataBundle:
    """Train and validation (and with ``data.val_split``, test) sets for ``cfg``, each with its albumentations
    pipeline attached.

    Raises:
        FileNotFoundError: the data is not where ``cfg`` says; the message says what was expected there.
        ValueError: inconsistent data options.
    """
    if cfg.name == "shapes":
        return _shapes(cfg)

    if cfg.name in ("cifar10", "cifar100"):
        root = _require_root(cfg)
        splits = {}
        for split, n in (("train", cfg.num_train), ("test", cfg.num_val)):
            images, labels, classes = load_cifar(cfg.name, root, split, download=cfg.download)
            keep = _subset(n, len(labels), cfg.seed)
            splits[split] = _Source([labels[i] for i in keep], classes, images=images[keep])
        return _bundle(cfg, splits["train"], splits["test"], native_size=32)

    # imagefolder
    root = _require_root(cfg)
    if not cfg.val_root:
        raise ValueError("data.val_root must name the validation folder for data.name='imagefolder'")
    val_root = Path(cfg.val_root).expanduser()
    train_samples, classes = scan_image_folder(root, cfg.classes, cfg.max_per_class)
    # Tiny-ImageNet-200's validation layout: images/ plus val_annotations.txt. A copy re-sorted into class folders
    # often keeps the annotations file; then the folders are what holds the images.
    if (val_root / "val_annotations.txt").is_file() and (val_root / "images").is_dir():
        val_samples = scan_tiny_imagenet_val(val_root, classes)
        if not val_samples:
            raise ValueError(f"{val_root / 'val_annotations.txt'} lists no image of data.root's classes "
                             f"{classes[:5]}{'...' if len(classes) > 5 else ''}")
        if not any(Path(path).is_file() for path, _ in val_samples):
            raise FileNotFoundError(f"none of the {len(val_samples)} images that {val_root / 'val_annotations.txt'}"
                                    f" lists is in {val_root / 'images'}")
    else:
        missing = [c for c in classes if not (val_root / c).is_dir()]
        if missing:  # checked here: scan_image_folder would blame data.classes, which the user may not have set
            raise ValueError(f"data.val_root {str(val_root)!r} lacks class folder(s) that data.root has: "
                             f"{missing[:5]}{'...' if len(missing) > 5 else ''}")
        val_samples, val_classes = scan_image_folder(val_root, classes)
        if list(val_classes) != list(classes):
            raise ValueError(f"data.val_root classes differ from data.root's: {val_classes[:5]} vs {classes[:5]}")
    train_samples = [train_samples[i] for i in _subset(cfg.num_train, len(train_samples), cfg.seed)]
    val_samples = [val_samples[i] for i in _subset(cfg.num_val, len(val_samples), cfg.seed)]
    train_source, val_source = _file_source(train_samples, classes, cfg), _file_source(val_samples, classes, cfg)
    if cfg.side is not None:  # checked before anything trains: a bad row stops the run here, naming file and row
        train_source.side = read_side_csv(cfg.side.csv, train_source.paths, root, cfg.side)
        val_source.side = read_side_csv(cfg.side.val_csv, val_source.paths, val_root, cfg.side)
    return _bundle(cfg, train_source, val_source, native_size=None)
