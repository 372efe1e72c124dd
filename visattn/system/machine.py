"""What a measurement ran on: processor, accelerator, thread count and library versions, for reports to print."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch

__all__ = ["cpu_name", "cpu_features", "machine_info", "describe_machine"]

_FEATURES = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def cpu_name() -> str:
    """The processor's marketing name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_features() -> list[str]:
    """The matrix-relevant x86 flags this CPU reports (AMX, AVX-512-BF16, ...), best first; empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in _FEATURES if f in flags]


def machine_info() -> dict[str, object]:
    """A JSON-ready description: CPU, cores, threads, GPU, and the versions of Python, torch, timm and visattn."""
    import timm

    from ..version import __version__

    info: dict[str, object] = {
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": sys.version.split()[0],
        "torch": str(torch.__version__),
        "timm": timm.__version__,
        "visattn": __version__,
    }
    return info


def describe_machine(info: dict[str, object] | None = None) -> str:
    """One line for a report header, e.g. ``AMD EPYC (avx512_bf16), 2 threads; torch 2.14.1, timm 1.0.31``."""
    info = info or machine_info()
    features = f" ({', '.join(info['cpu_features'])})" if info.get("cpu_features") else ""  # type: ignore[arg-type]
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    return (f"{info['cpu']}{features}, {info['torch_threads']} threads{gpu}; Python {info['python']}, "
            f"torch {info['torch']}, timm {info['timm']}, visattn {info['visattn']}")
