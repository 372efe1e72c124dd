"""A study: one training config, a few variants of it, each trained with several seeds.

.. code-block:: yaml

    train: ../cifar10_cpu.yaml          # the training config every run starts from (relative to this file)
    seeds: [0, 1, 2]                    # loop.seed of each run
    baseline: baseline                  # the variant the others are compared with
    overrides: {loop.amp: none}         # overrides of the training config for every run
    variants:                           # name -> overrides of the training config (nested or dotted keys)
      baseline: {}
      se: {model.name: resnet18_se}
    runs_dir: runs/study/cifar10_cpu    # <runs_dir>/<variant>-seed<seed>/ : one training run folder each
    results_dir: results/cifar10_cpu    # summary.json, summary.md, the plots, and records/<run>.json

The grid is every variant x every seed. Each run's config is the training config, then the study's ``overrides``,
then the variant's, then the command line's, then ``loop.seed``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig, load_train_config
from ..config.loader import ConfigError, config_to_dict, format_override, load_config

__all__ = ["RunSpec", "StudyConfig", "config_hash", "load_study_config", "plan_runs"]


@dataclass
class StudyConfig:
    """The grid of a study and where its files go."""

    train: str = ""  # training config file, relative to the study file
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)  # training-config overrides shared by every run
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    baseline: str = "baseline"
    runs_dir: str = "runs/study"
    results_dir: str | None = None  # default: runs_dir
    title: str | None = None  # heading of summary.md and the plots; default: the study file's stem

    def __post_init__(self) -> None:
        if not self.train:
            raise ValueError("train must name the training config every run starts from")
        if not self.variants:
            raise ValueError("variants must name at least one variant, e.g. {baseline: {}, se: {model.name: ...}}")
        if self.baseline not in self.variants:
            raise ValueError(f"baseline {self.baseline!r} is not one of the variants {list(self.variants)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must list distinct seeds, got {self.seeds}")
        for name in self.variants:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"variant name {name!r} must be a plain folder name")


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid: its name, its resolved training config and where it goes."""

    variant: str
    seed: int
    config: TrainConfig
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.variant}-seed{self.seed}"


def load_study_config(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read and check a study file; ``overrides`` set study keys (``seeds=[0,1]``), not training keys.

    Raises:
        ConfigError: unknown keys (with the closest valid one), wrong types, or a missing training config.
    """
    study = load_config(StudyConfig, path, overrides)
    train = Path(path).parent / study.train
    if not train.is_file():
        raise ConfigError(f"train: {study.train!r} names no file (looked for {train})")
    study.train = str(train)
    if study.title is None:
        study.title = Path(path).stem
    return study


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``{model: {name: x}, 'optim.lr': 0.1}`` -> ``['model.name=x', 'optim.lr=0.1']``; empty mappings stay whole."""
    out = []
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += _flatten(value, dotted + ".")
        else:
            out.append(format_override(dotted, value))
    return out


def plan_runs(study: StudyConfig, train_overrides: Sequence[str] = (), *, variants: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None) -> list[RunSpec]:
    """Every run of the grid, seed by seed (so that early results already pair up), variants in file order.

    Args:
        study: the study.
        train_overrides: ``key=value`` overrides for every run's training config (after the variant's).
        variants: only these variants (default: all).
        seeds: only these seeds (default: the study's).

    Raises:
        ConfigError: the study's or a variant's overrides do not make a valid training config (the message names
            which), or ``variants`` names an unknown one.
    """
    chosen = list(variants) if variants is not None else list(study.variants)
    unknown = [v for v in chosen if v not in study.variants]
    if unknown:
        raise ConfigError(f"unknown variant(s) {unknown}; the study has {list(study.variants)}")
    try:
        load_train_config(study.train, _flatten(study.overrides))
    except ConfigError as err:
        raise ConfigError(f"overrides: {err}") from None
    configs = {}
    for name in chosen:
        try:
            configs[name] = [*_flatten(study.overrides), *_flatten(study.variants[name])]
            load_train_config(study.train, [*configs[name], *train_overrides])  # fail before any run starts
        except ConfigError as err:
            raise ConfigError(f"variant {name!r}: {err}") from None
    runs = []
    for seed in seeds if seeds is not None else study.seeds:
        for name in chosen:
            cfg = load_train_config(study.train, [*configs[name], *train_overrides, f"loop.seed={seed}",
                                                  "loop.progress=false"])
            runs.append(RunSpec(name, seed, cfg, Path(study.runs_dir) / f"{name}-seed{seed}"))
    return runs


# Keys that say where files are or how a run talks, not what it computes.
_NOT_HASHED = {("data", "root"), ("data", "val_root"), ("data", "num_workers"), ("loop", "progress"),
               ("loop", "tensorboard"), ("checkpoint", "output_dir"), ("checkpoint", "run_name")}


def config_hash(cfg: TrainConfig) -> str:
    """A short hash of what a config computes (paths, worker counts and logging left out)."""
    data = config_to_dict(cfg)
    for section, key in _NOT_HASHED:
        data.get(section, {}).pop(key, None)
    # Hashed under the section's first name, without the option added with the rename, so that the records of runs
    # made before model.inject became model.attn still match their configs.
    model = data.get("model", {})
    attn = model.pop("attn", None)
    if isinstance(attn, dict) and attn.get("replace") is False:
        attn.pop("replace")
    model["inject"] = attn
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
