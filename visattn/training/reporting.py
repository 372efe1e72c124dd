"""What a run leaves for a person: metrics.jsonl, curves.png, and a summary table."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write

__all__ = ["append_metrics", "read_metrics", "plot_curves", "summary_table"]


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
