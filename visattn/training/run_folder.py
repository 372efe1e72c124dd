"""Where a run lives: the folder a new run gets (never an old one's), the one a bare ``--resume`` continues, and the
run name and git hash a run folder records."""

from __future__ import annotations

import glob
import re
import subprocess
from pathlib import Path

import yaml

from ..config import TrainConfig
from ..config.loader import read_yaml

__all__ = ["git_hash", "run_name", "resolve_run_dir", "recorded_run_name"]


def git_hash() -> str | None:
    """The short hash of the source checkout visattn runs from, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_name(cfg: TrainConfig, config_path: str | Path | None) -> str:
    """``checkpoint.run_name``, else the config file's stem, else ``run``."""
    return cfg.checkpoint.run_name or (Path(config_path).stem if config_path else "run")


def resolve_run_dir(cfg: TrainConfig, config_path: str | Path | None, resume: bool) -> Path:
    """The folder of a new run (``name``, else the first free ``name-N``), or with ``resume`` the folder of this
    config's latest run: the one whose ``last.safetensors`` was written last."""
    name = run_name(cfg, config_path)
    base = Path(cfg.checkpoint.output_dir) / name
    if resume:
        # Numbered folders count only when their config.yaml says they are this run's (name-50 may be another
        # config's run named "name-50").
        numbered = re.compile(re.escape(base.name) + r"-\d+")
        # The base folder too may be another config's numbered run: exp.yaml's second run "exp-1", when exp-1.yaml
        # resumes. Only that is refused; a folder last resumed under another config's name is still this one's.
        recorded = recorded_run_name(base)
        taken = recorded is not None and recorded != name and re.fullmatch(
            re.escape(Path(recorded).name) + r"-\d+", base.name) is not None
        own_base = [] if taken else [base]
        runs = [*own_base, *(p for p in base.parent.glob(f"{glob.escape(base.name)}-*")
                             if numbered.fullmatch(p.name) and recorded_run_name(p) == name)]
        saved = [p for p in runs if (p / "last.safetensors").is_file()]
        if saved:
            return max(saved, key=lambda p: (p / "last.safetensors").stat().st_mtime_ns)
        if not own_base:
            raise FileNotFoundError(f"no run {name!r} to resume: {base} holds run {recorded!r}; "
                                    f"pass --resume PATH to continue that one")
        return base
    if not base.exists():
        return base
    for i in range(1, 10_000):  # never write over an earlier run
        candidate = base.with_name(f"{base.name}-{i}")
        if not candidate.exists():
            return candidate
    raise RuntimeError(f"too many runs named {name!r} in {cfg.checkpoint.output_dir}")


def recorded_run_name(run_dir: Path) -> str | None:
    """The run name a run folder's config.yaml records (``_meta.run_name``), if any."""
    try:
        meta = (read_yaml((run_dir / "config.yaml").read_text()) or {}).get("_meta") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return meta.get("run_name") if isinstance(meta, dict) else None
