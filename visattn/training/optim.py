"""Optimiser with weight decay only where it belongs, and a learning-rate schedule that is a pure function of step."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig

__all__ = ["param_groups", "build_optimizer", "lr_at"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Two groups: weights with decay, and 1-D parameters (norm scales, biases, gate blends) without.

    Decaying a BatchNorm scale or a bias shrinks it towards a value with no special meaning, and decaying
    visattn's identity blend pulls an injected block back towards doing nothing; timm and most recipes skip them.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov by default) or AdamW over ``param_groups``."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_at(step: int, total_steps: int, warmup_steps: int, cfg: OptimConfig) -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warm-up, then the configured decay.

    Being a function of the step alone, the schedule needs no state of its own to resume exactly.
    """
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "onecycle":  # linear anneal from the peak to zero (Smith & Topin 2017, arXiv 1708.07120)
        return cfg.lr * (1.0 - progress)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
