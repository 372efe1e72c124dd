"""Helpers shared by the benchmarks: device checks and synchronised timing."""

from __future__ import annotations

import torch

__all__ = ["check_device", "synchronize"]


def check_device(device: str) -> None:
    """Refuse a CUDA device on a machine without CUDA, with a message that says what to use instead."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use device='cpu'")


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so wall-clock timings measure the work itself (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
