"""Attention over pixels from head-split queries, keys and values: score functions, positions, masks, dropout.

Shared by pixel self-attention and cross-attention. Every softmax score normalises over the keys; the non-local
paper's two softmax-free forms divide by the number of keys instead. Names follow the attention literature:

======================  ============================================  ==================================  ===========
``score``               logit ``s(q_i, k_j)``                         computed as                         memory
======================  ============================================  ==================================  ===========
``embedded_gaussian``   ``q_i . k_j * scale`` (scale ``d**-0.5``);     fused SDPA kernel                   O(N)
                        alias ``scaled_dot``
``dot``                 ``q_i . k_j``                                  fused SDPA kernel                   O(N)
``gaussian``            ``x_i . x_j * scale`` (raw features)           fused SDPA kernel                   O(N)
``bilinear``            ``q_i^T W k_j``, ``W`` (d x d per head)        ``W`` folded into the keys, SDPA    O(N)
``additive``            ``w^T tanh(q_i + k_j)``                        query chunks, recomputed backward   O(chunk N)
``concat``              ``w^T tanh(W_c [q_i; k_j] + b)``               as additive, ``W_c`` split in two   O(chunk N)
``nonlocal_dot``        ``q_i . k_j``, divided by N (no softmax)      ``q (k^T v) / N``                   O(N)
``nonlocal_concat``     ``ReLU(w^T [q_i; k_j])``, divided by N        sort + prefix sums                  O(N)
======================  ============================================  ==================================  ===========

``q`` and ``k`` are the block's query and key projections (1x1 convs), so Bahdanau's ``W_q q + W_k k`` is the
``additive`` row with those projections as ``W_q`` and ``W_k``. Luong's ``concat`` is the same function written over
the concatenation; it keeps its own ``W_c`` on top of the projections.

Positions: ``'relative'`` adds a learned bias per head and clipped 2-D offset to the logits (softmax scores only);
``'sinusoidal'`` adds fixed 2-D encodings to queries and keys. A boolean key mask keeps padded pixels out of every
sum and softmax. A relative bias (or an additive score) makes the logits pair-specific, so those run in query
chunks whose intermediates are recomputed in backward: no N x N matrix is ever kept.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .positions import RelativePositionBias2d, sinusoidal_encoding_2d

__all__ = ["AttentionCore", "SCORES", "POSITIONS"]

Score = Literal["embedded_gaussian", "scaled_dot", "dot", "gaussian", "bilinear", "additive", "concat",
                "nonlocal_dot", "nonlocal_concat"]
SCORES: tuple[str, ...] = ("embedded_gaussian", "dot", "gaussian", "bilinear", "additive", "concat",
                           "nonlocal_dot", "nonlocal_concat")
SCORE_ALIASES = {"scaled_dot": "embedded_gaussian"}
POSITIONS: tuple[str | None, ...] = (None, "relative", "sinusoidal")
DOT_FAMILY = ("embedded_gaussian", "dot", "gaussian", "bilinear")  # logits q . k' * scale: the fused kernel takes them
TANH = ("additive", "concat")
MEAN = ("nonlocal_dot", "nonlocal_concat")  # no softmax: the sum over keys is divided by their number
_CHUNK_ELEMENTS = 1 << 22  # per query chunk: B x heads x rows x keys (x hidden for tanh scores) elements


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def canonical_score(score: str) -> str:
    """``score`` with aliases resolved.

    Raises:
        ValueError: an unknown score, listing the valid ones.
    """
    name = SCORE_ALIASES.get(score, score)
    if name not in SCORES:
        raise ValueError(f"score must be one of {SCORES} (or 'scaled_dot'), got {score!r}")
    return name


class AttentionCore(nn.Module):
    """``y_i = sum_j a(q_i, k_j) v_j`` over head-split ``(B, h, N, d)`` tensors, for any score of the table above.

    Args:
        score: a score function name (see the module table).
        num_heads: heads of the inputs.
        head_dim: query/key channels per head.
        scale: logit scale of the dot-product scores; default ``head_dim ** -0.5`` for ``embedded_gaussian`` and
            ``gaussian``, 1 for ``dot`` and ``bilinear`` (whose ``W`` starts at ``I / sqrt(d)``).
        position: None, ``'relative'`` or ``'sinusoidal'``.
        max_distance: offsets clipped to this many pixels per axis (``'relative'``).
        attn_drop: dropout on the attention weights, in training only.
        device: device for the parameters.
        dtype: dtype for the parameters.
    """

    def __init__(self, score: str, num_heads: int, head_dim: int, *, scale: float | None = None,
                 position: str | None = None, max_distance: int = 7, attn_drop: float = 0.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        score = canonical_score(score)
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        if position == "relative" and score in MEAN:
            raise ValueError(f"position='relative' adds to softmax logits; score={score!r} has no softmax (use "
                             f"'sinusoidal', or a softmax score such as 'embedded_gaussian')")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0
                                  or math.isinf(scale)):
            raise ValueError(f"scale must be a finite number > 0 (or None for the default), got {scale!r}")
        if scale is not None and score not in DOT_FAMILY:
            raise ValueError(f"scale only applies to the dot-product scores {DOT_FAMILY}, not {score!r}")
        if isinstance(attn_drop, bool) or not isinstance(attn_drop, int | float) or not 0 <= attn_drop < 1:
            raise ValueError(f"attn_drop must be a probability in [0, 1), got {attn_drop!r}")
        self.score = score
        self.num_heads = num_heads
        self.position = position
        self.attn_drop = float(attn_drop)
        default_scale = head_dim ** -0.5 if score in ("embedded_gaussian", "gaussian") else 1.0
        self.scale = float(scale) if scale is not None else default_scale
        d = head_dim
        if score == "bilinear":
            eye = torch.eye(d, **dd) * d ** -0.5  # starts as scaled dot-product attention
            self.bilinear_weight = nn.Parameter(eye.expand(num_heads, d, d).clone())
        if score in TANH:
            self.additive_weight = nn.Parameter(torch.randn(num_heads, d, **dd) * d ** -0.5)
        if score == "concat":
            self.concat_proj = nn.Parameter(torch.randn(num_heads, d, 2 * d, **dd) * (2 * d) ** -0.5)
            self.concat_bias = nn.Parameter(torch.zeros(num_heads, d, **dd))
        if score == "nonlocal_concat":  # w_f, one per head, over [theta_i, phi_j]
            self.concat_weight = nn.Parameter(torch.randn(num_heads, 2 * d, **dd) * (2 * d) ** -0.5)
        self.relative = RelativePositionBias2d(num_heads, max_distance, **dd) if position == "relative" else None

    # --- the pieces ---------------------------------------------------------------------------------------------

    def encode(self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor | None, k_pos: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys with the sinusoidal encodings of their positions added (unchanged otherwise)."""
        if self.position != "sinusoidal":
            return q, k
        acc = _at_least_float32(q.dtype)  # angles of far pixels need float32 (float64 for float64 inputs)
        q_enc = sinusoidal_encoding_2d(q_pos.to(acc), q.shape[-1]).to(q.dtype)
        k_enc = sinusoidal_encoding_2d(k_pos.to(acc), k.shape[-1]).to(k.dtype)
        return q + q_enc, k + k_enc

    def _key(self, k: torch.Tensor) -> torch.Tensor:
        """Keys as the dot product sees them: ``W k`` for bilinear (so that ``q . (W k) = q^T W k``)."""
        if self.score == "bilinear":
            return torch.einsum("hed,bhnd->bhne", self.bilinear_weight.to(k.dtype), k)
        return k

    def _tanh_terms(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The query and key terms inside the tanh: ``q``, ``k`` (additive) or ``W_1 q + b``, ``W_2 k`` (concat)."""
        if self.score == "additive":
            return q, k
        d = q.shape[-1]
        w = self.concat_proj.to(q.dtype)
        q_term = torch.einsum("had,bhnd->bhna", w[..., :d], q) + self.concat_bias.to(q.dtype)[None, :, None]
        return q_term, torch.einsum("had,bhnd->bhna", w[..., d:], k)

    def logits(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``(B, h, P, N_kv)`` softmax logits of the score (no position bias, no mask)."""
        if self.score in DOT_FAMILY:
            return q @ self._key(k).transpose(-1, -2) * self.scale
        q_term, k_term = self._tanh_terms(q, k)
        w = self.additive_weight.to(q_term.dtype)[None, :, None, :, None]
        if torch.is_grad_enabled():
            t = torch.tanh(q_term[..., :, None, :] + k_term[..., None, :, :])  # (B, h, P, N_kv, d)
            return (t @ w).squeeze(-1)
        # One (B, h, P, N_kv, d) buffer instead of three: fewer large blocks for malloc to keep in its heap.
        return torch.add(q_term[..., :, None, :], k_term[..., None, :, :]).tanh_().matmul(w).squeeze(-1)

    # --- attention ----------------------------------------------------------------------------------------------

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, q_pos: torch.Tensor | None = None,
                k_pos: torch.Tensor | None = None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, h, N, d_v)`` attention output.

        Args:
            q, k, v: ``(B, h, N, d)``, ``(B, h, N_kv, d)``, ``(B, h, N_kv, d_v)``.
            q_pos, k_pos: ``(N, 2)`` and ``(N_kv, 2)`` pixel positions (needed with a position).
            key_mask: ``(B, N_kv)`` bool, True for keys that may be attended to.
        """
        if self.position is not None and (q_pos is None or k_pos is None):
            raise ValueError(f"position={self.position!r} needs q_pos and k_pos")
        q, k = self.encode(q, k, q_pos, k_pos)
        if self.score in MEAN:
            return self._mean(q, k, v, key_mask)
        if self.score in DOT_FAMILY and self.relative is None:
            return self._fused(q, self._key(k), v, key_mask)
        return self._chunked(q, k, v, q_pos, k_pos, key_mask)

    def weights(self, q: torch.Tensor, k: torch.Tensor, *, q_pos: torch.Tensor | None = None,
                k_pos: torch.Tensor | None = None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, h, P, N_kv)`` float attention weights of the queries ``q`` (``q_pos`` theirs): what :meth:`forward`
        sums the values with (dropout aside). For maps, not for training: the matrix is materialised."""
        q, k = self.encode(q, k, q_pos, k_pos)
        acc = _at_least_float32(q.dtype)
        q, k = q.to(acc), k.to(acc)
        n = k.shape[-2] if key_mask is None else key_mask.sum(-1).to(acc)[:, None, None, None]
        if self.score == "nonlocal_dot":
            w = q @ k.transpose(-1, -2) / n
        elif self.score == "nonlocal_concat":
            d = q.shape[-1]
            wf = self.concat_weight.to(acc)[None, :, None, :]
            a, b = (q * wf[..., :d]).sum(-1), (k * wf[..., d:]).sum(-1)
            w = (a[..., :, None] + b[..., None, :]).relu() / n
        else:
            logits = self.logits(q, k)
            if self.relative is not None:
                logits = logits + self.relative(q_pos, k_pos).to(acc)[None]
            if key_mask is not None:
                logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
            return logits.softmax(-1)
        return w.masked_fill(~key_mask[:, None, None, :], 0.0) if key_mask is not None else w

    def _dropout(self) -> float:
        return self.attn_drop if self.training else 0.0

    def _fused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
               ) -> torch.Tensor:
        # The fused kernels want one head dim for q, k and v; 'gaussian' has C/h for q, k and C_inner/h for v.
        # Zero columns change no dot product and no output column, so pad to the larger and slice back.
        d_qk, d_v = q.shape[-1], v.shape[-1]
        d = max(d_qk, d_v)
        if d_qk < d:
            q, k = F.pad(q, (0, d - d_qk)), F.pad(k, (0, d - d_qk))
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        y = F.scaled_dot_product_attention(q, k, F.pad(v, (0, d - d_v)) if d_v < d else v, attn_mask=mask,
                                           dropout_p=self._dropout(), scale=self.scale)
        return y[..., :d_v] if d_v < d else y

    def _chunked(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor | None,
                 k_pos: torch.Tensor | None, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, h, n, d = q.shape
        # Elements per (query, key) pair that a chunk holds at once: the tanh scores' hidden vector; a relative
        # bias's int64 table index and gathered bias beside the logits.
        width = d if self.score in TANH else 4 if self.relative is not None else 1
        rows = max(1, _CHUNK_ELEMENTS // max(1, b * h * k.shape[-2] * width))
        params = [p for p in self.parameters() if p.requires_grad]
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *params))
        if needs_grad and not self._dropout():
            # Keep only q, k, v, the output and each row's log-sum-exp; backward recomputes every chunk's logits.
            return _RecomputedSoftmaxAttention.apply(self, rows, q_pos, k_pos, key_mask, q, k, v, *params)
        outs = []
        for start in range(0, n, rows):
            part = slice(start, start + rows)
            args = (q[:, :, part], k, v, q_pos[part] if q_pos is not None else None, k_pos, key_mask)
            # With attention dropout, backward recomputes each chunk under the checkpoint's saved RNG state.
            outs.append(checkpoint(self._rows, *args, use_reentrant=False) if needs_grad else self._rows(*args))
        return torch.cat(outs, dim=2)

    def chunk_logits(self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor | None, k_pos: torch.Tensor | None,
                     key_mask: torch.Tensor | None) -> torch.Tensor:
        """Softmax logits of the queries ``q`` (``q_pos`` theirs): score, position bias, mask; float32 or wider."""
        logits = self.logits(q, k)
        logits = logits.to(_at_least_float32(logits.dtype))  # softmax in float32 whatever the autocast dtype
        if self.relative is not None:
            logits = logits + self.relative(q_pos, k_pos).to(logits.dtype)[None]
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        return logits

    def _rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor | None,
              k_pos: torch.Tensor | None, key_mask: torch.Tensor | None) -> torch.Tensor:
        w = F.dropout(self.chunk_logits(q, k, q_pos, k_pos, key_mask).softmax(-1), self._dropout(), self.training)
        return w.to(v.dtype) @ v

    def _mean(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
              ) -> torch.Tensor:
        if key_mask is not None:
            keep = key_mask[:, None, :, None].to(v.dtype)
            k, v = k * keep, v * keep  # a padded key adds nothing to any sum
            n = key_mask.sum(-1).to(v.dtype)[:, None, None, None]
        else:
            n = k.shape[-2]
        if self.score == "nonlocal_dot":
            # 1/N before the sum over N keys: in float16 the unnormalised k^T v overflows on real feature maps.
            return q @ ((k.transpose(-1, -2) / n) @ v)
        return self._concat_prefix_sums(q, k, v, key_mask, n)

    def _concat_prefix_sums(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
                            n: torch.Tensor | int) -> torch.Tensor:
        # w . [q_i, k_j] = a_i + b_j splits into a query and a key score, so sum_j ReLU(a_i + b_j) v_j =
        # a_i * S_v + S_bv with S summed over the keys with b_j > -a_i: a suffix of the keys sorted by b.
        d = q.shape[-1]
        acc = _at_least_float32(q.dtype)  # prefix sums over up to N keys
        w = self.concat_weight.to(acc)[None, :, None, :]  # (1, h, 1, 2d)
        a = (q.to(acc) * w[..., :d]).sum(-1)  # (B, h, N)    query score
        b = (k.to(acc) * w[..., d:]).sum(-1)  # (B, h, N_kv) key score
        if key_mask is not None:  # below every -a_i: a padded key never enters a suffix (its value is 0 anyway)
            floor = -(a.abs().amax() + b.abs().amax() + 1).detach()
            b = torch.where(key_mask[:, None, :], b, floor)
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
        return (y / n).to(v.dtype)  # C(x) = N, applied before the cast: the raw sum can overflow float16

    def extra_repr(self) -> str:
        extra = f", position={self.position!r}" if self.position else ""
        drop = f", attn_drop={self.attn_drop}" if self.attn_drop else ""
        return f"score={self.score!r}, num_heads={self.num_heads}, scale={self.scale:.4g}{extra}{drop}"


class _RecomputedSoftmaxAttention(torch.autograd.Function):
    """``softmax(logits) @ v`` in query chunks, the logits from ``AttentionCore.chunk_logits``, as flash attention
    computes it: forward keeps q, k, v, the output and each query's log-sum-exp; backward recomputes one chunk's
    logits at a time and back-propagates through them. Peak memory is O(N) plus one chunk, whatever the score.
    Differentiable once (no gradients of gradients)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, core: AttentionCore, rows: int,
                q_pos: torch.Tensor | None, k_pos: torch.Tensor | None, key_mask: torch.Tensor | None,
                q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        # Outputs allocated once, before the chunks' large temporaries: small blocks left between freed large ones
        # would stop malloc from reusing them (the process would grow by a chunk's logits per chunk).
        n = q.shape[-2]
        out = v.new_empty(*v.shape[:2], n, v.shape[-1])
        lse = torch.empty(*q.shape[:2], n, 1, dtype=_at_least_float32(q.dtype), device=q.device)
        for start in range(0, n, rows):
            part = slice(start, start + rows)
            logits = core.chunk_logits(q[:, :, part], k, q_pos[part] if q_pos is not None else None, k_pos, key_mask)
            torch.logsumexp(logits, -1, keepdim=True, out=lse[:, :, part])
            torch.matmul(logits.sub_(lse[:, :, part]).exp_().to(v.dtype), v, out=out[:, :, part])
        ctx.save_for_backward(q, k, v, out, lse, q_pos, k_pos, key_mask)
        ctx.core, ctx.rows = core, rows
        # Backward recomputes the logits under the same autocast as forward, so they match the saved log-sum-exp.
        device = q.device.type
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, lse, q_pos, k_pos, key_mask = ctx.saved_tensors
        core, params = ctx.core, [p for p in ctx.core.parameters() if p.requires_grad]
        acc = lse.dtype
        # d logits = P * (dP - delta), with delta_i = sum_j P_ij dP_ij = grad_out_i . out_i (flash attention's trick)
        delta = (grad_out.to(acc) * out.to(acc)).sum(-1, keepdim=True)
        grad_q, grad_k = torch.zeros_like(q), torch.zeros_like(k, dtype=acc)
        grad_v = torch.zeros_like(v, dtype=acc)
        grad_params = [torch.zeros_like(p, dtype=acc) for p in params]
        for start in range(0, q.shape[-2], ctx.rows):
            part = slice(start, start + ctx.rows)
            with torch.enable_grad():
                q_part, k_all = q[:, :, part].detach().requires_grad_(), k.detach().requires_grad_()
                with torch.autocast(ctx.autocast[0], dtype=ctx.autocast[1], enabled=ctx.autocast[2]):
                    logits = core.chunk_logits(q_part, k_all, q_pos[part] if q_pos is not None else None, k_pos,
                                               key_mask)
                weights = (logits.detach() - lse[:, :, part]).exp()
                g = grad_out[:, :, part].to(acc)
                grad_v += weights.transpose(-1, -2) @ g
                grad_logits = weights * (g @ v.to(acc).transpose(-1, -2) - delta[:, :, part])
                grads = torch.autograd.grad(logits, [q_part, k_all, *params], grad_logits, allow_unused=True)
            grad_q[:, :, part] = grads[0]
            grad_k += grads[1]
            for total, grad in zip(grad_params, grads[2:], strict=True):
                if grad is not None:
                    total += grad
        return (None, None, None, None, None, grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype),
                *(g.to(p.dtype) for g, p in zip(grad_params, params, strict=True)))
