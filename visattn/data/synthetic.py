"""Shapes on clutter: a procedurally generated 10-class image dataset with ground-truth object masks.

Every image holds one filled object whose *shape* is the label (``CLASSES``), drawn over a cluttered background, and
comes with the object's pixel mask, so the same data trains a classifier in minutes on a CPU and later scores
explanation maps against the truth. Nothing is downloaded or stored: each sample is a pure function of
``(index, split, image_size, seed)``.

How a sample is drawn (all geometry in image-relative units, so a larger ``image_size`` renders the same scene finer):

1. Background: a smooth colour gradient (a random 2x2 to 4x4 colour grid, bilinearly upsampled), then 1-4 distractors
   of random colours: thin straight strokes, arcs of at most 2/3 of a turn, open fragments of the class outlines and
   small blobs. None is a full class shape: the outlines are partial and thin, the blobs small.
2. Object: one of the 10 shapes with a random rotation, size (its bounding circle spans 50-85 % of the image side),
   squeeze along one axis (aspect 1 to 1.3), position (fully inside the image) and colour (constrained only to
   contrast with the background under it), with a mild linear shading. Its coverage is rasterised at 4x (2x above
   64 px) and area-averaged down, which anti-aliases the edges and gives the mask (coverage >= 1/2).
3. With probability 0.2, a stroke drawn over the object occludes part of it; the mask drops the occluded pixels, and
   the stroke is left out when it would hide more than 20 % of the object.
4. Gaussian pixel noise (sigma 3-10 on the 0-255 scale).

Colour, size, rotation, aspect and position are drawn independently of the label, so only the outline tells the
classes apart; every class is also invariant to flips and 90-degree rotations, so those augmentations keep labels.
That is what makes the data hard for a linear model on raw pixels: a class is not a pixel pattern but the same outline
anywhere, at any angle, size and colour, over clutter that puts edges everywhere. Logistic regression on standardised
pixels stays at chance (11.2 % validation accuracy with 10,000 training images, while fitting 54 % of them;
``benchmarks/shapes_linear_baseline.py``), whereas the quickstart's 0.3 M-parameter ResNet + CBAM reaches 96 % after
2.5 minutes of training on 2 CPU cores.

Speed: about 3,600 images/s at 32x32 on one CPU core (2,200/s at 64x64, 430/s at 224x224), so the default
10,000-image training split renders in under 3 s. ``ShapesDataset`` renders a whole split into uint8 arrays when it is
built, as long as the arrays stay under 256 MiB (e.g. 10,000 images up to 64x64; DataLoader workers then share them);
larger splits render each sample on access, with a small cache.

Determinism: the sample's random generator is seeded from ``(seed, split, index)`` through ``np.random.SeedSequence``,
so any process or DataLoader worker renders any index identically without storage. Train and val use different seed
entropy and so never coincide. Labels are balanced exactly: each block of 10 consecutive indices holds every class
once, in an order shuffled by the seed, and they come from their own seed stream, so ``targets`` needs no rendering.
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["CLASSES", "ShapeSample", "render_sample", "ShapesDataset"]

CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "ring", "heart", "crescent", "arrow", "hourglass",
)

_SPLITS: dict[str, int] = {"train": 0, "val": 1}
_DEFAULT_NUM_SAMPLES: dict[str, int] = {"train": 10_000, "val": 2_000}
_MIN_IMAGE_SIZE = 16
# Separate seed streams: the label of index i must be computable without drawing the sample's geometry.
_SAMPLE_STREAM, _LABEL_STREAM = 0, 1
_PRERENDER_BYTES = 256 * 2**20
_CACHE_SIZE = 512
_SUBPIXEL_BITS = 4  # cv2 drawing with fractional coordinates: points are given in 1/16 pixel
_ONE = 1 << _SUBPIXEL_BITS

# Difficulty knobs. Tuned so a small CNN passes 90 % within a minute of 2-core CPU training while logistic regression
# on pixels stays near chance (see the module docstring); harder settings cost the quickstart its 3-minute budget.
_OBJECT_SCALE = (0.5, 0.85)  # diameter of the object's bounding circle, as a fraction of the image side
_MAX_ASPECT = 1.3  # the object is squeezed by up to this factor along one axis
_NUM_DISTRACTORS = (1, 4)  # inclusive range of clutter elements
_OCCLUSION_PROB = 0.2
_MAX_OCCLUDED = 0.2  # an occluding stroke may hide at most this fraction of the object's pixels
_MIN_CONTRAST = 100.0  # RGB distance between the object colour and 90 % of the background pixels under it

Polygon = tuple[np.ndarray, int]  # (K, 2) unit-coordinate vertices, fill value (1 adds area, 0 cuts a hole)


# --- shape geometry: unit coordinates, x right, y down, bounding radius 1 -------------------------------------------

def _regular(
        n: int,
        radius: float = 1.0,
        center: tuple[float, float] = (0.0, 0.0),
        phase: float = -math.pi / 2,
) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([center[0] + radius * np.cos(t), center[1] + radius * np.sin(t)], axis=1)


def _star(points: int, inner: float) -> np.ndarray:
    t = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    return pts - (pts.max(0) + pts.min(0)) / 2


def _normalised(*polygons: Polygon) -> tuple[Polygon, ...]:
    # Scale so the farthest vertex sits at radius 1: the sampled size then means the same for every class.
    radius = max(float(np.linalg.norm(p, axis=1).max()) for p, _ in polygons)
    return tuple((p / radius, fill) for p, fill in polygons)


_CROSS = np.array([(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
                   (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)], dtype=float)
_ARROW = np.array([(-1, -0.25), (0.0, -0.25), (0.0, -0.65), (1, 0), (0.0, 0.65), (0.0, 0.25), (-1, 0.25)], dtype=float)
_HOURGLASS = np.array([(-0.7, -1), (0.7, -1), (0.12, 0), (0.7, 1), (-0.7, 1), (-0.12, 0)], dtype=float)

_SHAPES: dict[str, tuple[Polygon, ...]] = {
    "circle": _normalised((_regular(48), 1)),
    "square": _normalised((_regular(4, phase=math.pi / 4), 1)),
    "triangle": _normalised((_regular(3), 1)),
    "star": _normalised((_star(5, 0.45), 1)),
    "cross": _normalised((_CROSS, 1)),
    "ring": _normalised((_regular(48), 1), (_regular(48, 0.55), 0)),
    "heart": _normalised((_heart(), 1)),
    "crescent": _normalised((_regular(48), 1), (_regular(48, 0.8, center=(0.5, 0.0)), 0)),
    "arrow": _normalised((_ARROW, 1)),
    "hourglass": _normalised((_HOURGLASS, 1)),
}
_SHAPE_LIST: tuple[tuple[Polygon, ...], ...] = tuple(_SHAPES[name] for name in CLASSES)


@dataclass(frozen=True, eq=False)  # eq=False: `==` on numpy fields raises; compare with np.array_equal
class ShapeSample:
    """One rendered sample.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB image.
        mask: ``(H, W)`` uint8, 1 on the object's visible pixels, 0 elsewhere (never empty).
        label: class index into ``CLASSES``.
        centre: ``(x, y)`` of the object's centre (the centre of its bounding circle before the squeeze), in
            continuous pixel coordinates: pixel ``(i, j)`` spans ``[j, j+1) x [i, i+1)``, so ``int(x), int(y)`` is the
            pixel it falls in. It is where the object is, not necessarily on it: a ring's centre lies in its hole.
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    centre: tuple[float, float]


# --- argument checks ----------------------------------------------------------------------------------------------

def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_split(split: Any) -> int:
    if not isinstance(split, str) or split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    return _SPLITS[split]


# --- rendering ----------------------------------------------------------------------------------------------------

def _fixed(points: np.ndarray) -> np.ndarray:
    """Continuous image coordinates (pixel i spans [i, i+1)) to cv2's fixed-point pixel-centre coordinates."""
    return np.round((points - 0.5) * _ONE).astype(np.int32)


def _fx(value: float) -> int:
    """Scalar `_fixed` (plain Python is several times faster than numpy on one number)."""
    return round((value - 0.5) * _ONE)


def _transform(polygons: tuple[Polygon, ...], radius: float, aspect: float, angle: float) -> list[np.ndarray]:
    """Stretch by ``1/aspect`` along y, rotate by ``angle`` and scale by ``radius``: vertices relative to the centre."""
    c, s = math.cos(angle) * radius, math.sin(angle) * radius
    matrix = np.array([[c, -s / aspect], [s, c / aspect]])
    return [p @ matrix.T for p, _ in polygons]


def _label_block(block: int, split_id: int, seed: int) -> np.ndarray:
    # Each block of len(CLASSES) consecutive indices holds every class once: exact balance for any prefix of blocks.
    return np.random.default_rng([seed, split_id, _LABEL_STREAM, block]).permutation(len(CLASSES))


def _label(index: int, split_id: int, seed: int) -> int:
    block, slot = divmod(index, len(CLASSES))
    return int(_label_block(block, split_id, seed)[slot])


def _labels(num_samples: int, split_id: int, seed: int) -> list[int]:
    blocks = -(-num_samples // len(CLASSES))
    return np.concatenate([_label_block(b, split_id, seed) for b in range(blocks)])[:num_samples].tolist()


def _draw_distractor(image: np.ndarray, u: list[float], size: int, thickness: int) -> None:
    """Draw one clutter element from 12 uniform numbers ``u`` (drawn in one call: rng calls dominate render time)."""
    kind = int(u[0] * 4)
    color = (u[1] * 255, u[2] * 255, u[3] * 255)
    aa, shift = cv2.LINE_AA, _SUBPIXEL_BITS
    if kind == 0:  # straight stroke, possibly running off the image
        p0 = (_fx((1.2 * u[4] - 0.1) * size), _fx((1.2 * u[5] - 0.1) * size))
        p1 = (_fx((1.2 * u[6] - 0.1) * size), _fx((1.2 * u[7] - 0.1) * size))
        cv2.line(image, p0, p1, color, thickness, aa, shift)
    elif kind == 1:  # arc of an ellipse, at most 2/3 of a turn so it never closes into a ring
        center = (_fx(u[4] * size), _fx(u[5] * size))
        axes = (round((0.1 + 0.25 * u[6]) * size * _ONE), round((0.1 + 0.25 * u[7]) * size * _ONE))
        start = 360 * u[8]
        cv2.ellipse(image, center, axes, 360 * u[9], start, start + 60 + 180 * u[10], color, thickness, aa, shift)
    elif kind == 2:  # open fragment of a class outline: looks like part of an object, never a filled whole
        outline = _transform(_SHAPE_LIST[int(u[4] * len(CLASSES))][:1], (0.12 + 0.18 * u[5]) * size,
                             1 + 0.4 * u[6], 2 * math.pi * u[7])[0]
        n = len(outline)
        idx = (int(u[8] * n) + np.arange(1 + max(1, round(n * (0.35 + 0.3 * u[9]))))) % n
        pts = _fixed(outline[idx] + (u[10] * size, u[11] * size))
        cv2.polylines(image, [pts], False, color, thickness, aa, shift)
    else:  # small filled blob, well below the smallest object size
        center = (_fx(u[4] * size), _fx(u[5] * size))
        axes = (round((0.03 + 0.05 * u[6]) * size * _ONE), round((0.03 + 0.05 * u[7]) * size * _ONE))
        cv2.ellipse(image, center, axes, 360 * u[8], 0, 360, color, -1, aa, shift)


def _render(index: int, split_id: int, image_size: int, seed: int, label: int | None = None) -> ShapeSample:
    size = image_size
    if label is None:
        label = _label(index, split_id, seed)
    rng = np.random.default_rng([seed, split_id, _SAMPLE_STREAM, index])
    # All scalar parameters in one call, named below in order of use.
    (u_thick, u_grid, u_count, u_radius, u_aspect, u_angle, u_cx, u_cy, u_dir, u_shade, u_occlude, u_o0, u_o1,
     u_o2, u_o3, u_noise, *u_stroke_rgb) = rng.random(19).tolist()
    thickness = max(1, round(size * (0.025 + 0.035 * u_thick)))

    # 1. Background: smooth gradient, then clutter drawn straight at the output size (cv2 anti-aliases it).
    grid = 2 + int(3 * u_grid)
    background = cv2.resize(rng.random((grid, grid, 3), np.float32) * 255, (size, size),
                            interpolation=cv2.INTER_LINEAR)
    image = (background + 0.5).astype(np.uint8)  # bilinear interpolation stays inside [0, 255]
    lo_n, hi_n = _NUM_DISTRACTORS
    for u in rng.random((lo_n + int((hi_n - lo_n + 1) * u_count), 12)).tolist():
        _draw_distractor(image, u, size, thickness)

    # 2. Object: rasterise its coverage at `ss` x resolution and area-average down (exact anti-aliasing, exact mask).
    polygons = _SHAPE_LIST[label]
    radius = (_OBJECT_SCALE[0] + (_OBJECT_SCALE[1] - _OBJECT_SCALE[0]) * u_radius) * size / 2
    shapes = _transform(polygons, radius, 1 + (_MAX_ASPECT - 1) * u_aspect, 2 * math.pi * u_angle)
    lo, hi = shapes[0].min(0), shapes[0].max(0)  # the first polygon is the outline; later ones cut holes
    # Fully inside the image, with half a pixel to spare.
    center = 0.5 - lo + np.array([u_cx, u_cy]) * (size - 1 - (hi - lo))
    ss = 4 if size <= 64 else 2
    canvas = np.zeros((size * ss, size * ss), np.uint8)
    for pts, (_, fill) in zip(shapes, polygons, strict=True):
        cv2.fillPoly(canvas, [_fixed((pts + center) * ss)], 255 * fill, cv2.LINE_8, _SUBPIXEL_BITS)
    coverage = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    mask = coverage >= 128

    # Colour: free, except that it must stand out from the background under the object (else no one could see it).
    # Only the object's bounding box is composited: the rest of the image keeps its background.
    x0, y0 = (np.floor(center + lo).astype(int) - 1).clip(0, size).tolist()
    x1, y1 = (np.ceil(center + hi).astype(int) + 1).clip(0, size).tolist()
    alpha = coverage[y0:y1, x0:x1, None].astype(np.float32) * (1 / 255)
    patch = image[y0:y1, x0:x1].astype(np.float32)
    # A gradient or a distractor may share the colour somewhere: require contrast on 90 % of the pixels, not on average.
    under = patch[coverage[y0:y1, x0:x1] >= 128]
    under = under[:: 1 + len(under) // 64] if len(under) else patch.reshape(-1, 3)  # ~64 pixels are plenty
    candidates = rng.random((8, 3), np.float32) * 255
    distance = np.linalg.norm(candidates[:, None] - under[None], axis=2)
    contrast = np.sort(distance, axis=1)[:, len(under) // 10]
    ok = contrast >= _MIN_CONTRAST
    color = candidates[int(np.argmax(ok))] if ok.any() else candidates[int(contrast.argmax())]
    # Mild linear shading across the object, so its colour is not one flat value.
    gain = 0.25 * u_shade / radius
    xx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - center[0]) * (gain * math.cos(2 * math.pi * u_dir))
    yy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - center[1]) * (gain * math.sin(2 * math.pi * u_dir))
    paint = np.clip(color * (1.0 + yy[:, None, None] + xx[None, :, None]), 0, 255)
    image[y0:y1, x0:x1] = (patch + alpha * (paint - patch) + 0.5).astype(np.uint8)

    # 3. Occluding stroke over the object, kept only if the object stays mostly (>= 80 %) visible.
    if u_occlude < _OCCLUSION_PROB:
        p0 = (_fx((1.2 * u_o0 - 0.1) * size), _fx((1.2 * u_o1 - 0.1) * size))
        p1 = (_fx((1.2 * u_o2 - 0.1) * size), _fx((1.2 * u_o3 - 0.1) * size))
        footprint = np.zeros((size, size), np.uint8)
        cv2.line(footprint, p0, p1, 255, thickness, cv2.LINE_AA, _SUBPIXEL_BITS)
        visible = mask & (footprint < 128)
        if visible.sum() >= (1 - _MAX_OCCLUDED) * mask.sum():
            cv2.line(image, p0, p1, tuple(255 * v for v in u_stroke_rgb), thickness, cv2.LINE_AA, _SUBPIXEL_BITS)
            mask = visible

    # 4. Sensor-like noise over everything.
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * (3 + 7 * u_noise)
    image = np.clip(image + noise + 0.5, 0, 255).astype(np.uint8)
    return ShapeSample(image=image, mask=mask.view(np.uint8), label=label,
                       centre=(float(center[0]), float(center[1])))


def render_sample(index: int, *, split: str = "train", image_size: int = 32, seed: int = 0) -> ShapeSample:
    """Render one sample of the shapes dataset.

    Deterministic: the same ``(index, split, image_size, seed)`` always gives the same sample; train and val come from
    different seed entropy and never coincide. A different ``image_size`` renders the same scene at another resolution
    (up to pixel noise and rounding).

    Args:
        index: sample index, any int >= 0.
        split: ``'train'`` or ``'val'``.
        image_size: height and width in pixels, >= 16.
        seed: dataset seed, int >= 0.

    Returns:
        The sample: uint8 RGB image ``(H, W, 3)``, uint8 object mask ``(H, W)``, label and the object's centre.

    Raises:
        TypeError: if ``index``, ``image_size`` or ``seed`` is not an int.
        ValueError: if ``split`` is unknown or an int is out of range.

    Example:
        >>> s = render_sample(0, split="val")
        >>> s.image.shape, s.mask.shape, s.image.dtype
        ((32, 32, 3), (32, 32), dtype('uint8'))
    """
    split_id = _check_split(split)
    return _render(_check_int(index, "index", 0), split_id, _check_int(image_size, "image_size", _MIN_IMAGE_SIZE),
                   _check_int(seed, "seed", 0))


class ShapesDataset(Dataset):
    """The shapes-on-clutter dataset as a ``torch.utils.data.Dataset``.

    Small splits (arrays under 256 MiB, e.g. the default 10,000 x 32x32) are rendered once in the constructor, which
    takes under 3 s at 32x32; DataLoader workers then share the arrays. Larger ones render on access.

    Args:
        split: ``'train'`` or ``'val'``.
        num_samples: number of samples; default 10,000 for train and 2,000 for val.
        image_size: height and width in pixels, >= 16.
        seed: dataset seed, int >= 0. Same seed, same data, in any process.
        transform: optional albumentations-style callable, called as ``transform(image=image, mask=mask)`` on the
            uint8 RGB image and uint8 mask, returning a dict with at least ``'image'``.

    Raises:
        TypeError: if an int argument is not an int or ``transform`` is not callable.
        ValueError: if ``split`` is unknown or an int is out of range.

    Example:
        >>> import albumentations as A
        >>> from albumentations.pytorch import ToTensorV2
        >>> train = ShapesDataset("train", transform=A.Compose([A.HorizontalFlip(), A.Normalize(), ToTensorV2()]))
        >>> image, label = train[0]   # float tensor (3, 32, 32), int
        >>> raw = train.sample(0)     # ShapeSample(image, mask, label, centre), untransformed
    """

    classes: tuple[str, ...] = CLASSES

    def __init__(
            self,
            split: Literal["train", "val"] = "train",
            *,
            num_samples: int | None = None,
            image_size: int = 32,
            seed: int = 0,
            transform: Callable[..., dict] | None = None,
    ) -> None:
        self._split_id = _check_split(split)
        self.split = split
        self.num_samples = _DEFAULT_NUM_SAMPLES[split] if num_samples is None else _check_int(
            num_samples, "num_samples", 1)
        self.image_size = _check_int(image_size, "image_size", _MIN_IMAGE_SIZE)
        self.seed = _check_int(seed, "seed", 0)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be a callable such as albumentations.Compose or None, "
                            f"got {type(transform).__name__}")
        self.transform = transform
        self._targets: list[int] | None = None
        self._cache: OrderedDict[int, ShapeSample] = OrderedDict()
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._centres: np.ndarray | None = None
        if self.num_samples * self.image_size**2 * 4 <= _PRERENDER_BYTES:
            self._prerender()

    def _prerender(self) -> None:
        n, size = self.num_samples, self.image_size
        images = np.empty((n, size, size, 3), np.uint8)
        masks = np.empty((n, size, size), np.uint8)
        centres = np.empty((n, 2), np.float64)
        labels = self.targets  # block-wise: one generator per 10 labels instead of one per sample
        for i in range(n):
            s = _render(i, self._split_id, size, self.seed, labels[i])
            images[i], masks[i], centres[i] = s.image, s.mask, s.centre
        self._images, self._masks, self._labels = images, masks, np.asarray(labels, np.int64)
        self._centres = centres

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, num_samples={self.num_samples}, "
                f"image_size={self.image_size}, seed={self.seed}, transform={self.transform!r})")

    def _index(self, index: int) -> int:
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(f"index must be an int, got {type(index).__name__} {index!r}") from None
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f"index {i} is out of range for a dataset of {self.num_samples} samples")
        return i % self.num_samples

    def sample(self, index: int) -> ShapeSample:
        """The raw, untransformed sample at ``index``.

        Args:
            index: sample index; negative values count from the end.

        Returns:
            The sample (uint8 image, uint8 mask, label, object centre). Its arrays are copies, safe to modify.

        Raises:
            TypeError: if ``index`` is not an int.
            IndexError: if ``index`` is out of range.
        """
        i = self._index(index)
        if self._images is not None and self._masks is not None and self._labels is not None \
                and self._centres is not None:
            x, y = self._centres[i].tolist()
            return ShapeSample(self._images[i].copy(), self._masks[i].copy(), int(self._labels[i]), (x, y))
        if i in self._cache:
            self._cache.move_to_end(i)
            s = self._cache[i]
        else:
            s = _render(i, self._split_id, self.image_size, self.seed)
            self._cache[i] = s
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return ShapeSample(s.image.copy(), s.mask.copy(), s.label, s.centre)

    @staticmethod
    def _apply(transform: Callable[..., dict], s: ShapeSample) -> Mapping[str, Any]:
        out = transform(image=s.image, mask=s.mask)
        if not isinstance(out, Mapping) or "image" not in out:
            raise TypeError(f"transform must return a dict with an 'image' key (albumentations style), "
                            f"got {type(out).__name__}")
        return out

    def __getitem__(self, index: int) -> tuple[torch.Tensor | np.ndarray, int]:
        """``(image, label)``: the transform's ``'image'`` output, or a float32 tensor ``(3, H, W)`` in [0, 1]."""
        s = self.sample(index)
        if self.transform is not None:
            return self._apply(self.transform, s)["image"], s.label
        return _to_tensor(s.image), s.label

    def get_with_mask(self, index: int) -> tuple[Any, Any, int]:
        """``(image, mask, label)`` with the transform applied to image and mask together.

        Use it to score explanation maps: geometric augmentations move the mask with the image.

        Args:
            index: sample index; negative values count from the end.

        Returns:
            With a transform, its ``'image'`` and ``'mask'`` outputs; without, a float32 tensor ``(3, H, W)`` in
            [0, 1] and a uint8 tensor ``(H, W)``. Then the label.

        Raises:
            TypeError: if ``index`` is not an int, or the transform's output has no ``'mask'``.
            IndexError: if ``index`` is out of range.
        """
        s = self.sample(index)
        if self.transform is None:
            return _to_tensor(s.image), torch.from_numpy(s.mask), s.label
        out = self._apply(self.transform, s)
        if "mask" not in out:
            raise TypeError("transform returned no 'mask'; use an albumentations pipeline, which passes masks through")
        return out["image"], out["mask"], s.label

    @property
    def targets(self) -> list[int]:
        """The labels of all samples, in index order; computed without rendering any image."""
        if self._targets is None:
            self._targets = _labels(self.num_samples, self._split_id, self.seed)
        return list(self._targets)


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).contiguous().float().div_(255.0)
