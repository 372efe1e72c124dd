"""Run a study's grid: each run trained once, resumed where it stopped, never by two processes at a time.

A run is finished once its folder holds ``study_record.json`` (written atomically, last), or once the results folder
holds its copy, ``<results_dir>/records/<run>.json``. The copy is meant to be committed with the summary: a fresh
checkout (run folders are rarely kept) then skips every run that finished anywhere, so a grid can be shared among
machines and sessions. Until a run is finished it is continued from its ``last.safetensors``, written after every
epoch, so a study killed at any point (``kill -9`` included) loses at most the epoch in flight. Each run folder is
locked while a process trains in it (``training.lock``): several study processes started on one grid share the work,
each skipping the runs that another holds. The summary is rewritten after every finished run.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm import tqdm

from ..config import TrainConfig
from ..config.loader import ConfigError, load_config
from ..data.side import side_width
from ..files import atomic_write_json, atomic_write_text
from ..pipelines.train import train
from ..pipelines.trained import load_trained
from ..system.machine import machine_info
from ..training.checkpoint import checkpoint_progress
from ..training.lock import RunInUse, RunLock
from ..training.reporting import read_metrics
from ..utils import count_flops
from .config import RunSpec, StudyConfig, config_hash, plan_runs
from .eta import GridEta, format_duration
from .report import write_report

__all__ = ["RECORD_NAME", "RECORDS_DIR", "StudyResult", "run_study", "read_record", "finished_record"]

RECORD_NAME = "study_record.json"
RECORDS_DIR = "records"  # under results_dir: one <run>.json per finished run, committed with the summary


class StudyResult:
    """What a call of ``run_study`` found and did."""

    def __init__(self, records: list[dict[str, Any]], planned: int, busy: list[str], results_dir: Path) -> None:
        self.records, self.planned, self.busy, self.results_dir = records, planned, busy, results_dir

    @property
    def complete(self) -> bool:
        return len(self.records) == self.planned


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """A finished run's record, or None while the run is unfinished."""
    path = run_dir / RECORD_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def finished_record(spec: RunSpec, records_dir: Path) -> dict[str, Any] | None:
    """The record of a finished run, from its run folder or else from ``records_dir``; None while unfinished.

    Raises:
        ConfigError: the kept record was made with another config than the study now gives the run.
    """
    record = read_record(spec.run_dir)
    if record is not None:
        return record
    kept = records_dir / f"{spec.name}.json"
    if not kept.is_file():
        return None
    record = json.loads(kept.read_text())
    now = config_hash(spec.config)
    if record.get("config_hash") != now:
        raise ConfigError(f"{kept} records a run of another config (hash {record.get('config_hash')}, the study now "
                          f"gives {now}); delete it, or point results_dir elsewhere, to train the run anew")
    return record


def run_study(study: StudyConfig, train_overrides: Sequence[str] = (), *, variants: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None, train_runs: bool = True, stream: TextIO | None = None
              ) -> StudyResult:
    """Train every unfinished run of the grid, then write the study's summary from every finished run.

    Args:
        study: the study (``load_study_config``).
        train_overrides: ``key=value`` overrides for every run's training config, e.g. ``data.root=...``.
        variants: only these variants; seeds: only these seeds.
        train_runs: False only writes the summary of the runs finished so far.
        stream: where progress goes (default stderr).

    Returns:
        The finished runs' records, how many runs were planned, and those another process was training.

    Raises:
        ConfigError: a bad variant, or a run folder or kept record made with another config than the study now
            gives it.
    """
    stream = stream or sys.stderr
    runs = plan_runs(study, [*train_overrides, "checkpoint.every=1"], variants=variants, seeds=seeds)
    for spec in runs:
        _check_unchanged(spec)
    results_dir = Path(study.results_dir or study.runs_dir)
    records_dir = results_dir / RECORDS_DIR

    written: list[dict[str, Any]] = []  # the records the summary on disk was last written from

    def report() -> list[dict[str, Any]]:
        records = []
        for spec in runs:
            record = finished_record(spec, records_dir)
            if record is not None:
                _keep(record, records_dir / f"{spec.name}.json")
                records.append(record)
        if records and records != written:  # the last run's summary is not drawn a second time at the end
            write_report(records, study, planned=len(runs), results_dir=results_dir)
            written[:] = records
        return records

    busy: list[str] = []
    if train_runs:
        if any(spec.config.loop.amp == "auto" for spec in runs):
            print("note: loop.amp=auto times bf16 against float32 at the start of each run, so the runs of one grid "
                  "may train in different precisions; pin it for the whole grid in the study file, e.g. "
                  "overrides: {loop.amp: none}", file=stream)
        busy = _train_all(runs, records_dir, stream, on_finished=report)
    return StudyResult(report(), len(runs), busy, results_dir)


def _keep(record: dict[str, Any], path: Path) -> None:
    """Copy a finished run's record into the results folder, unless the same record is there already."""
    if not path.is_file() or json.loads(path.read_text()) != record:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)


def _check_unchanged(spec: RunSpec) -> None:
    """Refuse to continue or count a run whose folder was made with another config (e.g. more epochs)."""
    saved = spec.run_dir / "config.yaml"
    if not saved.is_file():
        return
    before = config_hash(load_config(TrainConfig, saved))
    now = config_hash(spec.config)
    if before != now:
        raise ConfigError(f"{spec.run_dir} was trained with another config (hash {before}, the study now gives "
                          f"{now}); move that folder away, or point runs_dir elsewhere, to train it anew")


def _train_all(runs: list[RunSpec], records_dir: Path, stream: TextIO, on_finished: Callable[[], object]
               ) -> list[str]:
    """Train the unfinished runs in order, calling ``on_finished`` after each; returns those another process holds."""
    kept = {spec.name: r for spec in runs if (r := finished_record(spec, records_dir)) is not None}
    eta = GridEta(runs, kept, machine_info())
    busy = []
    for index, spec in enumerate(runs, start=1):
        if spec.name in kept:
            continue
        lock = RunLock(spec.run_dir)
        try:
            lock.acquire()
        except RunInUse:
            busy.append(spec.name)
            print(f"[{index}/{len(runs)}] {spec.name}: another process is training it; skipped", file=stream)
            continue
        try:
            trained = finished_record(spec, records_dir) is None  # another process may have finished it meanwhile
            if trained:
                eta.finished(spec, _train_one(spec, f"[{index}/{len(runs)}]", eta, stream))
        finally:
            lock.release()
        if trained:
            on_finished()
    return busy


def _train_one(spec: RunSpec, label: str, eta: GridEta, stream: TextIO) -> dict[str, Any]:
    cfg = spec.config
    resume = (spec.run_dir / "last.safetensors").is_file()
    done = checkpoint_progress(spec.run_dir / "last.safetensors")["epoch"] if resume else 0
    interactive = stream.isatty()
    bar = tqdm(total=cfg.loop.epochs, initial=min(done, cfg.loop.epochs), desc=f"{label} {spec.name}",
               file=stream, leave=True, dynamic_ncols=True, disable=not interactive, unit="epoch")
    if not interactive:
        print(f"{label} {spec.name}: " + (f"resuming after epoch {done}" if resume else "starting"), file=stream,
              flush=True)
    started = time.perf_counter()

    def on_epoch(record: dict[str, Any]) -> None:
        eta.epoch_done(spec, record)
        text = f"val {100 * record.get('val_acc', math.nan):.1f}% | study ETA {format_duration(eta.remaining())}"
        if interactive:
            bar.update(1)
            bar.set_postfix_str(text)
        else:
            print(f"{label} {spec.name}: epoch {record['epoch']}/{cfg.loop.epochs}, {text}", file=stream, flush=True)

    spec.run_dir.mkdir(parents=True, exist_ok=True)
    with open(spec.run_dir / "train.log", "a") as log, contextlib.redirect_stdout(log):
        train(cfg, run_dir=spec.run_dir, resume=resume, on_epoch=on_epoch)
    bar.close()
    record = _make_record(spec)
    atomic_write_text(spec.run_dir / RECORD_NAME, json.dumps(record, indent=1) + "\n")
    print(f"{label} {spec.name}: test top-1 {100 * record['test_acc']:.2f}% after {record['epochs']} epochs, "
          f"{record['train_seconds'] / 60:.1f} min of training ({time.perf_counter() - started:.0f} s in this "
          f"process)", file=stream, flush=True)
    return record


def _make_record(spec: RunSpec) -> dict[str, Any]:
    """The study's view of a finished run: scores, costs, the curve, and what it ran on."""
    summary = json.loads((spec.run_dir / "summary.json").read_text())
    if summary.get("test_acc") is None:
        raise ConfigError(f"{spec.run_dir}: the run has no test accuracy; a study needs data.val_split so that "
                          f"the data set's own test split is scored once, at the end")
    metrics = read_metrics(spec.run_dir / "metrics.jsonl")
    trained = load_trained(spec.run_dir)
    size = spec.config.data.image_size
    in_chans = int(spec.config.model.kwargs.get("in_chans", 3))
    side = side_width(spec.config.data)
    inputs = (torch.zeros(1, in_chans, size, size), *([torch.zeros(1, side)] if side else []))
    with torch.no_grad():
        flops, _ = count_flops(trained.model.eval(), *inputs)
    return {
        "variant": spec.variant,
        "seed": spec.seed,
        "run_dir": str(spec.run_dir),
        "test_acc": summary["test_acc"],
        "best_val_test_acc": summary.get("best_val_test_acc"),
        "best_epoch": summary.get("best_epoch"),
        "epochs": summary["epochs"],
        "best_val_acc": summary["best_val_acc"],
        "last_val_acc": summary["last_val_acc"],
        "params": summary["params"],
        "flops": flops,
        "train_img_s": summary.get("train_img_s"),
        "train_seconds": summary["train_seconds"],
        # Process CPU time of the training (all threads), from the metrics; None for runs logged without it.
        "cpu_seconds": metrics[-1]["cpu_seconds"] if metrics and all("cpu_seconds" in r for r in metrics) else None,
        "amp": summary.get("amp"),
        "config_hash": config_hash(spec.config),
        "machine": machine_info(),
        "curve": [{"epoch": r["epoch"], "val_acc": r.get("val_acc"), "train_loss": r["train_loss"],
                   "seconds": r["seconds"]} for r in metrics],
    }
