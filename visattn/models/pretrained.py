"""timm models whose pretrained weights ship in this repository's ``weights/`` folder (no download).

``timm.create_model('resnet18_cbam_quickstart', pretrained=True)`` builds the quickstart architecture and
``timm.create_model('resnet10w32_cifar10', pretrained=True)`` the CIFAR-10 study's baseline
(``resnet10w32_nonlocal_cifar10``: with non-local attention in stages 2-4); each loads its file from
``weights/`` through timm's own ``pretrained_cfg['file']`` mechanism. The folder sits next to the package in a source
checkout (``pip install -e .``); elsewhere, pass the file yourself:
``pretrained_cfg_overlay=dict(file='path/to/file.safetensors')``. ``weights/README.md`` has the model cards.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timm.models import FeatureListNet, build_model_with_cfg, generate_default_cfgs, load_pretrained, register_model
from timm.models.resnet import ResNet

from .inject import inject
from .stem import use_small_input_stem
from .variants import ARCHITECTURES, create_attention_resnet, resnet_cfg

__all__ = ["WEIGHTS_DIR", "QUICKSTART_ARGS", "CIFAR10_ARGS", "SHIPPED", "ShippedModel"]

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"

# configs/quickstart.yaml's model section, as constructor arguments.
QUICKSTART_ARGS: dict[str, Any] = dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_width=16,
                                       zero_init_last=False, num_classes=10)
# configs/cifar10_cpu.yaml's: a ResNet-10 at half width (the CIFAR-10 study's network).
CIFAR10_ARGS: dict[str, Any] = dict(layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), stem_width=32, num_classes=10)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class ShippedModel:
    """A registered timm model whose weights are a file in ``weights/``.

    Attributes:
        name: the timm model name.
        file: the weights file's name in ``weights/``.
        block: the attention block, or None for the plain ResNet.
        args: constructor arguments (depth, widths, classes).
        stem_stride: stride of the small-input stem the weights were trained with.
        cfg: extra pretrained-config fields (input size, normalisation, notes).
        stages: the stages (1-4) whose residual blocks hold ``block``, added by ``visattn.inject`` as in training;
            None: every residual block, built through timm's ``attn_layer``.
    """

    name: str
    file: str
    block: str | None
    args: dict[str, Any]
    stem_stride: int
    cfg: dict[str, Any] = field(default_factory=dict)
    stages: tuple[int, ...] | None = None


_CIFAR10_CFG = dict(num_classes=10, input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0, mean=CIFAR10_MEAN,
                    std=CIFAR10_STD, license="apache-2.0")

SHIPPED: dict[str, ShippedModel] = {m.name: m for m in [
    ShippedModel("resnet18_cbam_quickstart", "quickstart_resnet18_cbam_shapes.safetensors", "cbam", QUICKSTART_ARGS,
                 stem_stride=2, cfg=dict(num_classes=10, input_size=(3, 32, 32), pool_size=(2, 2), crop_pct=1.0,
                                         license="apache-2.0", tag="shapes",
                                         notes=("visattn quickstart: built-in shapes data, 96.3 % val",))),
    ShippedModel("resnet10w32_cifar10", "cifar10_resnet10w32_baseline.safetensors", None, CIFAR10_ARGS,
                 stem_stride=1, cfg=dict(_CIFAR10_CFG, tag="visattn_study",
                                         notes=("visattn CIFAR-10 CPU study, baseline",))),
    ShippedModel("resnet10w32_nonlocal_cifar10", "cifar10_resnet10w32_nonlocal.safetensors", "nonlocal",
                 CIFAR10_ARGS, stem_stride=1, stages=(2, 3, 4),
                 cfg=dict(_CIFAR10_CFG, tag="visattn_study",
                          notes=("visattn CIFAR-10 CPU study, non-local self-attention in stages 2-4",))),
]}

default_cfgs = generate_default_cfgs({
    f"{m.name}.{m.cfg.get('tag', 'visattn')}": resnet_cfg(
        file=str(WEIGHTS_DIR / m.file), **{k: v for k, v in m.cfg.items() if k not in ("tag", "notes")},
        notes=(*m.cfg.get("notes", ()), "see weights/README.md"))
    for m in SHIPPED.values()
})


def _build(spec: ShippedModel, pretrained: bool, kwargs: dict[str, Any]) -> ResNet | FeatureListNet:
    kwargs.pop("cache_dir", None)
    # The stem is part of the architecture (the weights have its conv): refuse other stems instead of stacking two.
    if not kwargs.pop("small_input", True) or kwargs.pop("small_input_stride", spec.stem_stride) != spec.stem_stride:
        raise ValueError(f"{spec.name} always has its small-input stem of stride {spec.stem_stride}; leave "
                         "small_input and small_input_stride unset")
    # features_only: build the classifier, load its weights, then wrap it as timm does, so the weights (which hold
    # the classifier) load first and the stem is the checkpoint's.
    features_only = kwargs.pop("features_only", False)
    feature_kwargs = {k: kwargs.pop(k) for k in ("out_indices", "feature_cls") if k in kwargs}
    args = {**spec.args, **kwargs}
    if spec.block is None or spec.stages is not None:
        model = build_model_with_cfg(ResNet, spec.name, pretrained=False, **{**ARCHITECTURES["resnet18"], **args})
    else:
        model = create_attention_resnet("resnet18", spec.block, variant=spec.name, **args)
    use_small_input_stem(model, stride=spec.stem_stride)  # before loading: the checkpoint has the small stem's conv
    if spec.stages is not None:
        inject(model, spec.block, stages=spec.stages)  # the file loaded next holds the injected keys
    if pretrained:
        file = Path(model.pretrained_cfg["file"])
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing (the weights/ folder ships with the source tree); pass "
                                    "pretrained_cfg_overlay=dict(file=...) pointing at a copy")
        load_pretrained(model, num_classes=model.num_classes, in_chans=kwargs.get("in_chans", 3))
    if features_only:
        features = FeatureListNet(model, out_indices=feature_kwargs.get("out_indices", (0, 1, 2, 3, 4)))
        features.pretrained_cfg = features.default_cfg = model.pretrained_cfg  # as timm's builder sets them
        return features
    return model


def _make_entrypoint(spec: ShippedModel) -> Callable[..., ResNet | FeatureListNet]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> ResNet | FeatureListNet:
        return _build(spec, pretrained, kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = spec.name
    entrypoint.__module__ = __name__
    if spec.block is None:
        block = "no attention block"
    elif spec.stages is None:
        block = f"visattn's {spec.block!r} block in every residual block"
    else:
        block = f"visattn's {spec.block!r} block in the residual blocks of stages {', '.join(map(str, spec.stages))}"
    entrypoint.__doc__ = (f"{spec.name}: a ResNet with one basic block per stage, channels {spec.args['channels']}, "
                          f"{block}, small-input stem of stride {spec.stem_stride}; weights in weights/{spec.file}.")
    return entrypoint


for _spec in SHIPPED.values():
    _fn = _make_entrypoint(_spec)
    setattr(sys.modules[__name__], _spec.name, _fn)  # timm's registry records the defining module's attribute
    register_model(_fn)
