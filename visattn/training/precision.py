"""Which autocast precision a run uses: ``loop.amp='auto'`` follows the device, and on a CPU, a measurement.

bfloat16 autocast pays on GPUs and on CPUs with bf16 matrix units (AMX, AVX-512-BF16), where oneDNN runs convolutions
several times faster than in float32; on other CPUs, and for some models even on those, it emulates bf16 and is
slower. Instead of guessing from CPU flags, ``'auto'`` on a CPU times one training step of the actual model both ways
(on a copy, with a private random stream, so the run itself is unchanged) and keeps the faster one.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AmpChoice", "resolve_amp", "time_train_step", "channels_last_hazard"]

# At most this many images per timed step: the run's own batch size, since both the kernels oneDNN picks and the
# allocator's behaviour (tensors above malloc's mmap threshold) change with it.
_PROBE_BATCH = 256
_MIN_GAIN = 1.1  # bf16 must be at least this much faster to be chosen: below it, float32's exactness wins


@dataclass(frozen=True)
class AmpChoice:
    """The precision a run uses and why."""

    amp: str  # 'none', 'bf16' or 'fp16'
    reason: str


def time_train_step(model: nn.Module, input_size: tuple[int, int, int], *, amp: str, channels_last: bool,
                    batch_size: int = _PROBE_BATCH, repeats: int = 2, side_features: int | None = None) -> float:
    """Seconds of one forward + backward pass of a copy of ``model`` on random data (the fastest of ``repeats``).

    The copy sits on ``model``'s device; ``model``, its gradients and the global random state are left as they were.
    A fusion model (``side_features``) gets a random side vector as its second input.
    """
    device = next(model.parameters()).device
    probe = copy.deepcopy(model).train()
    classes = getattr(probe, "num_classes", None) or 2
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        images = torch.randn(batch_size, *input_size, device=device)
        labels = torch.randint(0, classes, (batch_size,), device=device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        inputs = (images,) if side_features is None else (images, torch.randn(batch_size, side_features,
                                                                                device=device))
        best = float("inf")
        for i in range(repeats + 1):  # the first pass only warms up (oneDNN builds its kernels then)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
                loss = F.cross_entropy(probe(*inputs), labels)
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                best = min(best, time.perf_counter() - start)
            probe.zero_grad(set_to_none=True)
    return best


def resolve_amp(amp: str, device: torch.device, model: nn.Module, input_size: tuple[int, int, int], *,
                channels_last: bool = False, batch_size: int = _PROBE_BATCH, side_features: int | None = None
                ) -> AmpChoice:
    """The precision for ``loop.amp``: ``'auto'`` is bf16 on CUDA (fp16 where bf16 is missing) and, on a CPU,
    whichever of bf16 and float32 trains ``model`` faster. An explicit ``'bf16'`` on a CPU where it measures slower
    is kept, with a warning that says so.

    Raises:
        ValueError: ``'fp16'`` anywhere but CUDA.
    """
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("loop.amp='fp16' needs CUDA; use 'auto', 'bf16' or 'none' on CPU")
    if device.type == "cuda":
        if amp == "auto":
            bf16 = torch.cuda.is_bf16_supported()
            return AmpChoice("bf16" if bf16 else "fp16", "auto on CUDA" + ("" if bf16 else " (no bf16 on this GPU)"))
        return AmpChoice(amp, "from the config")
    if amp == "none" or (amp == "auto" and device.type != "cpu"):
        return AmpChoice("none", "from the config" if amp == "none" else f"auto on {device.type}")
    batch = min(batch_size, _PROBE_BATCH)
    fp32 = time_train_step(model, input_size, amp="none", channels_last=channels_last, batch_size=batch,
                           side_features=side_features)
    bf16 = time_train_step(model, input_size, amp="bf16", channels_last=channels_last, batch_size=batch,
                           side_features=side_features)
    measured = f"a training step took {1e3 * bf16:.0f} ms in bf16 and {1e3 * fp32:.0f} ms in float32 on this CPU"
    if amp == "auto":
        return AmpChoice("bf16" if bf16 * _MIN_GAIN < fp32 else "none", f"auto: {measured}")
    if bf16 > fp32:
        warnings.warn(f"loop.amp='bf16' is slower than float32 here ({measured}, {fp32 / bf16:.2f}x the speed); "
                      f"set loop.amp=auto to use the faster one", UserWarning, stacklevel=2)
    return AmpChoice("bf16", f"from the config; {measured}")


# oneDNN's 1x1 stride-2 convolution computes its weight gradient through a "reduce to unit stride" workspace that it
# overruns for channels_last inputs with fewer channels than its channel block (16 float32 channels with AVX-512):
# heap corruption, or wrong gradients on some machines (https://github.com/uxlfoundation/oneDNN/issues/6035; seen
# here with torch 2.14.1 / oneDNN 3.12 as a crash training an 8-channel ResNet stage at 64x64).
_ONEDNN_1X1_MIN_CHANNELS = 16


def channels_last_hazard(model: nn.Module) -> str | None:
    """Why channels_last training on a CPU is unsafe for ``model`` (None when it is safe): a 1x1 strided convolution
    with fewer than 16 input channels, which oneDNN's channels_last weight gradient mishandles."""
    for name, module in model.named_modules():
        if (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and max(module.stride) > 1
                and module.in_channels < _ONEDNN_1X1_MIN_CHANNELS):
            return (f"{name} is a 1x1 stride-{max(module.stride)} convolution over {module.in_channels} channels, "
                    f"whose channels_last weight gradient oneDNN computes wrongly on CPUs (oneDNN issue 6035); "
                    f"widen it to {_ONEDNN_1X1_MIN_CHANNELS}+ channels to train channels_last")
    return None
