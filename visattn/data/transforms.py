"""albumentations pipelines: presets (CIFAR, ImageNet, none) or an explicit list from the config.

Every pipeline ends with ``Normalize(mean, std)`` and ``ToTensorV2``. An explicit list replaces the preset entirely,
resizing and cropping included, so it must itself produce ``image_size`` x ``image_size`` images.
The eval pipeline of a preset is what overlays and evaluation reuse, so preprocessing always matches training.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from ..config import DataConfig

__all__ = ["build_transform", "eval_geometry", "normalize_to_tensor", "transforms_from_list"]

_APPENDED = ("Normalize", "ToTensorV2", "ToTensor", "ToFloat")


def transforms_from_list(specs: Sequence[dict[str, Any]], arg: str = "transforms") -> list[A.BasicTransform]:
    """Build ``[{'name': 'HorizontalFlip', 'p': 0.5}, ...]`` into albumentations transforms.

    Raises:
        ValueError: an entry without ``name``, an unknown transform name (with the closest valid one), an argument
            the transform does not take (albumentations 2 would only warn and drop it, e.g. 1.x's ``max_holes`` or
            ``always_apply``), or a value the transform rejects.
    """
    out = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"{arg}[{i}] must be a mapping with a 'name' key, e.g. {{name: HorizontalFlip, p: 0.5}}, "
                             f"got {spec!r}")
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        name = spec["name"]
        cls = getattr(A, name, None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
            valid = [n for n in dir(A)
                     if isinstance(getattr(A, n), type) and issubclass(getattr(A, n), A.BasicTransform)]
            close = difflib.get_close_matches(str(name), valid, n=1)
            raise ValueError(f"{arg}[{i}]: {name!r} is not an albumentations transform"
                             + (f"; did you mean {close[0]!r}?" if close else ""))
        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            # `strict` is albumentations' own switch, taken by every transform before its __init__ sees the rest.
            valid = [n for n in params if n != "self"] + ["strict"]
            unknown = [k for k in kwargs if k not in valid]
            if unknown:
                close = {k: m[0] for k in unknown if (m := difflib.get_close_matches(str(k), valid, n=1))}
                hint = "".join(f"; did you mean {m!r} for {k!r}?" for k, m in close.items())
                raise ValueError(f"{arg}[{i}] ({name}): unknown argument(s) {unknown}{hint}; valid: {valid} "
                                 f"(albumentations {A.__version__})")
        try:
            out.append(cls(**kwargs))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{arg}[{i}] ({name}): {err}") from err
    return out


def _preset(cfg: DataConfig, train: bool, native_size: int | None) -> list[A.BasicTransform]:
    s = cfg.image_size
    if cfg.augment == "imagenet":
        if train:
            return [A.RandomResizedCrop(size=(s, s)), A.HorizontalFlip(),
                    A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0, p=0.8)]
        # timm's eval resize for crop_pct 0.875: floor(size / crop_pct), then a centre crop
        return [A.SmallestMaxSize(max_size=math.floor(s / 0.875)), A.CenterCrop(s, s)]
    resize = [] if native_size == s else [A.Resize(s, s, interpolation=cv2.INTER_AREA)]
    if cfg.augment == "none" or not train:
        return resize
    # CIFAR recipe: 4-pixel reflect-pad + random crop, flip, one 1/4-size cutout hole (DeVries & Taylor 2017).
    pad = cfg.crop_padding if cfg.crop_padding is not None else max(1, s // 8)
    hole = max(1, s // 4)
    steps = resize + [
        A.PadIfNeeded(min_height=s + 2 * pad, min_width=s + 2 * pad, border_mode=cv2.BORDER_REFLECT_101),
        A.RandomCrop(s, s),
        A.HorizontalFlip(),
    ]
    if cfg.augment == "cifar":
        steps.append(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(hole, hole),
                                     hole_width_range=(hole, hole), p=0.5))
    return steps


def build_transform(cfg: DataConfig, train: bool, native_size: int | None = None) -> A.Compose:
    """The train or eval pipeline for ``cfg``: explicit list if given, else the preset, then normalise.

    Args:
        cfg: the data section of the config.
        train: the training pipeline (augmenting) or the evaluation one.
        native_size: the data set's own square image size, if it has one, to skip a no-op resize.
    """
    return A.Compose([*_geometry_steps(cfg, train, native_size), *_normalize_steps(cfg)])


def eval_geometry(cfg: DataConfig, native_size: int | None = None) -> A.Compose:
    """The eval pipeline without its normalisation: uint8 ``(H, W, 3)`` in, the image as the model sees it out.

    Overlays draw on this image, so they line up with the model input pixel for pixel.
    """
    return A.Compose(_geometry_steps(cfg, False, native_size))


def normalize_to_tensor(cfg: DataConfig) -> A.Compose:
    """``Normalize(mean, std)`` then ``ToTensorV2``: the last steps of every pipeline."""
    return A.Compose(_normalize_steps(cfg))


def _normalize_steps(cfg: DataConfig) -> list[A.BasicTransform]:
    return [A.Normalize(mean=cfg.mean, std=cfg.std), ToTensorV2()]


def _geometry_steps(cfg: DataConfig, train: bool, native_size: int | None) -> list[A.BasicTransform]:
    explicit = cfg.train_transforms if train else cfg.eval_transforms
    arg = "data.train_transforms" if train else "data.eval_transforms"
    if explicit is not None:
        for i, spec in enumerate(explicit):
            # Normalising twice, or a tensor before the appended Normalize, fails only at the first sample.
            if isinstance(spec, dict) and spec.get("name") in _APPENDED:
                raise ValueError(f"{arg}[{i}]: {spec['name']} is appended to every pipeline already (Normalize with "
                                 f"data.mean / data.std, then ToTensorV2); leave it out of the list")
        return transforms_from_list(explicit, arg)
    return _preset(cfg, train, native_size)
