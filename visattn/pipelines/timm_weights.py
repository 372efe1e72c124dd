"""timm's own pretrained models, offline: weights from a given file or from the local caches, ImageNet class names.

visattn never downloads. ``load_timm_pretrained('resnet50')`` looks where timm would have saved the weights (the
Hugging Face hub cache for ``hf_hub_id`` weights, torch's hub cache for URL weights) and loads them from there;
``file=`` takes any copy. Class names come from timm's ImageNet metadata when the classifier's width is that of an
ImageNet subset (1k, 12k, 21k/22k), so overlays say "tench" rather than "class_0".
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import timm
import torch

from ..config import TrainConfig
from .trained import TrainedModel, class_names, timm_eval_config

__all__ = ["find_cached_weights", "load_timm_pretrained"]


def find_cached_weights(model_name: str) -> tuple[Path | None, list[str]]:
    """A local copy of timm's pretrained weights for ``model_name`` (None if there is none), and where it looked."""
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        return None, [f"timm's pretrained configs (it has none for {model_name!r})"]
    looked: list[str] = []
    if cfg.file:
        looked.append(str(cfg.file))
        if Path(cfg.file).is_file():
            return Path(cfg.file), looked
    if cfg.hf_hub_id:
        for filename in dict.fromkeys([cfg.hf_hub_filename or "model.safetensors", "model.safetensors",
                                       "pytorch_model.bin"]):
            looked.append(f"{constants.HF_HUB_CACHE} ({cfg.hf_hub_id}, {filename})")
            hit = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(hit, str):
                return Path(hit), looked
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        looked.append(str(path))
        if path.is_file():
            return path, looked
    return None, looked


def load_timm_pretrained(model_name: str, *, file: str | Path | None = None, overrides: list[str] | None = None,
                         device: str | torch.device = "cpu") -> TrainedModel:
    """timm's pretrained ``model_name`` with timm's eval preprocessing, from ``file`` or the local caches.

    Raises:
        FileNotFoundError: no ``file`` and no cached copy; the message lists every place it looked.
        ValueError: an unknown model name, or a file that does not fit the model.
    """
    if not timm.is_model(model_name):
        raise ValueError(f"model={model_name!r} is not a timm model name; e.g. {timm.list_models('resnet*')[:4]}")
    if file is not None:
        path = Path(file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--pretrained file {str(path)!r} does not exist")
    else:
        path, looked = find_cached_weights(model_name)
        if path is None:
            raise FileNotFoundError(
                f"no local copy of timm's pretrained weights for {model_name!r}; visattn never downloads, and it "
                f"looked in: {'; '.join(looked)}. Fetch them once where there is internet "
                f"(timm.create_model({model_name!r}, pretrained=True)), or pass a copy: --pretrained-path FILE")
    cfg: TrainConfig = timm_eval_config(model_name, overrides or [])
    try:
        model = timm.create_model(model_name, pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(path), hf_hub_id=None, url=None))
    except RuntimeError as err:  # load_state_dict: the file holds another architecture's weights
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"{path} does not fit timm's {model_name!r}: {first}") from None
    return TrainedModel(model.to(device).eval(), cfg, class_names(model.num_classes), path)
