"""Block benchmark: forward+backward time and peak memory of each visattn block against its timm twin.

Every ratio is ours / reference, both measured in the same run, interleaved round by round so that machine noise
hits both sides alike. Run with ``visattn bench blocks [--device cuda] [--markdown]``.

Peak memory is the increase over the memory held before the step: on CUDA from the caching allocator's counters,
on CPU from the peak resident set size (reset through /proc/self/clear_refs) of a fresh subprocess per
measurement, since the CPU allocator keeps no counters (Linux only).

On CPU the ResNet train step is timed twice, each time in a fresh subprocess: once with glibc's malloc as it comes,
which maps every block above 32 MiB afresh on each step, and once with malloc told to reuse large blocks, as CUDA's
caching allocator, jemalloc and tcmalloc do (see :mod:`visattn.system.allocator`). A CBAM block's extra full-size
tensors cost about twice as much in the first regime.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_module
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..system.allocator import reuse_large_allocations
from .timing import check_device, interleaved_medians, proc_status_kib, synchronize

__all__ = ["Case", "cases", "run_block_benchmark"]


@dataclass(frozen=True)
class Case:
    """One comparison: our module against a reference, on one input shape."""

    name: str
    reference_name: str
    shape: tuple[int, ...]
    time_target: float | None  # max allowed time ratio, None = report only
    memory_target: float | None  # max allowed peak-memory ratio
    train_step: bool = False  # whole-model SGD step on (B, 3, H, W) with 10 classes, instead of a block fwd+bwd
    reuse_allocations: bool = False  # CPU: time with malloc reusing large blocks (skipped on CUDA, which always does)
    block_kwargs: tuple[tuple[str, Any], ...] = ()  # options of our block; the row is named "name key=value"

    @property
    def label(self) -> str:
        """The row's name: the block, then its options."""
        return " ".join([self.name, *(f"{k}={v}" for k, v in self.block_kwargs)])


def _timm_block(name: str, channels: int) -> nn.Module:
    from timm.layers.cbam import CbamModule, ChannelAttn, SpatialAttn
    from timm.layers.non_local_attn import NonLocalAttn
    from timm.layers.squeeze_excite import SEModule

    return {
        "se": lambda: SEModule(channels),
        "cam": lambda: ChannelAttn(channels),
        "spatial": lambda: SpatialAttn(7),
        "cbam": lambda: CbamModule(channels),
        "nonlocal": lambda: NonLocalAttn(channels),
    }[name]()


def _cifar_resnet18(attn: str | None) -> nn.Module:
    import timm

    from ..models import create_attention_resnet, use_small_input_stem

    if attn == "visattn_cbam":
        return create_attention_resnet("resnet18", "cbam", num_classes=10, small_input=True)
    block_args = dict(attn_layer="cbam") if attn == "timm_cbam" else None
    return use_small_input_stem(timm.create_model("resnet18", num_classes=10, block_args=block_args))


def build(case: Case, side: str) -> nn.Module:
    """The module for one side (``'ours'`` or ``'reference'``) of a case."""
    from ..blocks import create_block

    if case.train_step:
        return _cifar_resnet18({"ours": "visattn_cbam", "reference": None, "timm": "timm_cbam"}[side])
    if side == "ours":
        return create_block(case.name, case.shape[1], **dict(case.block_kwargs))
    return _timm_block(case.name, case.shape[1])


def cases(quick: bool = False) -> list[Case]:
    """The benchmark table's rows; ``quick`` shrinks every shape for a smoke test."""
    b, c, hw = (2, 32, 8) if quick else (32, 256, 28)
    nl_b, nl_hw = (1, 16) if quick else (2, 64)
    nl_shape = (nl_b, 32 if quick else 256, nl_hw, nl_hw)
    rn_b = 4 if quick else 128
    # The other scores and positions against the same timm block: time reported, memory bounded. The additive
    # scores hold a hidden vector per pair and run in recomputed chunks: at most timm's N x N footprint.
    from ..blocks import SCORES

    variants = [
        *(Case("nonlocal", "timm NonLocalAttn", nl_shape, None, 1.0 if score in ("additive", "concat") else 0.25,
               block_kwargs=(("score", score),))
          for score in SCORES if score != "embedded_gaussian"),
        Case("nonlocal", "timm NonLocalAttn", nl_shape, None, 0.5, block_kwargs=(("position", "relative"),)),
        Case("nonlocal", "timm NonLocalAttn", nl_shape, None, 0.25, block_kwargs=(("position", "sinusoidal"),)),
    ]
    return [
        Case("se", "timm SEModule", (b, c, hw, hw), 1.0, None),
        Case("cam", "timm ChannelAttn", (b, c, hw, hw), 1.0, None),
        Case("spatial", "timm SpatialAttn", (b, c, hw, hw), 1.0, None),
        Case("cbam", "timm CbamModule", (b, c, hw, hw), 1.0, None),
        Case("nonlocal", "timm NonLocalAttn", nl_shape, 0.5, 0.25),
        *variants,
        Case("resnet18+cbam", "plain resnet18", (rn_b, 3, 32, 32), 1.10, None, train_step=True),
        Case("resnet18+cbam", "plain resnet18", (rn_b, 3, 32, 32), 1.10, None, train_step=True,
             reuse_allocations=True),
    ]


def _step(module: nn.Module, case: Case, x: torch.Tensor, y: torch.Tensor | None) -> None:
    if case.train_step:
        F.cross_entropy(module(x), y).backward()
        with torch.no_grad():  # plain SGD update, as in a real step
            for p in module.parameters():
                if p.grad is not None:
                    p.sub_(0.01 * p.grad)
                    p.grad = None
    else:
        module(x).backward(torch.ones_like(x))
        x.grad = None
        for p in module.parameters():
            p.grad = None


def _inputs(case: Case, device: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(case.shape, generator=g).to(device)
    if case.train_step:
        return x, torch.randint(0, 10, (case.shape[0],), generator=g).to(device)
    return x.requires_grad_(), None


def time_sides(case: Case, sides: list[str], device: str, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per forward+backward (or train step) for each side, measured in interleaved rounds."""
    modules = {s: build(case, s).to(device).train() for s in sides}
    x, y = _inputs(case, device)
    return interleaved_medians({s: partial(_step, m, case, x, y) for s, m in modules.items()}, device, repeats, warmup)


def _cpu_timing_worker(case: Case, sides: list[str], repeats: int, warmup: int, threads: int,
                       queue: mp.Queue) -> None:
    torch.set_num_threads(threads)
    if case.reuse_allocations and not reuse_large_allocations():
        queue.put(None)  # not glibc: nothing to compare against
        return
    queue.put(time_sides(case, sides, "cpu", repeats, warmup))


def time_sides_in_subprocess(case: Case, sides: list[str], repeats: int, warmup: int) -> dict[str, float] | None:
    """:func:`time_sides` on CPU in a fresh process with this one's thread count, so that one row's allocator state
    (or settings) cannot leak into another's; None when ``case.reuse_allocations`` is asked of a C library other
    than glibc."""
    return _in_subprocess(_cpu_timing_worker, case, sides, repeats, warmup, torch.get_num_threads())


def _in_subprocess(worker: Callable[..., None], *args: object, timeout_s: float = 3600.0) -> Any:
    """Run ``worker(*args, queue)`` in a spawned process and return what it puts on the queue.

    Raises:
        RuntimeError: if the process exits without a result, or gives none within ``timeout_s`` (it is then ended).
    """
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=worker, args=(*args, queue))
    proc.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                return queue.get(timeout=1.0)
            except queue_module.Empty:
                if not proc.is_alive() and queue.empty():
                    raise RuntimeError(f"benchmark subprocess {worker.__name__} exited with code {proc.exitcode} "
                                       "before reporting a result") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"benchmark subprocess {worker.__name__} gave no result within "
                                       f"{timeout_s:g} s") from None
    finally:
        if proc.is_alive():  # an error or interrupt here, or a timeout: do not leave the child running
            proc.terminate()
            proc.join(timeout=10)
            if proc.is_alive():  # it ignored SIGTERM
                proc.kill()
        proc.join()


def _cpu_peak_worker(case: Case, side: str, queue: mp.Queue) -> None:
    torch.manual_seed(0)
    module = build(case, side).train()
    x, y = _inputs(case, "cpu")
    tiny = Case(case.name, case.reference_name, (2, *case.shape[1:2], 8, 8), None, None, case.train_step,
                block_kwargs=case.block_kwargs)
    _step(module, tiny, *_inputs(tiny, "cpu"))  # load kernels and thread pools outside the measurement
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (Linux >= 4.0) so imports and set-up do not count
    before = proc_status_kib("VmRSS")
    _step(module, case, x, y)
    queue.put((proc_status_kib("VmHWM") - before) * 1024)


def peak_memory_bytes(case: Case, side: str, device: str) -> int:
    """Peak extra memory of one forward+backward (or train step) over what was held before it."""
    if device.startswith("cuda"):
        module = build(case, side).to(device).train()
        x, y = _inputs(case, device)
        _step(module, case, x, y)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        _step(module, case, x, y)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    return max(int(_in_subprocess(_cpu_peak_worker, case, side, timeout_s=600)), 0)


def sdpa_backend(device: str) -> str:
    """Which scaled-dot-product kernel our non-local block runs (fused kernels keep memory O(N))."""
    # A dispatch mode sees the kernel SDPA picked, without the profiler's noisy start-up on machines with no GPU.
    from torch.utils._python_dispatch import TorchDispatchMode

    from ..blocks import PixelSelfAttention

    class OpRecorder(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            self.ops.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    block = PixelSelfAttention(64).to(device)
    x = torch.randn(1, 64, 16, 16, device=device, requires_grad=True)
    with OpRecorder() as recorder:
        block(x).sum().backward()
    kernels = sorted(op.removeprefix("_scaled_dot_product_") for op in recorder.ops if "scaled_dot_product" in op)
    if any("math" in k for k in kernels) or not kernels:
        return f"math (O(N^2) fallback): {kernels}"
    return ", ".join(kernels)


def _fmt_ratio(ratio: float, target: float | None) -> str:
    if target is None:
        return f"{ratio:.2f}x"
    passed = ratio <= target
    shown = f"{ratio:.2f}"
    # A miss gets as many decimals as it takes to show it above the target (1.104x is not "1.10x ... MISS").
    decimals = 2
    while not passed and float(shown) <= target and decimals < 9:
        decimals += 1
        shown = f"{ratio:.{decimals}f}"
    return f"{shown}x (<= {target:g}x {'PASS' if passed else 'MISS'})"


def run_block_benchmark(
        device: str = "cpu",
        quick: bool = False,
        markdown: bool = False,
        only: list[str] | None = None,
        printer: Callable[[str], None] = print,
) -> list[dict[str, object]]:
    """Run every case (or those named in ``only``) and print the table; returns the rows as dicts."""
    check_device(device)
    labels = [case.label for case in cases(quick)]
    unknown = sorted(set(only or []) - set(labels))
    if unknown:
        raise ValueError(f"only names unknown rows {unknown}; valid: {', '.join(dict.fromkeys(labels))}")
    repeats, warmup = (2, 1) if quick else (15, 3)
    threads = torch.get_num_threads()
    printer(f"visattn block benchmark on {device} (torch {torch.__version__}, {threads} threads"
            f"{', ' + torch.cuda.get_device_name() if device.startswith('cuda') else ''}); "
            f"SDPA kernel: {sdpa_backend(device)}")
    rows = []
    for case in cases(quick):
        if only and case.label not in only:
            continue
        on_cpu = not device.startswith("cuda")
        if case.reuse_allocations and not on_cpu:
            continue  # CUDA's caching allocator reuses blocks anyway: the first train-step row says it all
        sides = ["ours", "reference"] + (["timm"] if case.train_step else [])
        if case.train_step:
            # Train steps take seconds on CPU: fewer rounds, but enough that the median rides out the noise.
            rounds = max(2, repeats * 3 // 5)
            t = (time_sides_in_subprocess(case, sides, rounds, warmup) if on_cpu
                 else time_sides(case, sides, device, rounds, warmup))
            if t is None:
                printer(f"{case.name}: skipped the reused-allocations row (the C library is not glibc)")
                continue
        else:
            t = time_sides(case, sides, device, repeats, warmup)
        row = {
            "block": case.label,
            "reference": case.reference_name,
            "shape": "x".join(map(str, case.shape)),
            "ours_ms": 1e3 * t["ours"],
            "ref_ms": 1e3 * t["reference"],
            "time": _fmt_ratio(t["ours"] / t["reference"], case.time_target),
        }
        if not case.reuse_allocations:  # the same step's memory again would tell nothing new
            mem = {s: peak_memory_bytes(case, s, device) for s in ("ours", "reference")}
            row.update(ours_mb=mem["ours"] / 2**20, ref_mb=mem["reference"] / 2**20,
                       memory=_fmt_ratio(mem["ours"] / max(mem["reference"], 1), case.memory_target))
        if case.train_step:
            malloc = "" if not on_cpu else ("malloc reuses large blocks; " if case.reuse_allocations
                                            else "default malloc; ")
            row["note"] = f"{malloc}timm CbamModule in the same net: {t['timm'] / t['reference']:.2f}x"
        rows.append(row)
        printer(_format_row(row, markdown, header=len(rows) == 1))
    if not quick and (not only or "nonlocal" in only):
        printer(_large_map_check(device))
    return rows


def _large_map_check(device: str) -> str:
    from ..blocks import PixelSelfAttention

    block = PixelSelfAttention(256).to(device)
    x = torch.randn(1, 256, 128, 128, device=device, requires_grad=True)
    start = time.perf_counter()
    block(x).mean().backward()
    synchronize(device)
    return (f"nonlocal at 1x256x128x128 (16,384 pixels): forward+backward ran in "
            f"{time.perf_counter() - start:.2f} s; a materialised attention matrix would need 1 GiB per image")


_COLUMNS = ["block", "reference", "shape", "ours_ms", "ref_ms", "time", "ours_mb", "ref_mb", "memory", "note"]


def _format_row(row: dict[str, object], markdown: bool, header: bool) -> str:
    cells = [f"{row.get(c, ''):.1f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in _COLUMNS]
    if markdown:
        line = "| " + " | ".join(cells) + " |"
        if header:
            line = "| " + " | ".join(_COLUMNS) + " |\n|" + "---|" * len(_COLUMNS) + "\n" + line
        return line
    widths = [26, 18, 14, 9, 9, 26, 9, 9, 26, 0]
    line = "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True))
    if header:
        line = "  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths, strict=True)) + "\n" + line
    return line
