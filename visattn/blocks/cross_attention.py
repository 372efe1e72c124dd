"""Cross-attention between two feature maps: every pixel of ``x`` attends to every pixel of ``context``.

Queries come from one source and keys and values from another (Vaswani et al. 2017, arXiv 1706.03762, Sec. 3.2.3):
in image classification typically a deep stage attending to a higher-resolution earlier stage (cross-scale
attention, as in CrossViT, Chen et al. 2021, arXiv 2103.14899), or one view attending to a second view. The block
is built like pixel self-attention (:mod:`visattn.blocks.self_attention`) and takes the same ``score``,
``num_heads``, ``kv_stride``, ``position`` and ``attn_drop`` options; its output branch starts at zero, so
``forward(x, context) == x`` until it trains.

The two maps may have any sizes. Positions put both grids in the query map's pixel units: a context pixel's centre
is scaled by ``H / H_context`` (and ``W / W_context``), so a query pixel's relative offset to the context pixel
covering the same image location is 0 whatever the two resolutions.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from .attention_core import POSITIONS, SCORES, AttentionCore, canonical_score
from .components import LayerSpec, check_channels, reduced_channels, reject_unknown, resolve_norm
from .positions import grid_positions
from .registry import register_block

__all__ = ["CrossAttention2d"]


@register_block("cross_attention", aliases=("cross_attn",), inputs=2)
class CrossAttention2d(nn.Module):
    """Cross-attention: each pixel of ``x`` aggregates the values of all pixels of a second map, ``context``.

    ``x + W_z sum_j a(q_i, k_j) v_j`` with queries from ``x`` and keys and values from ``context``.

    Args:
        channels: channels of ``x`` (= output channels).
        context_channels: channels of ``context``; default ``channels``.
        score: attention score (see :mod:`visattn.blocks.attention_core`); ``'gaussian'`` compares raw features
            and needs ``context_channels == channels``.
        num_heads: attention heads.
        rd_ratio: embedding width as a fraction of ``channels``.
        rd_channels: explicit embedding width (divisible by ``num_heads``).
        rd_divisor: round the embedding width to a multiple of this.
        kv_stride: max-pool the context's keys and values by this factor.
        scale: logit scale of the dot-product scores.
        position: None, ``'relative'`` or ``'sinusoidal'`` (see the module docstring for mixed resolutions).
        max_distance: with ``'relative'``, offsets clipped to this many query pixels per axis.
        attn_drop: dropout on the attention weights, in training only.
        qkv_bias: biases in the projections.
        norm_layer: norm after the output projection; its scale starts at 0 (with None, the projection does).
        identity_init: accepted for the common block interface; this block always starts as an identity.
        device: device for the parameters.
        dtype: dtype for the parameters.

    Example:
        >>> attn = CrossAttention2d(512, context_channels=256, num_heads=4)
        >>> attn(torch.randn(2, 512, 4, 4), torch.randn(2, 256, 8, 8)).shape
        torch.Size([2, 512, 4, 4])
    """

    CHOICES: ClassVar[dict[str, tuple[str | None, ...]]] = {"score": SCORES, "position": POSITIONS}

    def __init__(
            self,
            channels: int,
            *,
            context_channels: int | None = None,
            score: str = "embedded_gaussian",
            num_heads: int = 1,
            rd_ratio: float = 1 / 8,
            rd_channels: int | None = None,
            rd_divisor: int = 8,
            kv_stride: int = 1,
            scale: float | None = None,
            position: str | None = None,
            max_distance: int = 7,
            attn_drop: float = 0.0,
            qkv_bias: bool = True,
            norm_layer: LayerSpec = "batchnorm",
            identity_init: bool = False,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
            **kwargs: Any,
    ) -> None:
        reject_unknown(type(self), kwargs)
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        channels = check_channels(channels)
        context_channels = check_channels(context_channels if context_channels is not None else channels,
                                          "context_channels")
        score = canonical_score(score)
        for arg, value in (("num_heads", num_heads), ("kv_stride", kv_stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if rd_channels is None:
            inner = reduced_channels(channels, rd_ratio, None, math.lcm(rd_divisor, num_heads))
        else:
            inner = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor)
            if inner % num_heads:
                raise ValueError(f"rd_channels={rd_channels} must be divisible by num_heads={num_heads}")
        if score == "gaussian" and (context_channels != channels or channels % num_heads):
            raise ValueError(f"score='gaussian' compares raw features: context_channels ({context_channels}) must "
                             f"equal channels ({channels}) and num_heads ({num_heads}) must divide them")
        self.num_heads = num_heads
        self.inner_channels = inner
        self.kv_stride = kv_stride
        self.context_channels = context_channels
        qk_dim = (channels if score == "gaussian" else inner) // num_heads
        self.attn = AttentionCore(score, num_heads, qk_dim, scale=scale, position=position, max_distance=max_distance,
                                  attn_drop=attn_drop, **dd)
        if score == "gaussian":
            self.query = self.key = None
        else:
            self.query = nn.Conv2d(channels, inner, 1, bias=qkv_bias, **dd)
            self.key = nn.Conv2d(context_channels, inner, 1, bias=qkv_bias, **dd)
        self.value = nn.Conv2d(context_channels, inner, 1, bias=qkv_bias, **dd)
        self.pool = nn.MaxPool2d(kv_stride, ceil_mode=True) if kv_stride > 1 else nn.Identity()
        self.proj = nn.Conv2d(inner, channels, 1, **dd)
        norm = resolve_norm(norm_layer)
        self.norm = norm(channels, **dd) if norm is not None else nn.Identity()
        self.reset_identity()

    @property
    def score(self) -> str:
        return self.attn.score

    def reset_identity(self) -> None:
        """Zero the output branch so that ``forward(x, context) == x``."""
        if getattr(self.norm, "weight", None) is None:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        else:
            nn.init.zeros_(self.norm.weight)
            if getattr(self.norm, "bias", None) is not None:
                nn.init.zeros_(self.norm.bias)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, c, h, w = t.shape
        out = t.reshape(b, self.num_heads, c // self.num_heads, h * w).transpose(-1, -2).contiguous()
        return out if out.stride(-1) == 1 else out.clone(memory_format=torch.contiguous_format)

    def qkv(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Head-split queries of ``x`` and keys / values of the (pooled) context."""
        q = x if self.query is None else self.query(x)
        k = self.pool(context if self.key is None else self.key(context))
        return self._heads(q), self._heads(k), self._heads(self.pool(self.value(context)))

    def positions(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(N, 2)`` query and ``(N_kv, 2)`` key positions, both in ``x``'s pixel units (None without positions)."""
        if self.attn.position is None:
            return None, None
        (h, w), (ch, cw), s = x.shape[-2:], context.shape[-2:], self.kv_stride
        # float64: the scale factors are fractions, and float64 inputs deserve exact positions.
        keys = grid_positions(-(-ch // s), -(-cw // s), s, device=x.device, dtype=torch.float64)  # context pixels
        factor = torch.tensor([h / ch, w / cw], device=x.device, dtype=torch.float64)
        return grid_positions(h, w, device=x.device), (keys + 0.5) * factor - 0.5

    def _check(self, x: torch.Tensor, context: torch.Tensor) -> None:
        if context.ndim != 4 or context.shape[0] != x.shape[0] or context.shape[1] != self.context_channels:
            raise ValueError(f"context must be (B, {self.context_channels}, H', W') with the B = {x.shape[0]} of x, "
                             f"got {tuple(context.shape)}")

    def query_attention(self, x: torch.Tensor, context: torch.Tensor, query: torch.Tensor, *,
                        per_head: bool = False) -> torch.Tensor:
        """Attention of the query pixels ``query`` (flat indices into ``x``'s ``H*W``) over the context's pixels:
        ``(B, len(query), N_kv)``, or per head ``(B, heads, len(query), N_kv)``. For maps, not for training."""
        self._check(x, context)
        q, k, _ = self.qkv(x, context)
        q_pos, k_pos = self.positions(x, context)
        weights = self.attn.weights(q[:, :, query], k, q_pos=q_pos[query] if q_pos is not None else None,
                                    k_pos=k_pos)
        return weights if per_head else weights.mean(1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return cross_attention_2d(self, x, context)

    def extra_repr(self) -> str:
        return f"context_channels={self.context_channels}, inner_channels={self.inner_channels}"


@torch.fx.wrap  # shape checks and kernel choices inside: one opaque call for FX tracers
def cross_attention_2d(block: CrossAttention2d, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """:meth:`CrossAttention2d.forward`: ``x + W_z y``, with ``y`` each pixel of ``x`` attending over ``context``."""
    block._check(x, context)
    b, _, h, w = x.shape
    q_pos, k_pos = block.positions(x, context)
    y = block.attn(*block.qkv(x, context), q_pos=q_pos, k_pos=k_pos)
    return x + block.norm(block.proj(y.transpose(-1, -2).reshape(b, block.inner_channels, h, w)))
