"""Build the model a config asks for: any timm name, optional CIFAR stem, local weights, injected attention."""

from __future__ import annotations

import warnings

import timm
from torch import nn

from ..config import ModelConfig
from ..models import InjectionReport, load_weights, read_state_dict, use_small_input_stem
from ..models.fusion import FusionClassifier
from ..models.inject import inject

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
    # Weights of a run that injected blocks carry keys the plain model lacks: inject first so that they load too.
    # Otherwise load first, so that inject checks its identity property on the trained model.
    own_keys = set(model.state_dict())
    inject_first = cfg.inject is not None and state is not None and any(k not in own_keys for k in state)
    report = None
    if inject_first:
        model, report = _inject(model, cfg)
    if state is not None:
        _load(model, state, cfg.pretrained)
    if cfg.inject is not None and not inject_first:
        model, report = _inject(model, cfg)
    return model, report


def _inject(model: nn.Module, cfg: ModelConfig) -> tuple[nn.Module, InjectionReport]:
    spec = cfg.inject
    # A run prints the whole report itself, and its checkpoints and load_trained rebuild the injected model.
    return inject(model, spec.block, stages=spec.stages, blocks=spec.blocks, init=spec.init, **spec.kwargs)


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
