"""Let glibc's malloc keep large freed blocks for reuse, as a caching allocator does, for CPU benchmarks.

PyTorch's CPU tensors come from ``malloc``. glibc serves every block above its mmap threshold with a fresh ``mmap``
and unmaps it on ``free``. The threshold adapts upwards to the largest block freed so far, but never past 32 MiB. A
CIFAR ResNet-18 at batch 128 has layer1 activations of exactly 32 MiB, one page over that cap, so each of them is
mapped anew on every step and page-faulted in, 4 KiB at a time (about 10 ms each on a 2-core VM). Any extra
full-size tensor, such as an attention block's output, then costs far more than its arithmetic. CUDA's caching
allocator, jemalloc and tcmalloc all reuse such blocks, and the PyTorch CPU performance guides recommend them.

:func:`reuse_large_allocations` gets the same effect with two ``mallopt`` calls, so a benchmark can report the
same step under both regimes. It changes the whole process, for good, so the benchmarks call it only in a
subprocess of their own.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["reuse_large_allocations"]

# glibc's <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4


def _glibc() -> ctypes.CDLL | None:
    """The running C library, if it is glibc (``mallopt`` elsewhere lacks these parameters or is a stub)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def reuse_large_allocations(limit_bytes: int = 1 << 30) -> bool:
    """Serve blocks of up to ``limit_bytes`` from malloc's heap and keep up to that much free memory there.

    Freed blocks are then reused rather than returned to the kernel and mapped again. Returns True when glibc
    accepted both settings, and False where the C library is not glibc (macOS, musl), changing nothing there.

    Raises:
        ValueError: if ``limit_bytes`` is not a positive int that fits in a C ``int``.
    """
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or not 0 < limit_bytes < 2**31:
        raise ValueError(f"limit_bytes must be a positive int below 2**31, got {limit_bytes!r}")
    libc = _glibc()
    if libc is None:
        return False
    if not libc.mallopt(_M_MMAP_THRESHOLD, limit_bytes):
        # Older glibc caps the threshold at 32 MiB, just below the blocks that matter: stop mapping blocks at all.
        if not libc.mallopt(_M_MMAP_MAX, 0):
            return False
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, limit_bytes))
