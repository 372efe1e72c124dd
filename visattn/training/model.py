"""Build the model a config asks for: any timm name, optional CIFAR stem, local weights, injected attention."""

from __future__ import annotations

import warnings

import timm
from torch import nn

from ..config import AttnConfig, ModelConfig, TrainConfig, config_from_dict
from ..models import InjectionReport, load_weights, read_state_dict, use_small_input_stem
from ..models.fusion import FusionClassifier
from ..models.inject import inject
from ..models.weights import read_metadata

__all__ = ["build_model"]


def build_model(cfg: ModelConfig, num_classes: int, side_features: int | None = None
                ) -> tuple[nn.Module, InjectionReport | None]:
    """Create ``cfg.name`` with ``num_classes`` outputs, then stem, weights and injection, in that order; with
    ``cfg.fusion``, that model (without its classifier) becomes the image backbone of a
    :class:`~visattn.models.fusion.FusionClassifier` reading ``side_features``-wide side vectors.

    Weights load before injection, so ``inject`` checks its identity property on the trained model, unless they
    come from a run that injected the blocks itself (they then carry the blocks' keys and load after). A checkpoint
    whose classifier has another number of classes loads without its classifier, which then stays freshly
    initialised (the usual fine-tuning start).

    Raises:
        ValueError: an unknown model name (from timm, with its close matches), or weights that do not fit.
    """
    if cfg.fusion is None:
        return _image_model(cfg, num_classes)
    if side_features is None:
        raise ValueError("model.fusion needs the side vector's width (data.side)")
    backbone, report = (None, None) if cfg.fusion.inputs == "side" else _image_model(cfg, 0)
    fusion = cfg.fusion
    model = FusionClassifier(backbone, side_features, num_classes, inputs=fusion.inputs, block=fusion.block,
                             out_channels=fusion.out_channels, side_hidden=fusion.side_hidden)
    return model, report


def _image_model(cfg: ModelConfig, num_classes: int) -> tuple[nn.Module, InjectionReport | None]:
    if not timm.is_model(cfg.name):
        close = timm.list_models(f"*{cfg.name.split('_')[0]}*")[:8]
        raise ValueError(f"model.name={cfg.name!r} is not a timm model; similar: {close}")
    kwargs = dict(cfg.kwargs)
    if cfg.drop_path_rate > 0:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    try:
        model = timm.create_model(cfg.name, pretrained=False, num_classes=num_classes, **kwargs)
    except (TypeError, IndexError, AssertionError) as err:  # what timm's constructors raise for arguments they reject
        raise ValueError(f"model.kwargs {kwargs} do not fit timm's {cfg.name!r}: {type(err).__name__}: {err}") from None
    if cfg.small_input:
        use_small_input_stem(model, stride=cfg.small_input_stride)

    state = read_state_dict(cfg.pretrained) if cfg.pretrained else None
    # Weights saved from a model with attention say so in their metadata (the config they were trained with): that
    # attention goes in first, so that its keys load too. Otherwise the weights load first, so that inject checks its
    # identity property on the trained model.
    recorded = recorded_attn(cfg.pretrained) if cfg.pretrained else None
    if recorded is not None and recorded != cfg.attn:
        raise ValueError(f"{cfg.pretrained} holds a model with attention {_describe(recorded)}, but model.attn is "
                         f"{_describe(cfg.attn)}; set model.attn to what the weights were saved with (their keys "
                         f"must fit), or start from weights saved without attention")
    report = None
    if recorded is not None:
        model, report = _inject(model, cfg.attn)
    if state is not None:
        _load(model, state, cfg.pretrained)
    if cfg.attn is not None and recorded is None:
        model, report = _inject(model, cfg.attn)
    return model, report


def _describe(spec: AttnConfig | None) -> str:
    if spec is None:
        return "none"
    return f"{{block: {spec.block}, stages: {spec.stages}, blocks: {spec.blocks}, replace: {spec.replace}}}"


def recorded_attn(path: str) -> AttnConfig | None:
    """The ``model.attn`` a visattn weights file was saved with (from the config in its metadata), or None: no
    attention, or a file without visattn metadata (a plain state_dict is taken as saved without attention)."""
    config = read_metadata(path).get("config")
    model = config.get("model") if isinstance(config, dict) else None
    spec = (model.get("attn") or model.get("inject")) if isinstance(model, dict) else None
    if spec is None:
        return None
    return config_from_dict(TrainConfig, {"model": {"attn": spec}}).model.attn


def _inject(model: nn.Module, spec: AttnConfig) -> tuple[nn.Module, InjectionReport]:
    # A run prints the whole report itself, and its checkpoints and load_trained rebuild the injected model.
    return inject(model, spec.block, stages=spec.stages, blocks=spec.blocks, replace=spec.replace, init=spec.init,
                  **spec.kwargs)


def _load(model: nn.Module, state: dict, source: str) -> None:
    own = model.state_dict()
    head = model.pretrained_cfg.get("classifier", "fc") if hasattr(model, "pretrained_cfg") else "fc"
    if not any(k.startswith(f"{head}.") for k in own):  # built without a classifier (a fusion backbone)
        state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if mismatched and all(k.startswith(f"{head}.") for k in mismatched):
        warnings.warn(f"{source}: classifier '{head}' has another class count; it is re-initialised",
                      UserWarning, stacklevel=3)
        state = {k: v for k, v in state.items() if k not in mismatched}
        load_weights(model, state, allow_missing=(f"{head}.",))
    elif mismatched:
        raise ValueError(f"{source} does not fit {type(model).__name__}: shapes differ for {mismatched[:5]}")
    else:
        load_weights(model, state)
