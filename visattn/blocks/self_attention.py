"""Pixel-level self-attention: the non-local block, every pixel attending to every pixel.

Paper: "Non-local Neural Networks", Wang et al., CVPR 2018, https://arxiv.org/abs/1711.07971 (Sec. 3, Eq. 1-6).

``z_i = x_i + W_z y_i`` with ``y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j)``; theta/phi/g are 1x1 convs (here ``query``,
``key``, ``value``), ``W_z`` is ``proj`` followed by a BatchNorm whose scale starts at zero, so the block is an
identity at initialisation (paper Sec. 4.1). The four pairwise functions of Sec. 3.2:

========================  ===========================================  ===================  ======================
``pairwise``              f(x_i, x_j) and C(x)                         computed as          memory in N pixels
========================  ===========================================  ===================  ======================
``embedded_gaussian``     softmax_j(theta_i . phi_j * scale)           fused SDPA kernel    O(N)
``gaussian``              softmax_j(x_i . x_j * scale)                 fused SDPA kernel    O(N)
``dot``                   theta_i . phi_j / N                          theta (phi^T g) / N  O(N)
``concat``                ReLU(w_f . [theta_i, phi_j]) / N             sort + prefix sums   O(N log N) time, O(N)
========================  ===========================================  ===================  ======================

None of them materialises the N x N matrix. ``dot`` uses associativity. ``concat`` uses that
``w_f . [theta_i, phi_j] = a_i + b_j`` splits into a query score and a key score, so
``sum_j ReLU(a_i + b_j) g_j = a_i * S_g + S_bg``, with S summed over the keys with ``b_j > -a_i``: a suffix of the
keys sorted by ``b``.

Differences from the paper, and from timm's ``NonLocalAttn``:
- The softmax variants scale logits by ``head_dim ** -0.5`` (Transformer-style; the paper has no scale, timm uses
  ``channels ** -0.5``). Pass ``scale=1.0`` for the paper's unscaled form.
- ``num_heads`` splits the embedding into independent heads (paper: one head).
- ``rd_ratio`` defaults to 1/8 (timm) rather than the paper's 1/2: as an ``attn_layer`` the block sits in every
  residual block, where 1/2 would more than double a ResNet-50's parameters. Pass ``rd_ratio=0.5`` for the paper's.
- ``kv_stride`` max-pools phi and g (the paper's "subsampling" trick, Sec. 3.3) with ``ceil_mode``, so odd sizes work.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .components import LayerSpec, check_channels, reduced_channels, reject_unknown, resolve_norm
from .registry import register_block

__all__ = ["PixelSelfAttention", "PAIRWISE_FUNCTIONS"]

Pairwise = Literal["embedded_gaussian", "dot", "gaussian", "concat"]
PAIRWISE_FUNCTIONS: tuple[str, ...] = ("embedded_gaussian", "dot", "gaussian", "concat")
_PAIRWISE_ALIASES = {"scaled_dot": "embedded_gaussian"}
_SOFTMAX = ("embedded_gaussian", "gaussian")


@register_block("nonlocal", aliases=("non_local", "pixel_self_attention", "self_attention"))
class PixelSelfAttention(nn.Module):
    """Non-local block: each pixel aggregates the values of all pixels, weighted by a pairwise function.

    Args:
        channels: input (= output) channels.
        pairwise: ``'embedded_gaussian'`` (default; alias ``'scaled_dot'``), ``'dot'``, ``'gaussian'`` or ``'concat'``.
        num_heads: attention heads; the embedding width is rounded to a multiple of it (timm's make_divisible).
        rd_ratio: embedding width of theta/phi/g as a fraction of ``channels``.
        rd_channels: explicit embedding width; overrides ``rd_ratio`` (must be divisible by ``num_heads``).
        rd_divisor: round the embedding width to a multiple of this.
        kv_stride: max-pool phi and g by this factor (1 = no subsampling).
        scale: logit scale of the softmax variants; default ``head_dim ** -0.5``.
        qkv_bias: biases in the theta/phi/g convs.
        norm_layer: norm after ``proj``; its scale starts at 0. With None, ``proj`` itself starts at 0.
        identity_init: accepted for the common block interface; this block always starts as an identity.
        device: device for the parameters.
        dtype: dtype for the parameters.

    Example:
        >>> attn = PixelSelfAttention(64, num_heads=2, kv_stride=2)
        >>> attn(torch.randn(2, 64, 15, 9)).shape
        torch.Size([2, 64, 15, 9])
    """

    def __init__(
            self,
            channels: int,
            *,
            pairwise: Pairwise = "embedded_gaussian",
            num_heads: int = 1,
            rd_ratio: float = 1 / 8,
            rd_channels: int | None = None,
            rd_divisor: int = 8,
            kv_stride: int = 1,
            scale: float | None = None,
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
        pairwise = _PAIRWISE_ALIASES.get(pairwise, pairwise)
        if pairwise not in PAIRWISE_FUNCTIONS:
            raise ValueError(f"pairwise must be one of {PAIRWISE_FUNCTIONS} (or 'scaled_dot'), got {pairwise!r}")
        for arg, value in (("num_heads", num_heads), ("kv_stride", kv_stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0
                                  or math.isinf(scale)):
            raise ValueError(f"scale must be a finite number > 0 (or None for head_dim**-0.5), got {scale!r}")
        if scale is not None and pairwise not in _SOFTMAX:
            raise ValueError(f"scale only applies to the softmax pairwise functions {_SOFTMAX}, not {pairwise!r}")

        if rd_channels is None:
            # Round to the nearest multiple of lcm(rd_divisor, num_heads) (at least one) so any head count works.
            inner = reduced_channels(channels, rd_ratio, None, math.lcm(rd_divisor, num_heads))
        else:
            inner = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor)
            if inner % num_heads:
                raise ValueError(f"rd_channels={rd_channels} must be divisible by num_heads={num_heads}")
        if pairwise == "gaussian" and channels % num_heads:
            raise ValueError(f"pairwise='gaussian' splits the {channels} input channels into heads, "
                             f"so num_heads={num_heads} must divide them")

        self.pairwise = pairwise
        self.num_heads = num_heads
        self.inner_channels = inner
        qk_dim = (channels if pairwise == "gaussian" else inner) // num_heads
        self.scale = scale if scale is not None else qk_dim ** -0.5

        if pairwise == "gaussian":  # f uses x itself: no theta/phi embedding
            self.query = self.key = None
        else:
            self.query = nn.Conv2d(channels, inner, 1, bias=qkv_bias, **dd)
            self.key = nn.Conv2d(channels, inner, 1, bias=qkv_bias, **dd)
        self.value = nn.Conv2d(channels, inner, 1, bias=qkv_bias, **dd)
        if pairwise == "concat":  # w_f, one per head, over [theta_i, phi_j]
            self.concat_weight = nn.Parameter(torch.randn(num_heads, 2 * qk_dim, **dd) * (2 * qk_dim) ** -0.5)
        self.pool = nn.MaxPool2d(kv_stride, ceil_mode=True) if kv_stride > 1 else nn.Identity()
        self.proj = nn.Conv2d(inner, channels, 1, **dd)
        norm = resolve_norm(norm_layer)
        self.norm = norm(channels, **dd) if norm is not None else nn.Identity()
        self.reset_identity()

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

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Head-split query, key and value: ``(B, h, N, d)``, ``(B, h, N_kv, d)``, ``(B, h, N_kv, d_v)``."""
        if self.query is None:  # gaussian
            q, k = x, self.pool(x)
        else:
            q, k = self.query(x), self.pool(self.key(x))
        return self._split_heads(q), self._split_heads(k), self._split_heads(self.pool(self.value(x)))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``y_i = 1/C(x) sum_j f(q_i, k_j) v_j`` for the configured pairwise function, ``(B, h, N, d_v)``."""
        if self.pairwise in _SOFTMAX:
            # The fused kernels want one head dim for q, k and v; 'gaussian' has C/h for q, k and C_inner/h for v.
            # Zero columns change no dot product and no output column, so pad to the larger and slice back.
            d_qk, d_v = q.shape[-1], v.shape[-1]
            d = max(d_qk, d_v)
            if d_qk < d:
                q, k = F.pad(q, (0, d - d_qk)), F.pad(k, (0, d - d_qk))
            y = F.scaled_dot_product_attention(q, k, F.pad(v, (0, d - d_v)) if d_v < d else v, scale=self.scale)
            return y[..., :d_v] if d_v < d else y
        n_kv = k.shape[-2]
        if self.pairwise == "dot":
            # 1/N before the sum over N keys: in float16 the unnormalised k^T v overflows on real feature maps.
            return q @ ((k.transpose(-1, -2) * (1.0 / n_kv)) @ v)
        return self._attend_concat(q, k, v)

    def query_attention(self, x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Attention weights ``f(q_i, k_j) / C(x)`` of the query positions ``query`` (flat indices into ``H*W``) over
        every key, averaged over heads: ``(B, len(query), N_kv)``. For reading the block's own maps, not for training.
        """
        q, k, _ = self.qkv(x)
        q = q[:, :, query]  # (B, h, P, d)
        n_kv = k.shape[-2]
        if self.pairwise in _SOFTMAX:
            weights = (q @ k.transpose(-1, -2) * self.scale).float().softmax(-1)
        elif self.pairwise == "dot":
            weights = (q @ k.transpose(-1, -2)).float() / n_kv
        else:  # concat: ReLU(w_q . q_i + w_k . k_j) / N
            d = q.shape[-1]
            w = self.concat_weight.float()[None, :, None, :]
            a = (q.float() * w[..., :d]).sum(-1)
            b = (k.float() * w[..., d:]).sum(-1)
            weights = (a[..., :, None] + b[..., None, :]).relu() / n_kv
        return weights.mean(1)

    def _attend_concat(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        d = q.shape[-1]
        # Prefix sums run over up to N keys: accumulate in at least float32 whatever the input dtype.
        acc = torch.promote_types(q.dtype, torch.float32)
        w = self.concat_weight.to(acc)[None, :, None, :]  # (1, h, 1, 2d)
        a = (q.to(acc) * w[..., :d]).sum(-1)  # (B, h, N)    query score
        b = (k.to(acc) * w[..., d:]).sum(-1)  # (B, h, N_kv) key score
        b_sorted, order = b.sort(dim=-1)
        v_sorted = v.to(acc).gather(-2, order.unsqueeze(-1).expand(-1, -1, -1, v.shape[-1]))

        def suffix_sums(t: torch.Tensor) -> torch.Tensor:  # S[t] = sum_{j >= t} t_j, with S[N_kv] = 0
            s = t.flip(-2).cumsum(-2).flip(-2)
            return F.pad(s, (0, 0, 0, 1))

        s_v = suffix_sums(v_sorted)
        s_bv = suffix_sums(b_sorted.unsqueeze(-1) * v_sorted)
        # First sorted key with b_j > -a_i; keys at or below contribute ReLU(<= 0) = 0.
        start = torch.searchsorted(b_sorted.contiguous(), (-a).contiguous(), right=True)
        idx = start.unsqueeze(-1).expand(-1, -1, -1, v.shape[-1])
        y = a.unsqueeze(-1) * s_v.gather(-2, idx) + s_bv.gather(-2, idx)
        return (y / k.shape[-2]).to(v.dtype)  # C(x) = N, applied before the cast: the raw sum can overflow float16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        y = self.attend(*self.qkv(x))
        y = y.transpose(-1, -2).reshape(b, self.inner_channels, h, w)
        return x + self.norm(self.proj(y))

    def extra_repr(self) -> str:
        return f"pairwise={self.pairwise!r}, num_heads={self.num_heads}, scale={self.scale:.4g}"
