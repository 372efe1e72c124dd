"""Gated multimodal fusion: a learned gate per feature mixes two encoded inputs.

Paper: "Gated Multimodal Units for Information Fusion", Arevalo et al., ICLR workshop 2017,
https://arxiv.org/abs/1702.01992 (Sec. 3, Eq. 1-4)::

    h1 = tanh(W1 x1)        h2 = tanh(W2 x2)        z = sigmoid(Wz [x1; x2])        h = z * h1 + (1 - z) * h2

One gate value per output feature (per pixel too, for maps), computed from both raw inputs as in the paper's Eq. 3.
Inputs are vectors ``(B, C)`` (a linear layer each) or maps ``(B, C, H, W)`` (a 1x1 conv each, so the gate is per
pixel as well). A map and a vector mix: the vector's encoding and gate terms are broadcast over the map's pixels.
Two maps of different sizes: the second is resized to the first's size (bilinear) before anything else.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .components import check_channels, reject_unknown
from .registry import register_block

__all__ = ["GatedFusion"]


@register_block("gated_fusion", aliases=("gmu",), inputs=2)
class GatedFusion(nn.Module):
    """Gated multimodal unit: a learned gate per feature mixes two encoded inputs (vectors or maps).

    ``z * tanh(W1 x1) + (1 - z) * tanh(W2 x2)`` with ``z = sigmoid(Wz [x1; x2])``, one gate per output feature.

    Args:
        channels: features of the first input ``x1``.
        other_channels: features of the second input ``x2``.
        out_channels: features of the output; default ``channels``.
        bias: biases in the two encoders and the gate.
        identity_init: accepted for the common block interface (a fusion has no identity to start from).
        device: device for the parameters.
        dtype: dtype for the parameters.

    Attributes:
        gate: the last call's gate ``z``, detached: ``(B, out_channels)`` or ``(B, out_channels, H, W)``, values in
            (0, 1); None before the first call. 1 means "all from ``x1``".

    Example:
        >>> fuse = GatedFusion(512, 16, out_channels=256)
        >>> fuse(torch.randn(8, 512), torch.randn(8, 16)).shape
        torch.Size([8, 256])
        >>> fuse.gate.shape
        torch.Size([8, 256])
    """

    def __init__(self, channels: int, other_channels: int, *, out_channels: int | None = None, bias: bool = True,
                 identity_init: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, **kwargs: Any) -> None:
        reject_unknown(type(self), kwargs)
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.channels = check_channels(channels)
        self.other_channels = check_channels(other_channels, "other_channels")
        self.out_channels = check_channels(out_channels if out_channels is not None else channels, "out_channels")
        self.encode1 = nn.Linear(self.channels, self.out_channels, bias=bias, **dd)
        self.encode2 = nn.Linear(self.other_channels, self.out_channels, bias=bias, **dd)
        # W_z [x1; x2] = W_z1 x1 + W_z2 x2: two halves, so a map and a vector can each be applied on their own.
        self.gate1 = nn.Linear(self.channels, self.out_channels, bias=bias, **dd)
        self.gate2 = nn.Linear(self.other_channels, self.out_channels, bias=False, **dd)
        self.gate: torch.Tensor | None = None

    @staticmethod
    def _features(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """The linear layer over the feature axis: dim 1 of a ``(B, C, H, W)`` map, the last of a ``(B, C)`` vector."""
        if x.ndim == 2:
            return layer(x)
        return F.conv2d(x, layer.weight[:, :, None, None], layer.bias)

    def _check(self, x: torch.Tensor, width: int, name: str) -> None:
        if x.ndim not in (2, 4) or x.shape[1] != width:
            raise ValueError(f"{name} must be (B, {width}) or (B, {width}, H, W), got {tuple(x.shape)}")

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        self._check(x1, self.channels, "x1")
        self._check(x2, self.other_channels, "x2")
        if x1.shape[0] != x2.shape[0]:
            raise ValueError(f"x1 and x2 must have the same batch size, got {x1.shape[0]} and {x2.shape[0]}")
        if x1.ndim == 4 and x2.ndim == 4 and x1.shape[-2:] != x2.shape[-2:]:
            x2 = F.interpolate(x2, size=x1.shape[-2:], mode="bilinear", align_corners=False)
        h1, h2 = torch.tanh(self._features(self.encode1, x1)), torch.tanh(self._features(self.encode2, x2))
        g1, g2 = self._features(self.gate1, x1), self._features(self.gate2, x2)
        if h1.ndim != h2.ndim:  # a map and a vector: the vector's terms hold for every pixel
            h1, h2, g1, g2 = (t[..., None, None] if t.ndim == 2 else t for t in (h1, h2, g1, g2))
        z = torch.sigmoid(g1 + g2)
        self.gate = z.detach()
        return z * h1 + (1 - z) * h2

    def extra_repr(self) -> str:
        return f"channels={self.channels}, other_channels={self.other_channels}, out_channels={self.out_channels}"
