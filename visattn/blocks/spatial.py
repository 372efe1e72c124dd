"""CBAM's spatial attention module (SAM).

Paper: "CBAM: Convolutional Block Attention Module", Woo et al., ECCV 2018, https://arxiv.org/abs/1807.06521 (Sec. 3,
Eq. 3): ``M_s(F) = sigmoid(conv7x7([AvgPool_c(F); MaxPool_c(F)]))`` with the pools taken across channels.

Differences from the paper:
- A BatchNorm follows the conv (``norm_layer``), as in the authors' code and timm's ``SpatialAttn``; Eq. 3 omits it.
  ``norm_layer=None`` gives the equation exactly (the conv then has a bias).
- ``identity_init=True`` adds a ReZero blend to the gate (see ``Gate``) so the block starts as an exact identity.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .components import Gate, LayerSpec, check_channels, check_odd_kernel, reject_unknown, resolve_norm
from .pooling import mean_max
from .registry import register_block

torch.fx.wrap("mean_max")  # an autograd Function inside: one opaque call for FX tracers

__all__ = ["SpatialAttention"]


@register_block("spatial", aliases=("sam", "spatial_attention"))
class SpatialAttention(nn.Module):
    """Spatial gate from channel-wise mean and max maps through a ``k x k`` conv.

    Args:
        channels: input channels. Unused by the maths (the gate is channel-agnostic); kept for the ``attn_layer``
            contract.
        kernel_size: odd conv kernel size (paper: 7; its ablation found 7 better than 3).
        norm_layer: norm after the conv, or None.
        gate_layer: gate non-linearity (paper: sigmoid).
        identity_init: start as an exact identity (for insertion into trained networks).
        device: device for the parameters.
        dtype: dtype for the parameters.

    Example:
        >>> SpatialAttention(64)(torch.randn(2, 64, 9, 7)).shape
        torch.Size([2, 64, 9, 7])
    """

    def __init__(
            self,
            channels: int,
            *,
            kernel_size: int = 7,
            norm_layer: LayerSpec = "batchnorm",
            gate_layer: LayerSpec = "sigmoid",
            identity_init: bool = False,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
            **kwargs: Any,
    ) -> None:
        reject_unknown(type(self), kwargs)
        super().__init__()
        check_channels(channels)
        check_odd_kernel(kernel_size, "kernel_size")
        dd = {"device": device, "dtype": dtype}
        norm = resolve_norm(norm_layer)
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=norm is None, **dd)
        self.norm = norm(1, **dd) if norm is not None else nn.Identity()
        self.gate = Gate(gate_layer, identity_init=identity_init, **dd)

    def spatial_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial gate, shape ``(B, 1, H, W)``."""
        # mean_max: one fused backward pass over x. The 2-channel map is tiny, and oneDNN's conv backward is ~4x
        # faster on it in channels_last than in NCHW (measured on CPU).
        descriptors = torch.cat(mean_max(x, 1), dim=1)
        try:
            descriptors = descriptors.contiguous(memory_format=torch.channels_last)
        except RuntimeError:  # torch.func.vmap has no memory formats; a layout is only a speed-up here
            pass
        return self.gate(self.norm(self.conv(descriptors)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.spatial_weights(x)
