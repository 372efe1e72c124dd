"""CBAM's channel attention module (CAM).

Paper: "CBAM: Convolutional Block Attention Module", Woo et al., ECCV 2018, https://arxiv.org/abs/1807.06521 (Sec. 3,
Eq. 2): ``M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))`` with one MLP shared by both descriptors.

Differences from the paper, and from timm's ``ChannelAttn``:
- Both descriptors go through the shared MLP in one call (stacked), instead of two; same result, fewer launches.
- The MLP has no biases by default, as in Eq. 2 and timm (the authors' code uses ``nn.Linear`` with biases:
  ``mlp_bias=True``).
- The hidden width is ``channels * rd_ratio`` rounded to ``rd_divisor=1`` (timm's choice); the paper uses ``C / 16``.
- ``identity_init=True`` adds a ReZero blend to the gate (see ``Gate``) so the block starts as an exact identity.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .components import Gate, LayerSpec, check_channels, reduced_channels, reject_unknown, resolve_act
from .pooling import mean_max, scale_channels
from .registry import register_block

# Layout tests and autograd Functions inside: one opaque call for FX tracers (timm's and torchvision's alike).
torch.fx.wrap("scale_channels")


@torch.fx.wrap
def channel_mean_max(x: torch.Tensor) -> torch.Tensor:
    """Average and max over the positions of a (B, C, H, W) map, stacked as ``(B, 2, C)``."""
    # mean_max needs the pooled positions as one dim of a view: (B, C, HW) for NCHW, (B, HW, C) for NHWC.
    if x.is_contiguous():
        average, peak = (t.squeeze(2) for t in mean_max(x.flatten(2), 2))
    elif x.is_contiguous(memory_format=torch.channels_last):
        average, peak = (t.squeeze(1) for t in mean_max(x.permute(0, 2, 3, 1).flatten(1, 2), 1))
    else:
        average, peak = x.mean((2, 3)), x.amax((2, 3))
    return torch.stack((average, peak), dim=1)

__all__ = ["ChannelAttention"]


@register_block("cam", aliases=("channel", "channel_attention"))
class ChannelAttention(nn.Module):
    """Channel gate from average- and max-pooled descriptors through one shared MLP.

    Args:
        channels: input (= output) channels.
        rd_ratio: hidden width as a fraction of ``channels`` (paper: 1/16).
        rd_channels: explicit hidden width; overrides ``rd_ratio``.
        rd_divisor: round the hidden width to a multiple of this.
        act_layer: activation inside the MLP (paper: ReLU).
        gate_layer: gate non-linearity (paper: sigmoid).
        mlp_bias: use biases in the MLP.
        identity_init: start as an exact identity (for insertion into trained networks).
        device: device for the parameters.
        dtype: dtype for the parameters.

    Example:
        >>> ChannelAttention(64)(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(
            self,
            channels: int,
            *,
            rd_ratio: float = 1 / 16,
            rd_channels: int | None = None,
            rd_divisor: int = 1,
            act_layer: LayerSpec = "relu",
            gate_layer: LayerSpec = "sigmoid",
            mlp_bias: bool = False,
            identity_init: bool = False,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
            **kwargs: Any,
    ) -> None:
        reject_unknown(type(self), kwargs)
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        channels = check_channels(channels)
        hidden = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor)
        self.fc1 = nn.Linear(channels, hidden, bias=mlp_bias, **dd)
        self.act = resolve_act(act_layer)()
        self.fc2 = nn.Linear(hidden, channels, bias=mlp_bias, **dd)
        self.gate = Gate(gate_layer, identity_init=identity_init, **dd)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel gate, shape ``(B, C)``."""
        return self.gate(self.fc2(self.act(self.fc1(channel_mean_max(x)))).sum(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scale_channels(x, self.channel_weights(x))
