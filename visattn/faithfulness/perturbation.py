"""Deletion and insertion curves, and the scoring primitives every perturbation metric here shares.

Paper: "RISE: Randomized Input Sampling for Explanation of Black-box Models", Petsiuk et al., BMVC 2018,
https://arxiv.org/abs/1806.07421 (Sec. 4.1, "Deletion" and "Insertion").

Pixels are ordered by saliency, most salient first. *Deletion* replaces the top ``k`` pixels with a baseline and a
faithful map makes the target probability fall fast (low AUC); *insertion* starts from a blurred image, reveals the top
``k`` original pixels, and a faithful map makes the probability rise fast (high AUC).

Differences from the paper:
- The curve is sampled at ``steps`` evenly spaced fractions of the pixels (RISE removes 224 pixels per step, i.e. one
  point per 0.45 % at 224x224); the AUC is the trapezoid rule over the fraction in ``[0, 1]``.
- The deletion baseline is a choice (``"zero"``, ``"blur"``, ``"mean"`` or a tensor). ``"zero"`` is zero in the
  *normalised* input space, i.e. the normalisation's mean colour (``data.mean``; ImageNet's by default), which is
  what RISE's "set to zero" means for a normalised model input.
- The insertion baseline is a separable Gaussian blur with ``sigma=5`` px (RISE: an 11x11 kernel with sigma 5) and
  replicate padding, so small images work too.
- Ties in saliency are broken by a stable sort: equally salient pixels are taken in row-major order, so a result never
  depends on the sorting backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import eval_mode, model_device_dtype

__all__ = [
    "Explain",
    "check_steps",
    "Baseline",
    "PerturbationResult",
    "deletion",
    "insertion",
    "gaussian_blur",
    "compute_maps",
    "target_probabilities",
    "saliency_rank",
]

Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``explain(images (B,C,H,W), classes (B,)) -> maps (B,H,W)`` in ``[0, 1]`` on the images' device."""

Baseline = Literal["zero", "blur", "mean"] | torch.Tensor

_BASELINES = ("zero", "blur", "mean")


@dataclass
class PerturbationResult:
    """One deletion or insertion run.

    Attributes:
        fractions: ``(S,)`` fraction of pixels deleted/inserted at each step, from 0 to 1.
        curves: ``(B, S)`` softmax probability of each image's target class at each step.
        auc: ``(B,)`` area under each image's curve (trapezoid rule over the fraction).
    """

    fractions: torch.Tensor
    curves: torch.Tensor
    auc: torch.Tensor

    @property
    def mean_curve(self) -> torch.Tensor:
        """``(S,)`` curve averaged over the images."""
        return self.curves.mean(0)

    @property
    def mean_auc(self) -> float:
        """AUC averaged over the images."""
        return float(self.auc.mean())


def check_inputs(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``images``/``classes`` and move them to the model's device, images also to its floating dtype.

    A bfloat16/float16 model would fail on float32 images (``Input type and weight type should be the same``), so
    images take the dtype of the model's first parameter when that is floating point (a model without parameters
    keeps the images' dtype).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor of shape (B, C, H, W), got "
                         f"{_describe(images)}")
    if images.shape[0] == 0:
        raise ValueError("images must hold at least one image, got a batch of 0")
    if not isinstance(classes, torch.Tensor) or classes.shape != images.shape[:1] or classes.is_floating_point() \
            or classes.dtype == torch.bool:
        raise ValueError(f"classes must be an integer tensor of shape ({images.shape[0]},) (one class per image), got "
                         f"{_describe(classes)}")
    if bool((classes < 0).any()):
        raise ValueError(f"classes must be non-negative class indices, got {classes.tolist()}")
    device, dtype = model_device_dtype(model)
    if not dtype.is_floating_point or next(iter(model.parameters()), None) is None:
        dtype = images.dtype
    return images.to(device, dtype), classes.to(device, torch.long)


def check_maps(maps: torch.Tensor, images: torch.Tensor, name: str = "saliency") -> torch.Tensor:
    """Validate ``(B, H, W)`` maps matching ``images`` and move them to its device as float32."""
    shape = (images.shape[0], *images.shape[2:])
    if not isinstance(maps, torch.Tensor) or tuple(maps.shape) != shape:
        raise ValueError(f"{name} must be a tensor of shape {shape} (one map per image, at input resolution), got "
                         f"{_describe(maps)}")
    maps = maps.detach().to(images.device, torch.float32)
    if not bool(torch.isfinite(maps).all()):
        raise ValueError(f"{name} must be finite, got {int((~torch.isfinite(maps)).sum())} NaN/inf values")
    return maps


def check_batch_size(batch_size: int) -> int:
    """Validate a positive int ``batch_size`` and return it."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def compute_maps(explain: Explain, images: torch.Tensor, classes: torch.Tensor, *, batch_size: int = 64
                 ) -> torch.Tensor:
    """Call ``explain`` in chunks of ``batch_size`` images and return validated, detached ``(B, H, W)`` float32 maps.

    Gradients are enabled for the call (gradient methods need them even inside a caller's ``no_grad``).
    """
    check_batch_size(batch_size)
    chunks = []
    with torch.enable_grad():
        for start in range(0, images.shape[0], batch_size):
            x, c = images[start:start + batch_size], classes[start:start + batch_size]
            chunks.append(check_maps(explain(x, c), x, name="explain(images, classes)"))
    return torch.cat(chunks)


def resolve_maps(saliency: torch.Tensor | Explain, images: torch.Tensor, classes: torch.Tensor, batch_size: int
                 ) -> torch.Tensor:
    """``saliency`` as ``(B, H, W)`` maps: validated if a tensor, computed if an explain callable."""
    if isinstance(saliency, torch.Tensor):
        return check_maps(saliency, images)
    if callable(saliency):
        return compute_maps(saliency, images, classes, batch_size=batch_size)
    raise TypeError(f"saliency must be a (B, H, W) tensor or an explain(images, classes) callable, got "
                    f"{type(saliency).__name__}")


@torch.no_grad()
def target_probabilities(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Softmax probability of ``classes`` under ``model`` for one chunk, as float32 ``(B,)``.

    The caller puts the model in eval mode; the softmax runs in float32 so a half-precision model's probabilities
    near 0 and 1 do not round away.
    """
    logits = model(images)
    if logits.ndim != 2 or logits.shape[0] != images.shape[0]:
        raise ValueError(f"model must map (B, C, H, W) images to (B, K) logits, got output shape {tuple(logits.shape)}")
    if bool((classes >= logits.shape[1]).any()):
        raise ValueError(f"classes must be < the model's {logits.shape[1]} outputs, got {classes.tolist()}")
    return logits.float().softmax(-1).gather(1, classes[:, None])[:, 0]


def saliency_rank(maps: torch.Tensor) -> torch.Tensor:
    """``(B, H*W)`` rank of each pixel, 0 = most salient; ties go to the earlier pixel in row-major order."""
    flat = maps.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def gaussian_blur(images: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` images; kernel radius ``ceil(3 sigma)``, replicate padding."""
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"blur_sigma must be a positive finite number, got {sigma!r}")
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    b, c, h, w = images.shape
    out = images.reshape(b * c, 1, h, w)
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return out.view(b, c, h, w)


def make_baseline(images: torch.Tensor, baseline: Baseline, blur_sigma: float) -> torch.Tensor:
    """The ``(B, C, H, W)`` image that perturbed pixels take their values from."""
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.to(images.device, images.dtype), images.shape)
        except RuntimeError:
            raise ValueError(f"baseline tensor of shape {tuple(baseline.shape)} does not broadcast to the images' "
                             f"shape {tuple(images.shape)}") from None
    if baseline == "zero":
        return torch.zeros_like(images)
    if baseline == "blur":
        return gaussian_blur(images, blur_sigma)
    if baseline == "mean":
        return images.mean((2, 3), keepdim=True).expand_as(images)
    raise ValueError(f"baseline must be one of {list(_BASELINES)} or a tensor broadcastable to the images, "
                     f"got {baseline!r}")


def check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2 (the curve needs both ends, fraction 0 and 1), got {steps!r}")
    return steps


def _curves(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, maps: torch.Tensor, baseline: torch.Tensor,
            steps: int, batch_size: int, reveal: bool) -> PerturbationResult:
    """Score every (image, step) pair; the caller holds the model in eval mode."""
    n_pixels = maps[0].numel()
    fractions = torch.linspace(0, 1, steps, device=images.device)
    counts = torch.round(fractions * n_pixels).long()
    ranks = saliency_rank(maps)
    # One (image, step) pair per perturbed input, in chunks, so memory is batch_size images whatever B * steps is.
    pairs = torch.cartesian_prod(torch.arange(images.shape[0]), torch.arange(steps)).to(images.device)
    probs = torch.empty(len(pairs), device=images.device)
    for start in range(0, len(pairs), batch_size):
        b, s = pairs[start:start + batch_size].unbind(1)
        top = (ranks[b] < counts[s, None]).view(len(b), 1, *images.shape[2:])
        x = torch.where(top, images[b], baseline[b]) if reveal else torch.where(top, baseline[b], images[b])
        probs[start:start + len(b)] = target_probabilities(model, x, classes[b])
    curves = probs.view(images.shape[0], steps)
    return PerturbationResult(fractions=fractions.cpu(), curves=curves.cpu(),
                              auc=torch.trapezoid(curves, fractions, dim=1).cpu())


def deletion(
        model: nn.Module,
        images: torch.Tensor,
        classes: torch.Tensor,
        saliency: torch.Tensor | Explain,
        *,
        steps: int = 21,
        baseline: Baseline = "zero",
        blur_sigma: float = 5.0,
        batch_size: int = 64,
) -> PerturbationResult:
    """Deletion curve: probability of the target class as the most salient pixels are replaced by a baseline.

    Lower AUC is better: a faithful map names the pixels whose removal destroys the prediction first.

    Args:
        model: classifier mapping ``(B, C, H, W)`` to ``(B, K)`` logits; scored in eval mode, flags restored.
        images: ``(B, C, H, W)`` normalised model input.
        classes: ``(B,)`` target class per image.
        saliency: ``(B, H, W)`` maps, or an ``explain(images, classes)`` callable that returns them.
        steps: points on the curve, at fractions ``linspace(0, 1, steps)`` of the pixels.
        baseline: ``"zero"`` (zero in normalised space: the normalisation's mean colour), ``"blur"`` (Gaussian blur
            of the image), ``"mean"`` (each image's own mean colour), or a tensor broadcastable to ``images``.
        blur_sigma: Gaussian sigma in pixels for ``baseline="blur"``.
        batch_size: perturbed images per forward pass.

    Returns:
        Per-image curves and AUCs (on the CPU).

    Raises:
        ValueError: on malformed inputs or arguments.

    Example:
        >>> result = deletion(model, images, classes, maps)
        >>> result.mean_auc, result.mean_curve
    """
    images, classes = check_inputs(model, images, classes)
    with eval_mode(model):
        maps = resolve_maps(saliency, images, classes, check_batch_size(batch_size))
        base = make_baseline(images, baseline, blur_sigma)
        return _curves(model, images, classes, maps, base, check_steps(steps), batch_size, reveal=False)


def insertion(
        model: nn.Module,
        images: torch.Tensor,
        classes: torch.Tensor,
        saliency: torch.Tensor | Explain,
        *,
        steps: int = 21,
        baseline: Baseline = "blur",
        blur_sigma: float = 5.0,
        batch_size: int = 64,
) -> PerturbationResult:
    """Insertion curve: probability of the target class as the most salient pixels are revealed over a baseline.

    Higher AUC is better: a faithful map names the pixels that restore the prediction first.

    Args:
        model: classifier mapping ``(B, C, H, W)`` to ``(B, K)`` logits; scored in eval mode, flags restored.
        images: ``(B, C, H, W)`` normalised model input.
        classes: ``(B,)`` target class per image.
        saliency: ``(B, H, W)`` maps, or an ``explain(images, classes)`` callable that returns them.
        steps: points on the curve, at fractions ``linspace(0, 1, steps)`` of the pixels.
        baseline: starting image, as in :func:`deletion`; RISE starts from a blurred copy (the default).
        blur_sigma: Gaussian sigma in pixels for ``baseline="blur"``.
        batch_size: perturbed images per forward pass.

    Returns:
        Per-image curves and AUCs (on the CPU).

    Raises:
        ValueError: on malformed inputs or arguments.

    Example:
        >>> insertion(model, images, classes, explain).mean_auc
    """
    images, classes = check_inputs(model, images, classes)
    with eval_mode(model):
        maps = resolve_maps(saliency, images, classes, check_batch_size(batch_size))
        base = make_baseline(images, baseline, blur_sigma)
        return _curves(model, images, classes, maps, base, check_steps(steps), batch_size, reveal=True)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, Sequence):
        return f"a {type(value).__name__} of length {len(value)}"
    return type(value).__name__
