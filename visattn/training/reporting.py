"""What a run leaves for a person: metrics.jsonl, curves.png, summary.json, a line per epoch and a summary table."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig
from ..files import atomic_write, atomic_write_json
from ..utils import count_params
from .checkpoint import checkpoint_progress

__all__ = ["append_metrics", "read_metrics", "plot_curves", "summary_table", "report_epoch", "checkpoint_kept",
           "unreadable_files", "write_summary"]


def append_metrics(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a killed run keeps every finished epoch's line)."""
    with open(path, "a") as f:
        f.write(json.dumps(dict(record)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (an unfinished last line is ignored; a missing file has none)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def plot_curves(history: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> None:
    """Loss and accuracy per epoch (train, val and, if present, EMA val) as a two-panel PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "val"), ("ema_val_loss", "val (EMA)")):
        points = [(e, r[key]) for e, r in zip(epochs, history, strict=True) if r.get(key) is not None]
        if points:
            ax_loss.plot(*zip(*points, strict=True), marker="o", label=label)
    for key, label in (("train_acc", "train"), ("val_acc", "val"), ("ema_val_acc", "val (EMA)")):
        points = [(e, 100 * r[key]) for e, r in zip(epochs, history, strict=True) if r.get(key) is not None]
        if points:
            ax_acc.plot(*zip(*points, strict=True), marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def summary_table(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column text table."""
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([line, *(f"{k:<{width}}  {v}" for k, v in rows), line])


def report_epoch(record: dict[str, Any], epochs: int, writer: Any) -> None:
    """Print one line for an epoch's record (and log its numbers to TensorBoard's ``writer``, if any)."""
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}",
             f"train {100 * record['train_acc']:.2f}%"]
    if "val_acc" in record:
        parts.append(f"val {100 * record['val_acc']:.2f}%")
    if "ema_val_acc" in record:
        parts.append(f"EMA val {100 * record['ema_val_acc']:.2f}%")
    parts.append(f"{record['train_img_s']:.0f} img/s")
    print("  ".join(parts), flush=True)
    if writer is not None:
        for key, value in record.items():
            if key not in ("epoch", "step"):
                writer.add_scalar(key, value, record["epoch"])


def checkpoint_kept(run_dir: Path) -> str:
    """What the run folder holds to resume from, in a sentence."""
    last = run_dir / "last.safetensors"
    if not last.is_file():
        return "No checkpoint was written yet, so there is nothing to resume: start the run again."
    return f"{last} holds epoch {checkpoint_progress(last)['epoch']}."


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def unreadable_files(history: list[dict[str, Any]]) -> int:
    """Unreadable images of the whole run, resumed parts included: each epoch reads every file once (but for a
    partial batch drop_last leaves out), so the most any epoch skipped in each split counts the files, not the reads."""
    return (max((int(r.get("train_skipped", 0)) for r in history), default=0)
            + max((int(r.get("val_skipped", 0)) for r in history), default=0))


def write_summary(run_dir: Path, cfg: TrainConfig, history: list[dict[str, Any]], model: torch.nn.Module,
            best_acc: float, last_acc: float, seconds: float, skipped: int, extra: dict[str, Any]) -> None:
    """Write curves.png and summary.json, warn about skipped images, and print the run's summary table."""
    plot_curves(history, run_dir / "curves.png", title=f"{cfg.model.name} on {cfg.data.name}")
    summary = {"model": cfg.model.name, "data": cfg.data.name, "epochs": len(history),
               "best_val_acc": best_acc if best_acc >= 0 else None,
               "last_val_acc": last_acc if math.isfinite(last_acc) else None, "params": count_params(model),
               "train_seconds": seconds, "skipped_images": skipped,
               "best_epoch": max(history, key=lambda r: r.get("val_acc", -1.0))["epoch"] if history else None,
               "train_img_s": _mean([r["train_img_s"] for r in history]), **extra}
    atomic_write_json(run_dir / "summary.json", summary, indent=2)
    if skipped:
        warnings.warn(f"{skipped} unreadable images were skipped in every epoch (data.on_corrupt='skip'); the "
                      f"epochs' train_skipped / val_skipped in metrics.jsonl say when", UserWarning, stacklevel=2)
    print(summary_table([
        ("model", f"{cfg.model.name} ({summary['params'] / 1e6:.2f}M params)"),
        ("data", f"{cfg.data.name}, {len(history)} epochs"),
        ("best val acc", f"{100 * best_acc:.2f}%"),
        ("last val acc", f"{100 * last_acc:.2f}%"),
        *([("test acc", f"{100 * extra['test_acc']:.2f}% (last epoch), "
                        f"{100 * extra.get('best_val_test_acc', math.nan):.2f}% (best val epoch)")]
          if "test_acc" in extra else []),
        ("time", f"{seconds:.1f} s"),
        ("run folder", str(run_dir)),
        ("files", "config.yaml metrics.jsonl last.safetensors best.safetensors curves.png summary.json"),
    ]))
