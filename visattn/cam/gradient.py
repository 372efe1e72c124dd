"""Gradient-weighted class activation maps: Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM and LayerCAM.

Each combines a layer's activations ``A`` (B, C, h, w) with the gradients ``G = dS/dA`` of the target score ``S``
(the class logit); the base class applies ReLU, scales to [0, 1] and upsamples. Formulas follow each paper and agree
with pytorch-grad-cam's implementations (same epsilons), which the benchmark checks to 1e-4.
"""

from __future__ import annotations

import torch

from .base import GradientCAM

__all__ = ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM"]


def _weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """``sum_c weights[b, c] * A[b, c]`` -> (B, h, w), as one batched matmul."""
    b, c, h, w = activations.shape
    return torch.bmm(weights[:, None, :], activations.reshape(b, c, h * w)).view(b, h, w)


class GradCAM(GradientCAM):
    """Grad-CAM (Selvaraju et al. 2017, arXiv 1610.02391, Eq. 1-2): channel weights are the spatially averaged
    gradients, ``L = ReLU(sum_c mean_ij(G_c) A_c)``."""

    name = "gradcam"

    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return _weighted_sum(grads.mean((2, 3)), activations)


class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++ (Chattopadhyay et al. 2018, arXiv 1710.11063, Eq. 19): pixel-wise weights
    ``alpha = G^2 / (2 G^2 + sum_ab A_ab G^3)`` on the positive gradients.

    As in the paper's implementation, the score is treated as ``exp(S)`` so that higher derivatives reduce to powers
    of the first one.
    """

    name = "gradcam++"

    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        g2 = grads.pow(2)
        g3 = g2 * grads
        denominator = 2 * g2 + activations.sum((2, 3), keepdim=True) * g3 + 1e-6
        alpha = torch.where(grads != 0, g2 / denominator, torch.zeros_like(g2))
        weights = (alpha * grads.clamp_min(0)).sum((2, 3))
        return _weighted_sum(weights, activations)


class XGradCAM(GradientCAM):
    """XGrad-CAM (Fu et al. 2020, arXiv 2008.02312, Eq. 10): weights ``sum_ij(A_c G_c) / sum_ij(A_c)``."""

    name = "xgradcam"

    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        weights = (activations * grads).sum((2, 3)) / (activations.sum((2, 3)) + 1e-7)
        return _weighted_sum(weights, activations)


class HiResCAM(GradientCAM):
    """HiResCAM (Draelos & Carin 2020, arXiv 2011.08891): element-wise ``sum_c G_c * A_c``, no spatial averaging, so
    the map shows exactly the locations that raise the score (for models ending in global average pooling + linear)."""

    name = "hirescam"

    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return (activations * grads).sum(1)


class LayerCAM(GradientCAM):
    """LayerCAM (Jiang et al. 2021, IEEE TIP, doi:10.1109/TIP.2021.3089943, Eq. 5-6): element-wise
    ``sum_c ReLU(G_c) * A_c``; reliable on shallow layers too, where Grad-CAM's averaged weights are noisy."""

    name = "layercam"

    def combine(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return (activations * grads.clamp_min(0)).sum(1)
