"""Eigen-CAM (Muhammad & Yeasin 2020, arXiv 2008.00299): the first principal component of the target layer's
activations, projected back onto the positions. Gradient-free and class-agnostic: ``targets`` only choose which class
is reported, not the map.

Difference: an SVD fixes a component only up to sign; the paper (and pytorch-grad-cam) keep whatever sign the solver
returns, which can invert the map. Here the sign is chosen so the map correlates positively with the channel-mean
activation, making maps reproducible across solvers and devices.
"""

from __future__ import annotations

import torch

from .base import BaseCAM
from .targets import Targets, target_classes

__all__ = ["EigenCAM"]


class EigenCAM(BaseCAM):
    """Eigen-CAM; see the module docstring."""

    name = "eigencam"
    uses_gradients = False

    def _layer_maps(self, images: torch.Tensor, targets: Targets
                    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        logits, activations = self.forward_capture(images)
        return logits, target_classes(logits, targets), self.maps_from_capture(activations, None)

    def maps_from_capture(self, activations: dict[str, torch.Tensor],
                          grads: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        return {name: principal_projection(a.detach().to(torch.promote_types(a.dtype, torch.float32))).clamp_min(0)
                for name, a in activations.items()}


def principal_projection(activations: torch.Tensor) -> torch.Tensor:
    """``(B, h, w)`` projection of each position's centred ``C``-vector onto the first right singular vector."""
    b, c, h, w = activations.shape
    x = activations.reshape(b, c, h * w).transpose(1, 2)  # (B, positions, C)
    x = x - x.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    projection = x @ vh[:, 0, :, None]  # (B, positions, 1)
    mean_map = activations.mean(1).reshape(b, h * w, 1)
    sign = torch.sign(((projection - projection.mean(1, keepdim=True)) * mean_map).sum(1, keepdim=True))
    return (projection * torch.where(sign == 0, torch.ones_like(sign), sign)).view(b, h, w)
