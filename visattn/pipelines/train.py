"""``train`` with its epilogue: the overlays of ``eval.overlays`` validation images, drawn with the best weights."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..training.run import RunResult
from ..training.run import train as train_only
from .samples import validation_samples
from .trained import load_trained

__all__ = ["train"]


def train(cfg: TrainConfig, *, config_path: str | Path | None = None, resume: str | Path | bool = False,
          run_dir: str | Path | None = None, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> RunResult:
    """Run the training described by ``cfg`` (:func:`visattn.training.run.train`, same arguments), then, with
    ``cfg.eval.overlays > 0``, write CAM and block-map overlays of that many validation images into
    ``<run>/overlays`` (on rank 0 of a distributed run).

    Example:
        >>> result = train(load_train_config("configs/quickstart.yaml"))
    """
    result = train_only(cfg, config_path=config_path, resume=resume, run_dir=run_dir, on_epoch=on_epoch)
    best = result.run_dir / "best.safetensors"
    if cfg.eval.overlays > 0 and best.is_file() and int(os.environ.get("RANK", "0")) == 0:
        from .overlays import overlay_files  # PIL drawing and fonts: loaded only by runs that export

        trained = load_trained(result.run_dir)  # the best weights, rebuilt exactly as `visattn overlay` would
        manifest = overlay_files(trained, result.run_dir / "overlays",
                                 images=validation_samples(cfg.data, cfg.eval.overlays),
                                 methods=cfg.eval.overlay_methods, target_layers=cfg.eval.overlay_layers)
        print(f"overlays of {cfg.eval.overlays} validation images: {manifest.parent / 'index.html'}", flush=True)
    return result
