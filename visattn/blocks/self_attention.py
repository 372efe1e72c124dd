"""Pixel-level self-attention: the non-local block, every pixel attending to every pixel.

Paper: "Non-local Neural Networks", Wang et al., CVPR 2018, https://arxiv.org/abs/1711.07971 (Sec. 3, Eq. 1-6).

``z_i = x_i + W_z y_i`` with ``y_i = sum_j a(x_i, x_j) g(x_j)``; theta/phi/g are 1x1 convs (here ``query``, ``key``,
``value``), ``W_z`` is ``proj`` followed by a BatchNorm whose scale starts at zero, so the block is an identity at
initialisation (paper Sec. 4.1). ``score`` picks ``a``: any score of :mod:`visattn.blocks.attention_core`, the
paper's four among them. ``pairwise`` keeps the paper's own names:

========================  ===========================  ======================================================
``pairwise`` (paper)      ``score``                    f(x_i, x_j) and C(x)
========================  ===========================  ======================================================
``embedded_gaussian``     ``embedded_gaussian``        softmax_j(theta_i . phi_j * scale)
``gaussian``              ``gaussian``                 softmax_j(x_i . x_j * scale)
``dot``                   ``nonlocal_dot``             theta_i . phi_j / N (no softmax)
``concat``                ``nonlocal_concat``          ReLU(w_f . [theta_i, phi_j]) / N (no softmax)
========================  ===========================  ======================================================

``score='dot'`` and ``score='concat'`` are the softmax-normalised dot-product and concat (Luong) attention of the
attention literature, not the paper's forms. None of the scores keeps an N x N matrix for backward.

Differences from the paper, and from timm's ``NonLocalAttn``:
- The softmax variants scale logits by ``head_dim ** -0.5`` (Transformer-style; the paper has no scale, timm uses
  ``channels ** -0.5``). Pass ``scale=1.0`` for the paper's unscaled form.
- ``num_heads`` splits the embedding into independent heads (paper: one head).
- ``rd_ratio`` defaults to 1/8 (timm) rather than the paper's 1/2: as an ``attn_layer`` the block sits in every
  residual block, where 1/2 would more than double a ResNet-50's parameters. Pass ``rd_ratio=0.5`` for the paper's.
- ``kv_stride`` max-pools phi and g (the paper's "subsampling" trick, Sec. 3.3) with ``ceil_mode``, so odd sizes work.
- ``position`` adds 2-D relative or sinusoidal positions (the paper has none); ``mask`` keeps padded pixels out.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from .attention_core import POSITIONS, SCORES, AttentionCore, canonical_score
from .components import LayerSpec, check_channels, reduced_channels, reject_unknown, resolve_norm
from .positions import grid_positions
from .registry import register_block

__all__ = ["PixelSelfAttention", "PAIRWISE_FUNCTIONS", "SCORES"]

Pairwise = Literal["embedded_gaussian", "dot", "gaussian", "concat"]
PAIRWISE_FUNCTIONS: tuple[str, ...] = ("embedded_gaussian", "dot", "gaussian", "concat")
# The non-local paper's names -> scores ('dot' and 'concat' there have no softmax).
_PAIRWISE_SCORES = {"embedded_gaussian": "embedded_gaussian", "scaled_dot": "embedded_gaussian",
                    "gaussian": "gaussian", "dot": "nonlocal_dot", "concat": "nonlocal_concat"}
_PAPER_NAMES = {"embedded_gaussian": "embedded_gaussian", "gaussian": "gaussian", "nonlocal_dot": "dot",
                "nonlocal_concat": "concat"}


@register_block("nonlocal", aliases=("non_local", "pixel_self_attention", "self_attention"))
class PixelSelfAttention(nn.Module):
    """Non-local block: each pixel aggregates the values of all pixels, weighted by an attention score.

    Args:
        channels: input (= output) channels.
        score: the attention score (default ``'embedded_gaussian'``, alias ``'scaled_dot'``), one of
            ``visattn.blocks.SCORES``; see :mod:`visattn.blocks.attention_core`.
        pairwise: the non-local paper's name for the score instead (``'embedded_gaussian'``, ``'dot'``,
            ``'gaussian'``, ``'concat'``); give one of ``score`` and ``pairwise``.
        num_heads: attention heads; the embedding width is rounded to a multiple of it (timm's make_divisible).
        rd_ratio: embedding width of theta/phi/g as a fraction of ``channels``.
        rd_channels: explicit embedding width; overrides ``rd_ratio`` (must be divisible by ``num_heads``).
        rd_divisor: round the embedding width to a multiple of this.
        kv_stride: max-pool phi and g by this factor (1 = no subsampling).
        scale: logit scale of the dot-product scores; default ``head_dim ** -0.5`` (1 for ``dot``, ``bilinear``).
        position: None, ``'relative'`` (learned 2-D bias per head, softmax scores) or ``'sinusoidal'``.
        max_distance: with ``position='relative'``, offsets clipped to this many pixels per axis.
        attn_drop: dropout on the attention weights, in training only.
        qkv_bias: biases in the theta/phi/g convs.
        norm_layer: norm after ``proj``; its scale starts at 0. With None, ``proj`` itself starts at 0.
        identity_init: accepted for the common block interface; this block always starts as an identity.
        device: device for the parameters.
        dtype: dtype for the parameters.

    Example:
        >>> attn = PixelSelfAttention(64, num_heads=2, kv_stride=2, position="relative")
        >>> attn(torch.randn(2, 64, 15, 9)).shape
        torch.Size([2, 64, 15, 9])
    """

    CHOICES: ClassVar[dict[str, tuple[str | None, ...]]] = {
        "score": SCORES, "pairwise": PAIRWISE_FUNCTIONS, "position": POSITIONS}

    def __init__(
            self,
            channels: int,
            *,
            score: str = "embedded_gaussian",
            pairwise: Pairwise | None = None,
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
        if score != "embedded_gaussian" and pairwise is not None:
            raise ValueError(f"give score or pairwise, not both (got score={score!r}, pairwise={pairwise!r})")
        if pairwise is not None:
            if pairwise not in _PAIRWISE_SCORES:
                raise ValueError(f"pairwise must be one of {PAIRWISE_FUNCTIONS} (or 'scaled_dot'), got {pairwise!r}; "
                                 f"the other scores go through score=, one of {SCORES}")
            score = _PAIRWISE_SCORES[pairwise]
        score = canonical_score(score)
        for arg, value in (("num_heads", num_heads), ("kv_stride", kv_stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")

        if rd_channels is None:
            # Round to the nearest multiple of lcm(rd_divisor, num_heads) (at least one) so any head count works.
            inner = reduced_channels(channels, rd_ratio, None, math.lcm(rd_divisor, num_heads))
        else:
            inner = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor)
            if inner % num_heads:
                raise ValueError(f"rd_channels={rd_channels} must be divisible by num_heads={num_heads}")
        if score == "gaussian" and channels % num_heads:
            raise ValueError(f"score='gaussian' splits the {channels} input channels into heads, "
                             f"so num_heads={num_heads} must divide them")

        self.num_heads = num_heads
        self.inner_channels = inner
        self.kv_stride = kv_stride
        qk_dim = (channels if score == "gaussian" else inner) // num_heads
        self.attn = AttentionCore(score, num_heads, qk_dim, scale=scale, position=position, max_distance=max_distance,
                                  attn_drop=attn_drop, **dd)

        if score == "gaussian":  # f uses x itself: no theta/phi embedding
            self.query = self.key = None
        else:
            self.query = nn.Conv2d(channels, inner, 1, bias=qkv_bias, **dd)
            self.key = nn.Conv2d(channels, inner, 1, bias=qkv_bias, **dd)
        self.value = nn.Conv2d(channels, inner, 1, bias=qkv_bias, **dd)
        self.pool = nn.MaxPool2d(kv_stride, ceil_mode=True) if kv_stride > 1 else nn.Identity()
        self.proj = nn.Conv2d(inner, channels, 1, **dd)
        norm = resolve_norm(norm_layer)
        self.norm = norm(channels, **dd) if norm is not None else nn.Identity()
        self.reset_identity()

    @property
    def score(self) -> str:
        """The attention score's canonical name."""
        return self.attn.score

    @property
    def pairwise(self) -> str | None:
        """The non-local paper's name for the score, or None for the scores the paper does not have."""
        return _PAPER_NAMES.get(self.attn.score)

    @property
    def scale(self) -> float:
        return self.attn.scale

    @property
    def concat_weight(self) -> nn.Parameter:
        """``w_f`` of ``score='nonlocal_concat'`` (``pairwise='concat'``): ``(heads, 2 * head_dim)``."""
        return self.attn.concat_weight

    def reset_identity(self) -> None:
        """Zero the output branch so that ``forward(x) == x`` (paper Sec. 4.1)."""
        if getattr(self.norm, "weight", None) is None:  # no norm, or one without affine parameters
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        else:
            nn.init.zeros_(self.norm.weight)
            if getattr(self.norm, "bias", None) is not None:
                nn.init.zeros_(self.norm.bias)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        # (B, h*d, H, W) -> (B, h, H*W, d). contiguous() matters: PyTorch's CPU flash kernel only takes contiguous
        # q/k/v and otherwise silently falls back to the O(N^2) math path.
        b, c, hh, ww = t.shape
        heads = t.reshape(b, self.num_heads, c // self.num_heads, hh * ww).transpose(-1, -2).contiguous()
        if heads.stride(-1) != 1:  # head dim 1: contiguous() sees nothing to do, yet the kernel wants stride 1
            heads = heads.clone(memory_format=torch.contiguous_format)
        return heads

    def _pool_keys(self, t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``pool(t)``; with a mask, padded pixels never win a pooling window (a window of padding gives 0)."""
        if mask is None or self.kv_stride == 1:
            return self.pool(t)
        pooled = self.pool(t.masked_fill(~mask[:, None], float("-inf")))
        return pooled.masked_fill(pooled == float("-inf"), 0.0)

    def key_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """``(B, N_kv)`` keys with at least one real pixel in their pooling window, from a ``(B, H, W)`` mask."""
        return self.pool(mask[:, None].float())[:, 0].flatten(1) > 0

    def qkv(self, x: torch.Tensor, mask: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Head-split query, key and value: ``(B, h, N, d)``, ``(B, h, N_kv, d)``, ``(B, h, N_kv, d_v)``."""
        if self.query is None:  # gaussian
            q, k = x, self._pool_keys(x, mask)
        else:
            q, k = self.query(x), self._pool_keys(self.key(x), mask)
        v = self._pool_keys(self.value(x), mask)
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def _positions(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.attn.position is None:
            return None, None
        h, w = x.shape[-2:]
        s = self.kv_stride
        return (grid_positions(h, w, device=x.device),
                grid_positions(-(-h // s), -(-w // s), s, device=x.device))  # ceil_mode pooling's grid

    def query_attention(self, x: torch.Tensor, query: torch.Tensor, *, mask: torch.Tensor | None = None,
                        per_head: bool = False) -> torch.Tensor:
        """Attention weights of the query positions ``query`` (flat indices into ``H*W``) over every key:
        ``(B, len(query), N_kv)`` averaged over heads, or ``(B, heads, len(query), N_kv)`` with ``per_head``.
        For reading the block's own maps, not for training.
        """
        mask = self._check_mask(x, mask)
        q, k, _ = self.qkv(x, mask)
        q_pos, k_pos = self._positions(x)
        weights = self.attn.weights(q[:, :, query], k, q_pos=q_pos[query] if q_pos is not None else None,
                                    k_pos=k_pos, key_mask=self.key_mask(mask) if mask is not None else None)
        return weights if per_head else weights.mean(1)

    def _check_mask(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        if mask is None:
            return None
        expected = (x.shape[0], *x.shape[-2:])
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != expected:
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a bool tensor of shape (B, H, W) = {expected}, True where the pixel is "
                             f"real, got {got}")
        if x.shape[0] and not bool(mask.flatten(1).any(1).all()):
            raise ValueError("mask marks every pixel of an image as padding; each image needs a real pixel")
        return mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x + W_z y``; with ``mask`` ``(B, H, W)`` (True = real pixel), padded pixels are attended by no pixel and
        pass through unchanged themselves."""
        return pixel_self_attention(self, x, mask)

    def extra_repr(self) -> str:
        return f"inner_channels={self.inner_channels}, kv_stride={self.kv_stride}"


@torch.fx.wrap  # shape-dependent kernel choices inside: one opaque call for FX tracers (timm's and torchvision's)
def pixel_self_attention(block: PixelSelfAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """:meth:`PixelSelfAttention.forward`: ``x + W_z y``, with ``y`` every pixel's attention over all pixels."""
    mask = block._check_mask(x, mask)
    b, _, h, w = x.shape
    q_pos, k_pos = block._positions(x)
    y = block.attn(*block.qkv(x, mask), q_pos=q_pos, k_pos=k_pos,
                  key_mask=block.key_mask(mask) if mask is not None else None)
    branch = block.norm(block.proj(y.transpose(-1, -2).reshape(b, block.inner_channels, h, w)))
    if mask is not None:
        branch = branch * mask[:, None].to(branch.dtype)
    return x + branch
