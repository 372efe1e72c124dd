"""One epoch of training and one pass of evaluation: plain functions, readable top to bottom."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..config import OptimConfig
from .distributed import DistInfo, all_reduce_sum
from .optim import lr_at

__all__ = ["EpochStats", "Schedule", "TrainingDiverged", "TrainingInterrupted", "train_one_epoch", "evaluate"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run folder keeps its last checkpoint (the message says which)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGINT) during training; the message says what the run folder holds and how to resume."""


def _bar_disabled(progress: bool, info: DistInfo) -> bool | None:
    # None lets tqdm decide: a bar on a terminal, nothing in a CI log or a file.
    return None if progress and info.is_main else True


def _check_corrupt(skipped: int, policy: str) -> None:
    if skipped and policy == "fail":
        raise RuntimeError(f"{skipped} unreadable image(s) in a batch and data.on_corrupt='fail'; "
                           f"set data.on_corrupt=skip to skip them with a summary warning instead")


def _on_any_rank(info: DistInfo, device: torch.device, *flags: bool) -> list[bool]:
    """Each flag OR-ed over all ranks (the flags themselves for a single process).

    Every decision to skip a batch or to stop must be taken by all ranks together: a rank that skips or raises alone
    leaves the others waiting forever in the next gradient all-reduce.
    """
    if not info.enabled:
        return list(flags)
    values = torch.tensor([float(f) for f in flags], device=device)
    return [v > 0 for v in all_reduce_sum(values, info).tolist()]


@dataclass
class EpochStats:
    """Sums over an epoch, reduced over all ranks."""

    loss: float
    accuracy: float
    images: int
    seconds: float
    skipped: int = 0  # unreadable images dropped by the loader

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


@dataclass(frozen=True)
class Schedule:
    """Where an epoch sits in the learning-rate schedule."""

    total_steps: int
    warmup_steps: int
    optim: OptimConfig


def _autocast(device: torch.device, amp: str) -> torch.autocast | nullcontext:
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _to_device(inputs: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """The model's inputs (the images, then a side vector where the data has one) and the labels, on ``device``."""
    images, *rest = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return (images, *(t.to(device, non_blocking=True) for t in rest)), labels.to(device, non_blocking=True)


def _reduce(sums: list[float], info: DistInfo, seconds: float, device: torch.device) -> EpochStats:
    # On the training device: NCCL reduces only CUDA tensors.
    values = torch.tensor(sums, dtype=torch.float64, device=device if info.enabled else "cpu")
    loss_sum, correct, count, skipped = all_reduce_sum(values, info).tolist()
    return EpochStats(loss=loss_sum / max(count, 1), accuracy=correct / max(count, 1), images=int(count),
                      seconds=seconds, skipped=int(skipped))


def train_one_epoch(
        model: nn.Module,
        loader: Iterable,
        optimizer: torch.optim.Optimizer,
        *,
        epoch: int,
        step: int,
        schedule: Schedule,
        device: torch.device,
        amp: str = "none",
        channels_last: bool = False,
        scaler: torch.amp.GradScaler | None = None,
        ema: nn.Module | None = None,
        info: DistInfo | None = None,
        progress: bool = True,
        on_corrupt: str = "skip",
) -> tuple[EpochStats, int]:
    """Train for one pass over ``loader``; returns the epoch's stats and the global step after it.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (nothing is written for this epoch).
    """
    info = info or DistInfo()
    model.train()
    cfg = schedule.optim
    count = skipped = 0.0
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss x images, correct predictions
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1} train", leave=False, disable=_bar_disabled(progress, info),
               dynamic_ncols=True)
    for images, labels, n_skipped in bar:
        skipped += n_skipped
        stop, empty = _on_any_rank(info, device, bool(n_skipped) and on_corrupt == "fail", len(labels) == 0)
        if stop:
            _check_corrupt(max(int(n_skipped), 1), on_corrupt)
        if empty:
            continue
        inputs, labels = _to_device(images, labels, device, channels_last)
        lr = lr_at(step, schedule.total_steps, schedule.warmup_steps, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        with _autocast(device, amp):
            logits = model(*inputs)
            loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
        (diverged,) = _on_any_rank(info, device, not bool(torch.isfinite(loss)))
        if diverged:
            where = f"{loss.item()}" + (" (or not finite on another rank)" if info.enabled else "")
            raise TrainingDiverged(f"loss is {where} at epoch {epoch + 1}, step {step}; lower optim.lr or set "
                                   f"optim.grad_clip.")

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if ema is not None:
            ema.update(model, step=step)
        step += 1

        # Sums stay on the device: reading them every step would add two host syncs per step on a GPU.
        n = labels.numel()
        sums += torch.stack((loss.detach().double() * n, (logits.argmax(1) == labels).sum().double()))
        count += n
        if not bar.disable and step % 10 == 0:
            loss_sum, correct = sums.tolist()
            bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{correct / count:.3f}", lr=f"{lr:.3g}",
                            img_s=f"{count / (time.perf_counter() - start):.0f}")
    loss_sum, correct = sums.tolist()
    return _reduce([loss_sum, correct, count, skipped], info, time.perf_counter() - start, device), step


@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader: Iterable,
        *,
        device: torch.device,
        amp: str = "none",
        channels_last: bool = False,
        info: DistInfo | None = None,
        progress: bool = True,
        desc: str = "eval",
        on_corrupt: str = "skip",
) -> EpochStats:
    """Loss and top-1 accuracy of ``model`` on ``loader``, reduced over all ranks."""
    info = info or DistInfo()
    model.eval()
    loss_sum = correct = count = skipped = 0.0
    start = time.perf_counter()
    for images, labels, n_skipped in tqdm(loader, desc=desc, leave=False, disable=_bar_disabled(progress, info),
                                          dynamic_ncols=True):
        skipped += n_skipped
        # No collective inside this loop: ranks hold different numbers of batches (no sampler padding), so each skips
        # on its own and the 'fail' policy is applied after the one reduction below, on every rank alike.
        if len(labels) == 0:
            continue
        inputs, labels = _to_device(images, labels, device, channels_last)
        with _autocast(device, amp):
            logits = model(*inputs)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        count += labels.numel()
    stats = _reduce([loss_sum, correct, count, skipped], info, time.perf_counter() - start, device)
    _check_corrupt(stats.skipped, on_corrupt)
    if stats.images == 0:  # an accuracy of 0 % here would read as a result; every rank sees the same reduced count
        raise RuntimeError(f"{desc}: no image was evaluated (" + (
            f"all {stats.skipped} were unreadable" if stats.skipped else "the validation set is empty") + ")")
    return stats
