"""Helpers shared by the benchmarks: device checks, synchronised interleaved timing, peak memory of one call."""

from __future__ import annotations

import ctypes
import ctypes.util
import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["check_device", "synchronize", "interleaved_medians", "peak_memory_bytes", "proc_status_kib"]


def check_device(device: str) -> None:
    """Refuse a CUDA device on a machine without CUDA, with a message that says what to use instead."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use device='cpu'")


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so wall-clock timings measure the work itself (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_medians(calls: dict[str, Callable[[], object]], device: str, repeats: int, warmup: int = 0,
                        after: Callable[[str], None] | None = None) -> dict[str, float]:
    """Median seconds per call of each callable, timed in rounds (one call of each per round) after ``warmup`` rounds.

    The order within a round rotates from one round to the next: on CPU a call measurably depends on what ran just
    before it (cache and allocator state), and a fixed order would hand that bias to one side.
    ``after(side)`` runs after each call, outside the timed region (e.g. a check on the model's state).
    """
    times: dict[str, list[float]] = {side: [] for side in calls}
    sides = list(calls)
    for i in range(warmup + repeats):
        for side in sides[i % len(sides):] + sides[:i % len(sides)]:
            call = calls[side]
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            if i >= warmup:
                times[side].append(time.perf_counter() - start)
            if after is not None:
                after(side)
    return {side: statistics.median(t) for side, t in times.items()}


def proc_status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (Linux), e.g. ``VmRSS`` or the peak ``VmHWM``."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def peak_memory_bytes(call: Callable[[], object], device: str) -> int | None:
    """Peak memory one call adds over what was held before it; None where it cannot be measured."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is None or not hasattr(libc, "malloc_trim"):
        return None
    try:
        # Freed heap pages would otherwise be reused without showing up in the peak; give them back first.
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        before = proc_status_kib("VmRSS")
        call()
        return max(proc_status_kib("VmHWM") - before, 0) * 1024
    except OSError:
        return None
