"""``train(config)``: data, model, optimisation, loop, evaluation, checkpointing, in that order.

A run folder holds ``config.yaml`` (resolved, with the visattn version and git hash), ``metrics.jsonl``,
``last.safetensors`` (full training state, for ``--resume``), ``best.safetensors`` (weights of the best epoch by
validation accuracy), ``curves.png`` and ``summary.json``. Only rank 0 writes.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler, get_worker_info

from ..cam.layers import resolve_layers
from ..config import TrainConfig
from ..config.loader import save_config
from ..data.datasets import DataBundle, build_datasets
from ..data.folder import collate_skipping
from ..data.side import side_width
from ..files import atomic_write_text
from ..system.allocator import reuse_large_allocations
from .checkpoint import (
    load_checkpoint,
    save_checkpoint,
    save_weights,
    unwrap_model,
    weights_metadata,
)
from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_buffers, cleanup, init_distributed
from .lock import RunLock
from .loop import EpochStats, Schedule, TrainingDiverged, TrainingInterrupted, evaluate, train_one_epoch
from .model import build_model
from .optim import build_optimizer
from .precision import channels_last_hazard, resolve_amp
from .reporting import (
    append_metrics,
    checkpoint_kept,
    read_metrics,
    report_epoch,
    unreadable_files,
    write_summary,
)
from .run_folder import git_hash, recorded_run_name, resolve_run_dir, run_name

__all__ = ["RunResult", "train", "resolve_device", "recorded_run_name"]


@dataclass
class RunResult:
    """Where the run went and how it ended."""

    run_dir: Path
    best_accuracy: float
    last_accuracy: float
    epochs: int
    seconds: float
    test_accuracy: float | None = None  # with data.val_split: the last epoch's weights on the test split


def resolve_device(name: str) -> torch.device:
    """``'auto'`` -> cuda if available else cpu; anything else must be a valid, available torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"loop.device={name!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"loop.device={name!r} but CUDA is not available here; use 'cpu' or 'auto'")
    return device


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False


def _seed_transform(dataset: Any, seed: int) -> None:
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


_RANK_SEED_STRIDE = 7919  # a prime: rank r's epoch seeds never collide with another rank's nearby epochs


def _worker_init(worker_id: int) -> None:
    # Each worker's augmentation stream follows from the loader's per-epoch generator: resumable and reproducible.
    info = get_worker_info()
    _seed_transform(info.dataset, info.seed % 2**32)
    np.random.seed(info.seed % 2**32)
    random.seed(info.seed)


def _loader(dataset: Any, cfg: TrainConfig, train: bool, info: DistInfo, epoch_seed: int) -> DataLoader:
    batch = cfg.data.batch_size if train else (cfg.data.eval_batch_size or 2 * cfg.data.batch_size)
    # Each rank draws its own augmentations (timm seeds seed + rank); rank 0 keeps the single-process stream.
    epoch_seed += _RANK_SEED_STRIDE * info.rank
    generator = torch.Generator().manual_seed(epoch_seed)
    if info.enabled and train:
        sampler = DistributedSampler(dataset, info.world_size, info.rank, shuffle=True, seed=cfg.loop.seed)
    elif info.enabled:
        # Every image exactly once across ranks (DistributedSampler pads with repeats, which would be scored twice);
        # uneven shards are fine because evaluation only reduces sums at the end.
        sampler = range(info.rank, len(dataset), info.world_size)
    elif train:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    if cfg.data.num_workers == 0:
        _seed_transform(dataset, epoch_seed)
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=cfg.data.num_workers,
                      collate_fn=collate_skipping, drop_last=train, generator=generator,
                      worker_init_fn=_worker_init if cfg.data.num_workers > 0 else None,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)


def train(cfg: TrainConfig, *, config_path: str | Path | None = None, resume: str | Path | bool = False,
          run_dir: str | Path | None = None, on_epoch: Callable[[dict[str, Any]], None] | None = None
          ) -> RunResult:
    """Run the training described by ``cfg``.

    Args:
        cfg: the resolved config.
        config_path: the YAML file it came from (names the run folder).
        resume: False; True to continue the run folder this config names; or a run folder / checkpoint path.
        run_dir: use exactly this run folder instead of one named after the config (``resume=True`` continues it).
        on_epoch: called on rank 0 with each epoch's metrics record, after it is written.

    Returns:
        The run folder, its best/last validation accuracy and, with ``data.val_split``, its test accuracy.

    Raises:
        TrainingDiverged: NaN/inf loss; the last good checkpoint stays in the run folder.
        FileNotFoundError: ``resume`` names no checkpoint.
        FileExistsError: ``run_dir`` holds a checkpoint and ``resume`` is False.
        RunInUse: another process is training in the run folder.
    """
    from ..version import __version__

    device = resolve_device(cfg.loop.device)
    info = init_distributed(device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if cfg.loop.amp == "fp16" and device.type != "cuda":
        raise ValueError("loop.amp='fp16' needs CUDA; use 'auto', 'bf16' or 'none' on CPU")
    _seed_everything(cfg.loop.seed, cfg.loop.deterministic)
    if cfg.loop.reuse_allocations and device.type == "cpu":
        reuse_large_allocations()

    # data
    data = build_datasets(cfg.data)

    # model
    model, inject_report = build_model(cfg.model, data.num_classes, side_features=side_width(cfg.data))
    if cfg.eval.overlays and cfg.eval.overlay_layers:
        resolve_layers(model, cfg.eval.overlay_layers)  # a misspelt layer fails now, not after training
    model.to(device)
    saved_cfg = cfg  # what config.yaml and the weights record; cfg may differ in how, never in what, it computes
    hazard = channels_last_hazard(model) if cfg.loop.channels_last and device.type == "cpu" else None
    if hazard:
        if info.is_main:
            warnings.warn(f"loop.channels_last is off for this run: {hazard}", UserWarning, stacklevel=2)
        cfg = replace(cfg, loop=replace(cfg.loop, channels_last=False))
    if cfg.loop.channels_last:
        model.to(memory_format=torch.channels_last)
    amp = _resolve_amp(cfg, model, device, info)
    ema = None
    if cfg.loop.ema_decay is not None:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.loop.ema_decay, device=device)
    train_model: torch.nn.Module = model
    if info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.loop.compile:
        train_model = torch.compile(train_model)

    # optimisation
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    steps_per_epoch = math.ceil(len(data.train) / info.world_size) // cfg.data.batch_size  # per rank, drop_last
    if steps_per_epoch == 0:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} x {info.world_size} process(es) exceeds the "
                         f"{len(data.train)} training images")
    schedule = Schedule(total_steps=steps_per_epoch * cfg.loop.epochs,
                        warmup_steps=round(cfg.optim.warmup_epochs * steps_per_epoch), optim=cfg.optim)

    # checkpointing: where, and from where
    if run_dir is not None:
        run_dir = Path(run_dir)
        if not resume and (run_dir / "last.safetensors").exists():
            raise FileExistsError(f"{run_dir} holds a run already; resume it or choose another folder")
        resume = run_dir if resume else False
    else:
        run_dir = resolve_run_dir(cfg, config_path, resume=resume is True)
    resume_file: Path | None = None
    if resume:
        resume_file = run_dir / "last.safetensors" if resume is True else Path(resume)
        if resume_file.is_dir():
            resume_file = resume_file / "last.safetensors"
        run_dir = resume_file.parent
    lock = RunLock(run_dir)
    if info.is_main:
        lock.acquire()  # before reading the checkpoint: a live run may be about to replace it
    try:
        return _train_in(run_dir, resume_file, cfg, saved_cfg, config_path, data, model, inject_report, train_model,
                         ema, optimizer, scaler, schedule, amp, device, info, on_epoch, __version__)
    finally:
        lock.release()


def _train_in(run_dir: Path, resume_file: Path | None, cfg: TrainConfig, saved_cfg: TrainConfig,
              config_path: str | Path | None,
              data: DataBundle, model: torch.nn.Module, inject_report: Any, train_model: torch.nn.Module,
              ema: Any, optimizer: torch.optim.Optimizer, scaler: Any, schedule: Schedule, amp: str,
              device: torch.device, info: DistInfo, on_epoch: Callable[[dict[str, Any]], None] | None,
              version: str) -> RunResult:
    """The part of ``train`` that runs inside the run folder's lock: resume, loop, checkpoints, test, summary."""
    start_epoch, step, best_acc, history = 0, 0, -1.0, []
    if resume_file is not None:
        settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        progress = load_checkpoint(resume_file, model=model, optimizer=optimizer, ema=ema, scaler=scaler)
        # The checkpoint brings its own param_groups; the config's optimiser settings win (config.yaml says them),
        # and the schedule sets the learning rate at every step anyway.
        changed = _apply_optimizer_settings(optimizer, settings)
        if changed and info.is_main:
            print(f"resume: the config's optimizer settings replace the checkpoint's: {', '.join(changed)}")
        start_epoch, step, best_acc = progress["epoch"], progress["step"], progress["best_accuracy"]
        # best.safetensors may come from an epoch after the last full checkpoint: never overwrite it with worse.
        best_acc = max(best_acc, _saved_best_accuracy(run_dir / "best.safetensors"))
        history = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["epoch"] <= start_epoch]
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(saved_cfg, run_dir / "config.yaml", extra={"visattn_version": version, "git_hash": git_hash(),
                                                          "torch_version": str(torch.__version__),
                                                          "run_name": run_name(cfg, config_path)})
        if resume_file is not None:  # drop lines of epochs after the checkpoint (an interrupted run's last words)
            atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        else:  # a fresh start in a given folder: lines of an attempt killed before its first checkpoint go
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        print(f"run folder: {run_dir}")
        if inject_report is not None:
            print(inject_report)
    writer = None
    if cfg.loop.tensorboard and info.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"))

    # loop
    started, started_cpu = time.perf_counter(), time.process_time()
    earlier_seconds = float(history[-1].get("seconds", 0.0)) if history else 0.0  # a resumed run's time so far
    # CPU time of this process, all threads: unlike wall time, it barely grows when other work shares the machine.
    earlier_cpu = float(history[-1].get("cpu_seconds", 0.0)) if history else 0.0
    last_acc = next((r["val_acc"] for r in reversed(history) if "val_acc" in r), float("nan"))
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg.loop.epochs):
            epoch_seed = cfg.loop.seed * 1_000_003 + epoch
            loader = _loader(data.train, cfg, True, info, epoch_seed)
            if isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(epoch)
            train_stats, step = train_one_epoch(
                train_model, loader, optimizer, epoch=epoch, step=step, schedule=schedule, device=device,
                amp=amp, channels_last=cfg.loop.channels_last, scaler=scaler, ema=ema, info=info,
                progress=cfg.loop.progress, on_corrupt=cfg.data.on_corrupt)
            record: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
                                      "train_loss": train_stats.loss, "train_acc": train_stats.accuracy,
                                      "train_img_s": train_stats.images_per_second,
                                      "train_skipped": train_stats.skipped}
            last_epoch = epoch + 1 == cfg.loop.epochs
            if (epoch + 1) % cfg.eval.every == 0 or last_epoch:
                val = _evaluate(model, data.val, cfg, info, device, amp)
                record.update(val_loss=val.loss, val_acc=val.accuracy, val_skipped=val.skipped)
                last_acc = val.accuracy
                if ema is not None:
                    ema_val = _evaluate(ema.module, data.val, cfg, info, device, amp)
                    record.update(ema_val_loss=ema_val.loss, ema_val_acc=ema_val.accuracy)
            record["seconds"] = earlier_seconds + time.perf_counter() - started
            record["cpu_seconds"] = earlier_cpu + time.process_time() - started_cpu
            history.append(record)
            if info.is_main:
                report_epoch(record, cfg.loop.epochs, writer)
                append_metrics(run_dir / "metrics.jsonl", record)
                improved = record.get("val_acc", -1.0) > best_acc
                if improved:
                    best_acc = record["val_acc"]
                    save_weights(run_dir / "best.safetensors", unwrap_model(model).state_dict(),
                                 weights_metadata(saved_cfg, data.classes, epoch=epoch + 1, val_acc=best_acc))
                if (epoch + 1) % cfg.checkpoint.every == 0 or last_epoch:
                    save_checkpoint(run_dir / "last.safetensors", model=model, optimizer=optimizer, ema=ema,
                                    scaler=scaler,
                                    progress={"epoch": epoch + 1, "step": step, "best_accuracy": best_acc})
                if on_epoch is not None:
                    on_epoch(record)
            barrier(info)
        test = _test(model, run_dir, data.test, cfg, info, device, amp) if data.test is not None else {}
    except TrainingDiverged as err:
        raise TrainingDiverged(f"{err} {checkpoint_kept(run_dir)}") from None
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"interrupted in epoch {epoch + 1} of {cfg.loop.epochs}; {checkpoint_kept(run_dir)} "
                                  f"Resume with: visattn train --resume {run_dir}") from None
    finally:
        if writer is not None:
            writer.close()
        cleanup(info)

    seconds = earlier_seconds + time.perf_counter() - started
    if info.is_main:
        write_summary(run_dir, cfg, history, model, best_acc, last_acc, seconds, unreadable_files(history),
                {"amp": amp, **test})
    return RunResult(run_dir, best_acc, last_acc, len(history), seconds, test.get("test_acc"))


def _apply_optimizer_settings(optimizer: torch.optim.Optimizer, settings: list[dict[str, Any]]) -> list[str]:
    """Put ``settings`` (one dict per param group) back into ``optimizer``; returns the changes, as text."""
    changed = []
    for group, wanted in zip(optimizer.param_groups, settings, strict=True):
        for key, value in wanted.items():
            before = group.get(key)
            # JSON brings tuples (AdamW's betas) back as lists: compare them as sequences.
            same = (tuple(before) == tuple(value) if isinstance(before, (list, tuple)) and isinstance(value, tuple)
                    else before == value)
            if key not in ("lr", "initial_lr") and not same:
                changed.append(f"{key} {before!r} -> {value!r}")
            group[key] = value
    return sorted(set(changed))


def _saved_best_accuracy(path: Path) -> float:
    if not path.is_file():
        return -1.0
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return float(json.loads((f.metadata() or {}).get("val_acc", "-1")))


def _evaluate(model: torch.nn.Module, dataset: Any, cfg: TrainConfig, info: DistInfo, device: torch.device,
              amp: str, desc: str = "eval") -> EpochStats:
    broadcast_buffers(model, info)  # every rank evaluates the model rank 0 saves
    loader = _loader(dataset, cfg, False, info, cfg.loop.seed)
    return evaluate(model, loader, device=device, amp=amp, channels_last=cfg.loop.channels_last,
                    info=info, progress=cfg.loop.progress, desc=desc, on_corrupt=cfg.data.on_corrupt)


def _resolve_amp(cfg: TrainConfig, model: torch.nn.Module, device: torch.device, info: DistInfo) -> str:
    """``loop.amp`` made concrete (``'auto'`` measured on a CPU); every rank takes rank 0's choice."""
    in_chans = int(cfg.model.kwargs.get("in_chans", 3))
    choice = resolve_amp(cfg.loop.amp, device, model, (in_chans, cfg.data.image_size, cfg.data.image_size),
                         channels_last=cfg.loop.channels_last, batch_size=cfg.data.batch_size,
                         side_features=side_width(cfg.data))
    amp = choice.amp
    if info.enabled and cfg.loop.amp == "auto" and device.type != "cuda":
        options = ("none", "bf16")
        votes = torch.zeros(len(options), device=device)
        if info.is_main:
            votes[options.index(amp)] = 1
        amp = options[int(all_reduce_sum(votes, info).argmax())]
    if info.is_main and cfg.loop.amp == "auto":
        print(f"precision: {'float32' if amp == 'none' else amp} ({choice.reason})", flush=True)
    return amp


def _test(model: torch.nn.Module, run_dir: Path, dataset: Any, cfg: TrainConfig, info: DistInfo,
          device: torch.device, amp: str) -> dict[str, float]:
    """The test split's loss and accuracy with the last weights and with the best epoch's (by validation)."""
    last = _evaluate(model, dataset, cfg, info, device, amp, desc="test")
    out = {"test_acc": last.accuracy, "test_loss": last.loss}
    barrier(info)  # rank 0 has written best.safetensors
    best_file = run_dir / "best.safetensors"
    if best_file.is_file():
        from safetensors.torch import load_file

        best = copy.deepcopy(unwrap_model(model))
        best.load_state_dict(load_file(str(best_file), device=str(device)))
        out["best_val_test_acc"] = _evaluate(best, dataset, cfg, info, device, amp, desc="test (best)").accuracy
    return out
