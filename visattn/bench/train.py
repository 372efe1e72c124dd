"""Training throughput (images/s) of a CIFAR-stem ResNet-18 without and with each attention block.

``visattn bench train [--device cuda] [--batch-size 128] [--amp bf16] [--channels-last] [--compile]
[--reuse-allocations]`` times whole SGD steps (forward, backward, update) on random 32x32 images after warm-up,
interleaving the models round by round so that machine noise hits them alike; the ratio column is each model's step
time over the plain ResNet-18's. ``--reuse-allocations`` first tells glibc's malloc to keep large blocks for reuse
(:mod:`visattn.system.allocator`), for the whole process.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import list_blocks
from ..models import create_attention_resnet, use_small_input_stem
from ..system.allocator import reuse_large_allocations
from .timing import check_device, interleaved_medians

__all__ = ["run_train_benchmark"]


def _models(blocks: list[str]) -> dict[str, Callable[[], nn.Module]]:
    import timm

    out: dict[str, Callable[[], nn.Module]] = {
        "resnet18": lambda: use_small_input_stem(timm.create_model("resnet18", num_classes=10))}
    for block in blocks:
        out[f"resnet18_{block}"] = lambda b=block: create_attention_resnet("resnet18", b, num_classes=10,
                                                                           small_input=True)
    return out


def run_train_benchmark(
        device: str = "cpu",
        batch_size: int = 128,
        steps: int = 5,
        warmup: int = 2,
        amp: str = "none",
        channels_last: bool = False,
        compile: bool = False,
        blocks: list[str] | None = None,
        reuse_allocations: bool = False,
        printer: Callable[[str], None] = print,
) -> list[dict[str, object]]:
    """Print a Markdown table of images/s per model; returns its rows.

    ``reuse_allocations`` (CPU) calls :func:`~visattn.system.allocator.reuse_large_allocations` first: a change to
    this whole process that stays after the call.
    """
    check_device(device)
    for arg, value, minimum in (("steps", steps, 1), ("warmup", warmup, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{arg} must be an int >= {minimum}, got {value!r}")
    if amp not in ("none", "bf16", "fp16"):
        raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {amp!r}")
    malloc = "default"
    if reuse_allocations and not device.startswith("cuda"):
        malloc = "reuses large blocks" if reuse_large_allocations() else "default (not glibc: nothing to tune)"
    factories = _models(blocks if blocks is not None else list_blocks())
    models, optimizers = {}, {}
    for name, make in factories.items():
        model = make().to(device).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizers[name] = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        models[name] = torch.compile(model) if compile else model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, 32, 32, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), generator=g).to(device)
    autocast = (torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
                if amp != "none" else nullcontext())

    def step(name: str) -> None:
        with autocast:
            loss = F.cross_entropy(models[name](x), y)
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    seconds = interleaved_medians({name: partial(step, name) for name in models}, device, steps, warmup)

    base = seconds["resnet18"]
    printer(f"train step, batch {batch_size} x 3x32x32, {device}, amp={amp}, channels_last={channels_last}, "
            f"compile={compile}, malloc {malloc}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    printer("| model | img/s | step time vs resnet18 |\n|---|---|---|")
    rows = []
    for name, median in seconds.items():
        row = {"model": name, "img_s": batch_size / median, "ratio": median / base}
        rows.append(row)
        printer(f"| {name} | {row['img_s']:.0f} | {row['ratio']:.2f}x |")
    return rows
