"""Which CPU settings make a training config's step fastest: bf16, channels_last, torch.compile, malloc reuse.

    python benchmarks/cpu_train_speed.py --config configs/cifar10_cpu.yaml [--steps 5] [--compile]

Builds the config's model (random weights) and times whole SGD steps (forward, backward, update) on random images of
the config's batch and image size, in every combination of precision (float32, bf16 autocast) and memory format (NCHW,
channels_last), interleaved round by round. Ratios are step-time speed-ups over float32 NCHW measured in the same run.
With ``--compile`` each combination is also timed after ``torch.compile`` (compile time printed apart). With
``--reuse-allocations`` the whole table is measured with glibc told to keep large blocks
(:mod:`visattn.system.allocator`); run the script once with and once without to compare.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F

from visattn.bench.timing import interleaved_medians
from visattn.config import load_train_config
from visattn.system.allocator import reuse_large_allocations
from visattn.system.machine import describe_machine
from visattn.training.model import build_model


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="training config whose model, batch and image size to time")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.batch_size=64")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--compile", action="store_true", help="also time each setting under torch.compile")
    parser.add_argument("--reuse-allocations", action="store_true", help="let glibc malloc keep large blocks")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    malloc = "default malloc"
    if args.reuse_allocations:
        malloc = "malloc reuses large blocks" if reuse_large_allocations() else "default malloc (not glibc)"

    cfg = load_train_config(args.config, args.overrides)
    batch, size = cfg.data.batch_size, cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    settings = [(amp, cl, comp) for comp in ((False, True) if args.compile else (False,))
                for amp in ("none", "bf16") for cl in (False, True)]
    steps, compile_seconds = {}, {}
    for amp, channels_last, compiled in settings:
        name = f"{'bf16' if amp == 'bf16' else 'float32'}, {'channels_last' if channels_last else 'NCHW'}" + (
            ", compiled" if compiled else "")
        torch.manual_seed(0)
        model, _ = build_model(cfg.model, 10)
        x = images
        if channels_last:
            model, x = model.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        run = torch.compile(model) if compiled else model
        steps[name] = partial(_step, run, optimizer, x, labels, amp)
        if compiled:  # the first call compiles: time it apart so the table shows steady-state speed
            start = time.perf_counter()
            steps[name]()
            compile_seconds[name] = time.perf_counter() - start
    seconds = interleaved_medians(steps, "cpu", args.steps, args.warmup)

    base = seconds["float32, NCHW"]
    print(f"{cfg.model.name} train step, batch {batch} x 3x{size}x{size}, {malloc}; {describe_machine()}")
    print("| setting | img/s | speed-up vs float32 NCHW |\n|---|---|---|")
    rows = []
    for name, median in seconds.items():
        rows.append({"setting": name, "img_s": batch / median, "speedup": base / median})
        extra = f" (compile: {compile_seconds[name]:.0f} s)" if name in compile_seconds else ""
        print(f"| {name}{extra} | {batch / median:.0f} | {base / median:.2f}x |")
    return rows


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
          amp: str) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else nullcontext():
        loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    main()
