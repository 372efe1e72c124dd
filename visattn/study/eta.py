"""How long a study's grid has left, from seconds per epoch per variant.

Kept records may come from other machines (a grid is shared among machines and sessions), and machines differ by 2x
and more. So once this process has timed epochs of its own, they set the pace: a variant it has timed takes its own
time; one it has not takes its recorded time scaled by how this machine compares on the variants timed both ways.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

from ..training.reporting import read_metrics
from .config import RunSpec

__all__ = ["GridEta", "format_duration"]


class GridEta:
    """Time left in a grid. ``kept`` maps the names of runs finished before this process to their records."""

    def __init__(self, runs: Sequence[RunSpec], kept: Mapping[str, dict[str, Any]]) -> None:
        self.runs = list(runs)
        self.recorded: dict[str, list[float]] = {}  # variant -> seconds per epoch of runs finished before
        self.timed: dict[str, list[float]] = {}  # variant -> seconds of each epoch this process trained
        self.done_epochs: dict[str, int] = {}
        self.last_seconds: dict[str, float] = {}
        for spec in self.runs:
            record = kept.get(spec.name)
            if record is not None:
                self.recorded.setdefault(spec.variant, []).append(record["train_seconds"] / max(record["epochs"], 1))
                self.done_epochs[spec.name] = record["epochs"]
            else:
                metrics = read_metrics(spec.run_dir / "metrics.jsonl")
                self.done_epochs[spec.name] = len(metrics)
                self.last_seconds[spec.name] = metrics[-1]["seconds"] if metrics else 0.0

    def epoch_done(self, spec: RunSpec, metrics: dict[str, Any]) -> None:
        """Count one epoch of ``spec`` trained here (``metrics``: its line of metrics.jsonl)."""
        previous = self.last_seconds.get(spec.name, 0.0)  # a resumed run's clock starts at its earlier epochs' time
        self.last_seconds[spec.name] = metrics["seconds"]
        self.timed.setdefault(spec.variant, []).append(metrics["seconds"] - previous)
        self.done_epochs[spec.name] = metrics["epoch"]

    def finished(self, spec: RunSpec, record: dict[str, Any]) -> None:
        """Mark ``spec`` finished (its epochs were timed by :meth:`epoch_done`)."""
        self.done_epochs[spec.name] = record["epochs"]

    def seconds_per_epoch(self, variant: str) -> float:
        """The expected time of one epoch of ``variant`` on this machine (NaN before anything was timed)."""
        if self.timed.get(variant):
            return fmean(self.timed[variant])
        if self.timed:
            both = [v for v in self.timed if self.recorded.get(v)]
            if self.recorded.get(variant) and both:
                pace = fmean(fmean(self.timed[v]) / fmean(self.recorded[v]) for v in both)
                return fmean(self.recorded[variant]) * pace
            return fmean(s for values in self.timed.values() for s in values)
        if self.recorded.get(variant):
            return fmean(self.recorded[variant])
        every = [s for values in self.recorded.values() for s in values]
        return fmean(every) if every else math.nan

    def remaining(self) -> float:
        """Seconds until every run of the grid has trained all its epochs."""
        total = 0.0
        for spec in self.runs:
            left = spec.config.loop.epochs - self.done_epochs.get(spec.name, 0)
            if left > 0:
                total += left * self.seconds_per_epoch(spec.variant)
        return total


def format_duration(seconds: float) -> str:
    """``seconds`` as ``"47m"`` or ``"9h26m"`` (``"?"`` when not finite)."""
    if not math.isfinite(seconds):
        return "?"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
