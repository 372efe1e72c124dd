"""2-D positions for pixel attention: a learned relative-position bias and fixed sinusoidal encodings.

Relative bias (Shaw et al. 2018, arXiv 1803.02155, clipped offsets; 2-D as in BoTNet, Srinivas et al. 2021, arXiv
2101.11605, and Swin, Liu et al. 2021, arXiv 2103.14030): every head learns one logit offset per 2-D displacement
``(dy, dx)``, each clipped to ``[-max_distance, max_distance]``, so the table has ``(2M+1)^2`` entries per head
whatever the image size; a model trained at 32x32 runs at 64x64 (far pairs share the clipped entries).

Sinusoidal encodings (Vaswani et al. 2017, arXiv 1706.03762, made 2-D as in DETR, Carion et al. 2020, arXiv
2005.12872): half of each head's channels encode the row, half the column, with sines and cosines of the absolute
pixel coordinate. The coordinates are in pixels, not normalised by the image size, so a padded image gives its valid
pixels the same encodings as the cropped image.

Keys pooled by ``kv_stride`` s sit at the centres of their pooling windows, ``s * i + (s - 1) / 2`` in query-pixel
units; relative offsets to them are rounded to whole pixels.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RelativePositionBias2d", "grid_positions", "sinusoidal_encoding_2d"]


def grid_positions(height: int, width: int, stride: int = 1, *, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(height * width, 2)`` ``(y, x)`` of a grid's cells in input-pixel units, row-major.

    With ``stride`` s the grid is the one a stride-s pooling makes: cell ``i`` covers input pixels ``s*i .. s*i+s-1``
    and sits at their centre.
    """
    offset = (stride - 1) / 2
    ys = torch.arange(height, device=device, dtype=dtype) * stride + offset
    xs = torch.arange(width, device=device, dtype=dtype) * stride + offset
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)


class RelativePositionBias2d(nn.Module):
    """A learned logit bias per head and clipped 2-D offset between a query pixel and a key pixel.

    Args:
        num_heads: attention heads (one table each).
        max_distance: offsets beyond this many pixels, along each axis, share the edge entry.
        device: device for the table.
        dtype: dtype for the table.

    Example:
        >>> bias = RelativePositionBias2d(num_heads=2, max_distance=7)
        >>> q = grid_positions(8, 8); k = grid_positions(4, 4, stride=2)
        >>> bias(q, k).shape
        torch.Size([2, 64, 16])
    """

    def __init__(self, num_heads: int, max_distance: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if isinstance(max_distance, bool) or not isinstance(max_distance, int) or max_distance < 1:
            raise ValueError(f"max_distance must be a positive int, got {max_distance!r}")
        self.num_heads = num_heads
        self.max_distance = max_distance
        side = 2 * max_distance + 1
        # Zero at the start: the bias changes nothing until it is trained (an identity-initialised block stays one).
        self.table = nn.Parameter(torch.zeros(num_heads, side, side, device=device, dtype=dtype))

    def index(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
        """``(P, K)`` flat table indices of the clipped, rounded offsets ``query - key``."""
        m = self.max_distance
        # Axis by axis and in place: one (P, K) float buffer per axis, where (P, K, 2) int64 offsets took 4x more.
        row, col = ((query_pos[:, None, axis] - key_pos[None, :, axis]).round_().clamp_(-m, m).add_(m)
                    for axis in (0, 1))
        return row.mul_(2 * m + 1).add_(col).long()

    def forward(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
        """The bias ``(heads, P, K)`` between ``P`` query positions and ``K`` key positions (``(N, 2)`` each)."""
        flat = self.table.flatten(1)  # (h, side * side)
        return flat[:, self.index(query_pos, key_pos)]

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, max_distance={self.max_distance}"


def sinusoidal_encoding_2d(positions: torch.Tensor, dim: int, *, temperature: float = 10_000.0) -> torch.Tensor:
    """``(N, dim)`` encodings of ``(N, 2)`` ``(y, x)`` pixel positions: the first half of the channels encodes y, the
    second x, each as ``[sin(p w_0), cos(p w_0), sin(p w_1), ...]`` with ``w_k = temperature^(-2k / half)``; channels
    left over by an odd split are zero.

    Raises:
        ValueError: ``dim < 1``.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    out = positions.new_zeros(positions.shape[0], dim)
    for axis, (start, size) in enumerate(((0, dim // 2), (dim // 2, dim - dim // 2))):
        pairs = size // 2
        if pairs == 0:
            continue
        freqs = temperature ** (-torch.arange(pairs, device=positions.device, dtype=positions.dtype) * 2 / size)
        angles = positions[:, axis, None] * freqs  # (N, pairs)
        out[:, start:start + 2 * pairs] = torch.stack((angles.sin(), angles.cos()), -1).flatten(1)
    return out

