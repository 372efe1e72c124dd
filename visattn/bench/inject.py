"""``visattn bench inject``: where ``inject`` reaches in timm, and what a block costs in each CNN family.

- ``--sweep``: every model in ``timm.list_models()`` (or those matching ``--filter``) is built with random weights,
  randomised BatchNorm statistics and a small probe, and ``inject(model, block)`` is tried; each result is one JSON line
  in ``--out`` (a rerun skips the models already there, so a killed sweep resumes), and the summary counts the models
  that take the block, by timm module, and the reasons the others are refused.
- Default: one representative model per family (timm and torchvision) gets each block; the table gives the sites,
  the added parameters and FLOPs, and the train-step time against the same model without a block, timed in turns.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.inject import inject
from ..system.machine import describe_machine
from .timing import check_device, interleaved_medians

__all__ = ["sweep", "summarise_sweep", "run_overhead", "FAMILIES", "build", "trained_like"]

# One representative per family: (label, builder name). "tv:" builds torchvision's model of that name.
FAMILIES: tuple[tuple[str, str], ...] = (
    ("ResNet (timm)", "resnet18"),
    ("ResNet-D", "resnet26d"),
    ("ResNeXt", "resnext26ts"),
    ("Wide ResNet", "wide_resnet50_2"),
    ("SE-ResNet", "seresnet18"),
    ("Res2Net", "res2net50_26w_4s"),
    ("RegNetX", "regnetx_002"),
    ("RegNetY", "regnety_002"),
    ("EfficientNet", "efficientnet_b0"),
    ("MobileNetV3", "mobilenetv3_small_100"),
    ("GhostNet", "ghostnet_100"),
    ("ConvNeXt", "convnext_atto"),
    ("DenseNet", "densenet121"),
    ("VGG", "vgg11"),
    ("ResNet (torchvision)", "tv:resnet18"),
    ("EfficientNet (torchvision)", "tv:efficientnet_b0"),
    ("MobileNetV3 (torchvision)", "tv:mobilenet_v3_small"),
    ("ConvNeXt (torchvision)", "tv:convnext_tiny"),
    ("RegNetY (torchvision)", "tv:regnet_y_400mf"),
    ("DenseNet (torchvision)", "tv:densenet121"),
    ("VGG (torchvision)", "tv:vgg11"),
)


def build(name: str, num_classes: int = 10) -> nn.Module:
    """A timm model by name, or a torchvision one as ``tv:<name>``, with random weights."""
    if name.startswith("tv:"):
        import torchvision

        return getattr(torchvision.models, name[3:])(num_classes=num_classes)
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, and non-zero values in every scale that starts at (near)
    zero, as a trained model has. A fresh model zero-initialises the last norm of many residual branches (and
    ConvNeXt's layer scale starts at 1e-6), which would hide a block that breaks the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        for p in model.parameters():
            if p.ndim <= 1 and p.numel() and p.abs().max() < 1e-3:
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.5)
            elif p.ndim <= 1 and p.numel():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _reason(err: BaseException) -> str:
    text = str(err)
    if "token sequences or channels-last" in text:
        return "transformer: its blocks add token sequences or channels-last maps"
    if "no residual blocks and no stage outputs" in text:
        return "no NCHW stage at strides 4-32"
    return f"error: {type(err).__name__}"


def _try_one(name: str, block: str, size: int, max_params: int) -> dict[str, Any]:
    start = time.perf_counter()
    row: dict[str, Any] = {"model": name}
    try:
        with torch.device("meta"):  # counted without allocating: the giants would take minutes and gigabytes each
            params = sum(p.numel() for p in build(name).parameters())
    except Exception:  # noqa: BLE001  (built for real below, where its error is recorded)
        params = 0
    if params > max_params:
        return {**row, "ok": False, "reason": f"not tried: over {max_params // 10**6}M parameters",
                "params": params}
    try:
        model = trained_like(build(name)).eval()
    except Exception as err:  # noqa: BLE001  (a model timm cannot build here is recorded, not fatal)
        return {**row, "ok": False, "reason": "timm cannot build it here",
                "error": f"{type(err).__name__}: {err}"[:300]}
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    sizes = [size] if not cfg.get("fixed_input_size") else []
    sizes.append(int(cfg.get("input_size", (3, 224, 224))[-1]))
    for px in sizes:
        try:
            _, report = inject(model, block, input_size=(3, px, px))
        except Exception as err:  # noqa: BLE001
            row.update(ok=False, reason=_reason(err), error=f"{type(err).__name__}: {err}"[:300], input_px=px)
            if isinstance(err, ValueError) and "nowhere to put" in str(err):
                break  # the structure answered; a bigger probe would not change it
            continue
        where = Counter(s.where.split(" (")[0] if not s.where.startswith("after") else "after existing attention"
                        for s in report.sites)
        row = {"model": name, "ok": True, "sites": len(report.sites), "stages": sorted({s.stage for s in report.sites}),
               "where": dict(where), "max_abs_diff": report.max_abs_diff, "input_px": px}
        break
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def sweep(out: str | Path, *, block: str = "cbam", pattern: str = "*", size: int = 64, max_params: int = 200_000_000,
          printer: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Try ``inject(model, block)`` on every timm model matching ``pattern`` with at most ``max_params`` parameters;
    one JSON line per model in ``out``."""
    import timm

    out = Path(out)
    done = {}
    if out.is_file():
        for line in out.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["model"]] = row
    # visattn's own registrations (resnet18_cbam, ...) are not timm's models.
    names = [n for n in timm.list_models() if fnmatch.fnmatch(n, pattern)
             and not timm.models.model_entrypoint(n).__module__.startswith("visattn")]
    todo = [n for n in names if n not in done]
    printer(f"{len(names)} timm models match {pattern!r}; {len(done)} already in {out}, {len(todo)} to try")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for i, name in enumerate(todo, 1):
            row = _try_one(name, block, size, max_params)
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a kill loses at most the model being tried
            done[name] = row
            state = f"{row['sites']} sites" if row["ok"] else row["reason"]
            printer(f"[{i}/{len(todo)}] {name}: {state} ({row.get('seconds', 0):.1f} s)")
    return [done[n] for n in names]


def summarise_sweep(rows: list[dict[str, Any]], printer: Callable[[str], None] = print) -> dict[str, Any]:
    """Counts of a sweep: models that take a block, refusal reasons, and a table by timm module."""
    import timm

    module_of = {}
    for module in timm.list_modules():
        for name in timm.list_models(module=module):
            module_of.setdefault(name, module)
    ok = [r for r in rows if r["ok"]]
    reasons = Counter(r["reason"] for r in rows if not r["ok"])
    printer(f"{len(ok)} of {len(rows)} timm models take a block; refused: "
            + "; ".join(f"{n} {reason}" for reason, n in reasons.most_common()))
    by_module: dict[str, Counter] = {}
    for r in rows:
        by_module.setdefault(module_of.get(r["model"], "?"), Counter())["ok" if r["ok"] else r["reason"]] += 1
    printer("| timm module | models | take a block | refused (why) |\n|---|---|---|---|")
    for module, counts in sorted(by_module.items()):
        refused = ", ".join(f"{n} {why}" for why, n in counts.items() if why != "ok")
        printer(f"| {module} | {sum(counts.values())} | {counts['ok']} | {refused} |")
    return {"models": len(rows), "take_a_block": len(ok), "refused": dict(reasons),
            "by_module": {m: dict(c) for m, c in by_module.items()}}


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    model.train()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_overhead(blocks: tuple[str, ...] = ("se", "cbam", "nonlocal"), *, device: str = "cpu", batch_size: int = 16,
                 size: int = 64, steps: int = 3, families: tuple[tuple[str, str], ...] = FAMILIES,
                 printer: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Per family and block: sites, +params, +FLOPs (at ``size`` px) and train-step time / the plain model's."""
    check_device(device)
    printer(f"{describe_machine()}; torch {torch.__version__}; batch {batch_size} x 3x{size}x{size}, {device}")
    printer("| family | model | block | sites | +params | +FLOPs | train step vs no block |")
    printer("|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, size, size, generator=g).to(device)
    y = torch.randint(0, 10, (batch_size,), generator=g).to(device)
    rows = []
    for label, name in families:
        models = {"none": build(name).to(device)}
        reports = {}
        for block in blocks:
            models[block], reports[block] = inject(build(name).to(device), block, input_size=(3, size, size))
        optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in models.items()}

        calls = {k: partial(_train_step, m, optimizers[k], x, y) for k, m in models.items()}
        seconds = interleaved_medians(calls, device, steps, 1)
        for block in blocks:
            r = reports[block]
            row = {"family": label, "model": name, "block": block, "sites": len(r.sites),
                   "params_pct": 100 * r.params_added / max(1, r.params_before),
                   "flops_pct": 100 * r.flops_added / max(1, r.flops_before),
                   "step_ratio": seconds[block] / seconds["none"]}
            rows.append(row)
            printer(f"| {label} | {name.removeprefix('tv:')} | {block} | {row['sites']} | +{row['params_pct']:.1f} % | "
                    f"+{row['flops_pct']:.1f} % | {row['step_ratio']:.2f}x |")
    return rows
