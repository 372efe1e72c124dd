"""Squeeze-and-Excitation.

Paper: "Squeeze-and-Excitation Networks", Hu et al., CVPR 2018, https://arxiv.org/abs/1709.01507

Global average pool -> FC reduce -> activation -> FC expand -> sigmoid gate -> rescale channels (paper Fig. 1/Eq. 2-3).

Differences from the paper, and from timm's ``SEModule``:
- The hidden width follows timm (``rd_ratio=1/16`` rounded to a multiple of ``rd_divisor=8``), not exactly ``C / r``,
  so narrow layers keep a usable bottleneck.
- The FC layers are ``nn.Linear`` on the pooled vector rather than timm's 1x1 convs: same maths, fewer kernel
  launches; weight shapes differ from timm's by the trailing ``1, 1``.
- ``identity_init=True`` adds a ReZero blend to the gate (see ``Gate``) so the block starts as an exact identity.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .components import Gate, LayerSpec, check_channels, reduced_channels, reject_unknown, resolve_act
from .pooling import accumulated_mean
from .registry import register_block

__all__ = ["SqueezeExcite"]


@register_block("se", aliases=("squeeze_excite", "squeeze_excitation"))
class SqueezeExcite(nn.Module):
    """Channel gate from globally average-pooled features.

    Args:
        channels: input (= output) channels.
        rd_ratio: hidden width as a fraction of ``channels`` (paper's ``1/r``, r=16).
        rd_channels: explicit hidden width; overrides ``rd_ratio``.
        rd_divisor: round the hidden width to a multiple of this.
        act_layer: activation between the two FC layers.
        gate_layer: gate non-linearity (paper: sigmoid).
        bias: use biases in the FC layers (the paper's FC layers have them).
        identity_init: start as an exact identity (for insertion into trained networks).
        device: device for the parameters.
        dtype: dtype for the parameters.

    Example:
        >>> se = SqueezeExcite(64)
        >>> se(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(
            self,
            channels: int,
            *,
            rd_ratio: float = 1 / 16,
            rd_channels: int | None = None,
            rd_divisor: int = 8,
            act_layer: LayerSpec = "relu",
            gate_layer: LayerSpec = "sigmoid",
            bias: bool = True,
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
        self.fc1 = nn.Linear(channels, hidden, bias=bias, **dd)
        self.act = resolve_act(act_layer)()
        self.fc2 = nn.Linear(hidden, channels, bias=bias, **dd)
        self.gate = Gate(gate_layer, identity_init=identity_init, **dd)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel gate, shape ``(B, C)``."""
        squeezed = accumulated_mean(x, (2, 3))
        return self.gate(self.fc2(self.act(self.fc1(squeezed))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel_weights(x)[:, :, None, None]
