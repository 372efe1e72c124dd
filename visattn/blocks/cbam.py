"""Convolutional Block Attention Module: channel attention, then spatial attention.

Paper: "CBAM: Convolutional Block Attention Module", Woo et al., ECCV 2018, https://arxiv.org/abs/1807.06521 (Eq. 1).

``order`` selects the arrangements the paper ablates in Table 4:
- ``'channel_first'`` (the paper's choice, best in its ablation): ``F' = M_c(F) * F``, ``F'' = M_s(F') * F'``;
- ``'spatial_first'``: the same with the two modules swapped;
- ``'parallel'``: both gates computed from ``F`` and applied together, ``F * M_c(F) * M_s(F)``. The paper does not
  spell out how its parallel variant merges the gates; the product keeps each gate's meaning.

Differences from the paper are those of ``ChannelAttention`` and ``SpatialAttention`` (see their module docstrings).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from .cbam_fused import fused_cbam_supported, fused_channel_first_cbam
from .channel import ChannelAttention
from .components import LayerSpec, check_channels, check_odd_kernel, reject_unknown
from .registry import register_block
from .spatial import SpatialAttention

__all__ = ["CBAM"]

CbamOrder = Literal["channel_first", "spatial_first", "parallel"]
_ORDERS = ("channel_first", "spatial_first", "parallel")


@register_block("cbam")
class CBAM(nn.Module):
    """Channel attention followed by spatial attention (or the paper's ablated arrangements).

    Args:
        channels: input (= output) channels.
        rd_ratio: channel-MLP hidden width as a fraction of ``channels`` (paper: 1/16).
        rd_channels: explicit channel-MLP hidden width; overrides ``rd_ratio``.
        rd_divisor: round the hidden width to a multiple of this.
        spatial_kernel_size: odd kernel size of the spatial conv (paper: 7).
        act_layer: activation inside the channel MLP.
        gate_layer: gate non-linearity of both modules (paper: sigmoid).
        norm_layer: norm after the spatial conv, or None.
        mlp_bias: use biases in the channel MLP.
        order: ``'channel_first'`` | ``'spatial_first'`` | ``'parallel'``.
        identity_init: start as an exact identity (for insertion into trained networks).
        device: device for the parameters.
        dtype: dtype for the parameters.

    Example:
        >>> CBAM(64, order='parallel')(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(
            self,
            channels: int,
            *,
            rd_ratio: float = 1 / 16,
            rd_channels: int | None = None,
            rd_divisor: int = 1,
            spatial_kernel_size: int = 7,
            act_layer: LayerSpec = "relu",
            gate_layer: LayerSpec = "sigmoid",
            norm_layer: LayerSpec = "batchnorm",
            mlp_bias: bool = False,
            order: CbamOrder = "channel_first",
            identity_init: bool = False,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
            **kwargs: Any,
    ) -> None:
        reject_unknown(type(self), kwargs)
        super().__init__()
        if order not in _ORDERS:
            raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
        dd = {"device": device, "dtype": dtype}
        channels = check_channels(channels)
        self.order = order
        # One autograd node for channel_first training (cbam_fused.py): same maths, less memory and traffic. It is
        # used for feature maps of at least `fused_min_numel` elements (8 MB in float32), where allocation and
        # memory traffic dominate; on small maps its gain was within run-to-run noise on CPU. Set `fused = False`
        # to always run the composed modules, e.g. for gradients of gradients (the fused node is differentiable once).
        self.fused = True
        self.fused_min_numel = 1 << 21
        self.channel = ChannelAttention(
            channels,
            rd_ratio=rd_ratio,
            rd_channels=rd_channels,
            rd_divisor=rd_divisor,
            act_layer=act_layer,
            gate_layer=gate_layer,
            mlp_bias=mlp_bias,
            identity_init=identity_init,
            **dd,
        )
        check_odd_kernel(spatial_kernel_size, "spatial_kernel_size")  # named as the caller wrote it
        self.spatial = SpatialAttention(
            channels,
            kernel_size=spatial_kernel_size,
            norm_layer=norm_layer,
            gate_layer=gate_layer,
            identity_init=identity_init,
            **dd,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and fused_cbam_supported(self, x):
            return fused_channel_first_cbam(self, x)
        if self.order == "channel_first":
            return self.spatial(self.channel(x))
        if self.order == "spatial_first":
            return self.channel(self.spatial(x))
        return x * self.channel.channel_weights(x)[:, :, None, None] * self.spatial.spatial_weights(x)

    def extra_repr(self) -> str:
        return f"order={self.order!r}"
