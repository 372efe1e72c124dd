"""Pointing game and energy-based pointing game: does the map point at the object?

Papers:
- "Top-down Neural Attention by Excitation Backprop", Zhang et al., ECCV 2016, https://arxiv.org/abs/1608.00507
  (Sec. 5.1): a hit when the map's maximum lies on the object, within a tolerance (the paper uses 15 px).
- "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks", Wang et al., CVPR-W 2020,
  https://arxiv.org/abs/1910.01279 (Sec. 5.2): the share of the map's mass that falls on the object.

Choices:
- Ties: when several pixels share the maximum, the first in row-major order is the point (``torch.argmax``'s
  documented rule), so a constant map always points at the top-left pixel. This is deterministic, but a method that
  returns flat maps can score a hit or miss by accident: check for flat maps if the hit rate looks odd.
- Tolerance is a Euclidean distance in pixels: a hit when some mask pixel lies within ``tolerance`` of the point.
- An image whose mask is empty has no object to point at: by default that raises; ``on_empty="exclude"`` leaves the
  image out of the averages and counts it in ``PointingResult.n_excluded``.
- Energy of an all-zero map is 0 (it puts no mass on the object); maps must be non-negative for mass to mean anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["PointingResult", "pointing_game", "centre_baseline"]

OnEmpty = Literal["raise", "exclude"]


@dataclass
class PointingResult:
    """Per-image pointing-game outcomes.

    Attributes:
        hits: ``(B,)`` bool, True when the map's maximum is on the object (False for excluded images).
        energy: ``(B,)`` share of the map's mass on the object, in ``[0, 1]`` (NaN for excluded images).
        valid: ``(B,)`` bool, False for images left out because their mask was empty.
    """

    hits: torch.Tensor
    energy: torch.Tensor
    valid: torch.Tensor

    @property
    def n_excluded(self) -> int:
        """Images left out because their mask was empty."""
        return int((~self.valid).sum())

    @property
    def hit_rate(self) -> float:
        """Share of valid images that are hits (higher is better; NaN when no image is valid)."""
        return float(self.hits[self.valid].float().mean()) if bool(self.valid.any()) else float("nan")

    @property
    def energy_mean(self) -> float:
        """Mean energy over valid images (higher is better; NaN when no image is valid)."""
        return float(self.energy[self.valid].mean()) if bool(self.valid.any()) else float("nan")


def pointing_game(
        saliency: torch.Tensor,
        masks: torch.Tensor,
        *,
        tolerance: float = 0,
        on_empty: OnEmpty = "raise",
) -> PointingResult:
    """Pointing game and energy-based pointing game of ``(B, H, W)`` maps against object masks.

    Args:
        saliency: ``(B, H, W)`` non-negative maps.
        masks: ``(B, H, W)`` bool object masks at the maps' resolution.
        tolerance: distance in pixels from the map's maximum within which an object pixel still counts as a hit.
        on_empty: ``"raise"`` on an image with an empty mask, or ``"exclude"`` to leave it out of the averages.

    Returns:
        Per-image hits and energies (on the CPU); ``hit_rate`` and ``energy_mean`` average them.

    Raises:
        ValueError: on shape mismatches, negative or non-finite maps, a negative tolerance, an unknown ``on_empty``,
            or (with ``on_empty="raise"``) an empty mask.
        TypeError: if ``masks`` is not a bool tensor.

    Example:
        >>> result = pointing_game(maps, masks, tolerance=15)
        >>> result.hit_rate, result.energy_mean
    """
    if not isinstance(saliency, torch.Tensor) or saliency.ndim != 3 or saliency.shape[0] == 0:
        raise ValueError(f"saliency must be a tensor of shape (B, H, W) with B >= 1, got "
                         f"{tuple(saliency.shape) if isinstance(saliency, torch.Tensor) else type(saliency).__name__}")
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a bool tensor, got {type(masks).__name__}")
    if masks.shape != saliency.shape:
        raise ValueError(f"masks must have the saliency maps' shape {tuple(saliency.shape)} (one mask per image, at "
                         f"the maps' resolution), got {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be a bool tensor (True on the object), got dtype {masks.dtype}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a non-negative number of pixels, got {tolerance!r}")
    if on_empty not in ("raise", "exclude"):
        raise ValueError(f"on_empty must be 'raise' or 'exclude', got {on_empty!r}")
    maps = saliency.detach().float()
    masks = masks.to(maps.device)
    if not bool(torch.isfinite(maps).all()) or bool((maps < 0).any()):
        raise ValueError("saliency must be finite and non-negative (the energy game measures the map's mass), got "
                         f"min {float(maps.nan_to_num(float('-inf')).min()):g}")
    valid = masks.flatten(1).any(1)
    if on_empty == "raise" and not bool(valid.all()):
        raise ValueError(f"masks of images {(~valid).nonzero().flatten().tolist()} are empty; pass "
                         f"on_empty='exclude' to leave such images out")

    b, h, w = maps.shape
    point = maps.flatten(1).argmax(1)  # first maximum in row-major order
    py, px = point // w, point % w
    ys = torch.arange(h, device=maps.device).view(1, h, 1)
    xs = torch.arange(w, device=maps.device).view(1, 1, w)
    near = (ys - py.view(b, 1, 1)) ** 2 + (xs - px.view(b, 1, 1)) ** 2 <= tolerance ** 2
    hits = (masks & near).flatten(1).any(1) & valid

    total = maps.flatten(1).sum(1)
    inside = (maps * masks).flatten(1).sum(1)
    energy = torch.where(total > 0, inside / total.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)
    energy = torch.where(valid, energy, float("nan"))
    return PointingResult(hits=hits.cpu(), energy=energy.cpu(), valid=valid.cpu())


def centre_baseline(masks: torch.Tensor, *, tolerance: float = 0, on_empty: OnEmpty = "raise") -> PointingResult:
    """What the pointing games give without looking at the image: the baseline to read every method against.

    The pointing game of a map that always points at the image centre (Zhang et al.'s "Center" baseline; for an even
    side the first of the central pixels in row-major order), and the energy of a uniform map (each object's share of
    its image). On data whose objects are large and near the centre both are high, so a method earns credit only by
    beating them.

    Args:
        masks: ``(B, H, W)`` bool object masks.
        tolerance, on_empty: as :func:`pointing_game`.

    Raises:
        TypeError: if ``masks`` is not a bool tensor.
        ValueError: if ``masks`` is not ``(B, H, W)`` with ``B >= 1``, and as :func:`pointing_game`.
    """
    if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool:
        raise TypeError(f"masks must be a bool tensor (True on the object), got "
                        f"{masks.dtype if isinstance(masks, torch.Tensor) else type(masks).__name__}")
    if masks.ndim != 3 or masks.shape[0] == 0:
        raise ValueError(f"masks must have shape (B, H, W) with B >= 1, got {tuple(masks.shape)}")
    b, h, w = masks.shape
    ys = torch.arange(h, dtype=torch.float32).view(h, 1) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float32).view(1, w) - (w - 1) / 2
    cone = (ys.square() + xs.square()).max() - (ys.square() + xs.square())  # non-negative, highest at the centre
    result = pointing_game(cone.expand(b, h, w).to(masks.device), masks, tolerance=tolerance, on_empty=on_empty)
    share = masks.flatten(1).float().mean(1).cpu()
    return PointingResult(hits=result.hits, energy=torch.where(result.valid, share, float("nan")), valid=result.valid)
