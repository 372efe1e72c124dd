"""How long a study's grid has left, from seconds per epoch per variant and machine.

Kept records may come from other machines (a grid is shared among machines and sessions), and machines differ by 2x
and more. So times are kept per machine: a variant timed on this machine (in this process or by a kept record from
the same hardware) takes this machine's time; one timed only elsewhere takes that machine's time scaled by how the two
machines compare on the variants both have timed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

from ..training.reporting import read_metrics
from .config import RunSpec

__all__ = ["GridEta", "format_duration", "hardware"]

Hardware = tuple[Any, ...]


def hardware(machine: Mapping[str, Any] | None) -> Hardware:
    """What sets a run's speed in a record's ``machine`` entry: processor, its matrix features, threads and GPU."""
    machine = machine or {}
    return (machine.get("cpu"), tuple(machine.get("cpu_features") or ()), machine.get("torch_threads"),
            machine.get("gpu"))


class GridEta:
    """Time left in a grid run on ``machine`` (a :func:`~visattn.system.machine.machine_info` dict).

    ``kept`` maps the names of runs finished before this process to their records.
    """

    def __init__(self, runs: Sequence[RunSpec], kept: Mapping[str, dict[str, Any]],
                 machine: Mapping[str, Any] | None) -> None:
        self.runs = list(runs)
        self.here = hardware(machine)
        self.epoch_seconds: dict[Hardware, dict[str, list[float]]] = {}  # machine -> variant -> seconds per epoch
        self.done_epochs: dict[str, int] = {}
        self.last_seconds: dict[str, float] = {}
        for spec in self.runs:
            record = kept.get(spec.name)
            if record is not None:
                per_epoch = record["train_seconds"] / max(record["epochs"], 1)
                self._times(hardware(record.get("machine")), spec.variant).append(per_epoch)
                self.done_epochs[spec.name] = record["epochs"]
            else:
                metrics = read_metrics(spec.run_dir / "metrics.jsonl")
                self.done_epochs[spec.name] = len(metrics)
                self.last_seconds[spec.name] = metrics[-1]["seconds"] if metrics else 0.0

    def _times(self, machine: Hardware, variant: str) -> list[float]:
        return self.epoch_seconds.setdefault(machine, {}).setdefault(variant, [])

    def epoch_done(self, spec: RunSpec, metrics: dict[str, Any]) -> None:
        """Count one epoch of ``spec`` trained here (``metrics``: its line of metrics.jsonl)."""
        previous = self.last_seconds.get(spec.name, 0.0)  # a resumed run's clock starts at its earlier epochs' time
        self.last_seconds[spec.name] = metrics["seconds"]
        self._times(self.here, spec.variant).append(metrics["seconds"] - previous)
        self.done_epochs[spec.name] = metrics["epoch"]

    def finished(self, spec: RunSpec, record: dict[str, Any]) -> None:
        """Mark ``spec`` finished (its epochs were timed by :meth:`epoch_done`)."""
        self.done_epochs[spec.name] = record["epochs"]

    def seconds_per_epoch(self, variant: str) -> float:
        """The expected time of one epoch of ``variant`` on this machine (NaN before anything was timed)."""
        own = self.epoch_seconds.get(self.here, {})
        if own.get(variant):
            return fmean(own[variant])
        scaled = []
        for machine, times in self.epoch_seconds.items():
            both = [v for v in own if times.get(v)]
            if machine != self.here and times.get(variant) and both:
                pace = fmean(fmean(own[v]) / fmean(times[v]) for v in both)
                scaled.append(fmean(times[variant]) * pace)
        if scaled:
            return fmean(scaled)
        if own:  # no machine relates to this one through a shared variant: this one's mean epoch
            return fmean(s for values in own.values() for s in values)
        elsewhere = [s for times in self.epoch_seconds.values() for s in times.get(variant, [])]
        every = elsewhere or [s for times in self.epoch_seconds.values() for v in times.values() for s in v]
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
