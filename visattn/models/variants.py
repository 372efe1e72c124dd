"""timm model registrations ``{arch}_{block}``: ResNet-18/34/50 with a visattn block in every residual block.

Importing visattn registers ``resnet18_se`` ... ``resnet50_nonlocal`` through timm's public ``register_model``, so
``timm.create_model('resnet50_cbam', num_classes=10)`` and ``timm.list_models('*cbam*')`` just work. A block
registered later with ``@visattn.register_block('name')`` gets its three variants too.

Extra keyword arguments understood by these entry points (everything else goes to timm's ``ResNet``):
- ``small_input=True``: CIFAR stem (3x3 stride-1 conv, no max-pool), see ``use_small_input_stem``.
- ``attn_kwargs={...}``: keyword arguments for the attention block, e.g. ``dict(rd_ratio=1/8)``.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, load_pretrained, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ..blocks import get_block, list_blocks
from ..blocks.registry import on_register
from .stem import use_small_input_stem

__all__ = ["ARCHITECTURES", "create_attention_resnet", "variant_names", "resnet_cfg"]

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "resnet18": dict(block=BasicBlock, layers=(2, 2, 2, 2)),
    "resnet34": dict(block=BasicBlock, layers=(3, 4, 6, 3)),
    "resnet50": dict(block=Bottleneck, layers=(3, 4, 6, 3)),
}

default_cfgs: dict[str, Any] = {}  # read by timm's register_model from this module


def resnet_cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        **kwargs,
    }


def create_attention_resnet(
        arch: str,
        block: str,
        *,
        pretrained: bool = False,
        small_input: bool = False,
        attn_kwargs: dict[str, Any] | None = None,
        variant: str | None = None,
        **kwargs: Any,
) -> ResNet:
    """Build a timm ResNet with ``block`` as ``attn_layer`` in every residual block.

    Args:
        arch: ``'resnet18'``, ``'resnet34'`` or ``'resnet50'``.
        block: a registered block name.
        pretrained: load the weights named by the variant's pretrained config.
        small_input: use the CIFAR stem (3x3 stride-1 conv, no max-pool).
        attn_kwargs: keyword arguments for every attention block.
        variant: name used to look up the pretrained config; default ``f'{arch}_{block}'``.
        **kwargs: passed to timm's ``ResNet`` (``num_classes``, ``drop_path_rate``, ...).

    Returns:
        The model.

    Example:
        >>> model = create_attention_resnet('resnet18', 'cbam', num_classes=10, small_input=True)
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {list(ARCHITECTURES)}, got {arch!r}")
    if attn_kwargs is not None and not isinstance(attn_kwargs, dict):
        raise TypeError(f"attn_kwargs must be a dict of block keyword arguments, got {attn_kwargs!r}")
    attn_layer = partial(get_block(block), **(attn_kwargs or {}))
    if "block_args" in kwargs:
        raise ValueError("block_args is set by this variant; pass block options through attn_kwargs=dict(...)")
    model = build_model_with_cfg(
        ResNet,
        variant or f"{arch}_{block}",
        pretrained=False,  # weights are loaded below, after the stem matches the checkpoint
        **{**ARCHITECTURES[arch], **kwargs},  # kwargs may override depth/width, e.g. layers=(1, 1, 1, 1)
        block_args=dict(attn_layer=attn_layer),
    )
    if small_input:
        use_small_input_stem(model)
    if pretrained:
        if not model.pretrained_cfg.get("file") and not model.pretrained_cfg.get("url"):
            raise ValueError(f"{variant or f'{arch}_{block}'} has no pretrained weights; use pretrained=False")
        load_pretrained(model, num_classes=model.num_classes, in_chans=kwargs.get("in_chans", 3))
    return model


def variant_names(block: str | None = None) -> list[str]:
    """The timm model names registered by visattn (for one block, or all)."""
    blocks = [block] if block is not None else list_blocks()
    return [f"{arch}_{b}" for b in blocks for arch in ARCHITECTURES]


def _make_entrypoint(arch: str, block: str) -> Callable[..., ResNet]:
    name = f"{arch}_{block}"

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> ResNet:
        # Drop timm's factory-only arguments that build_model_with_cfg resolves from the registry itself.
        kwargs.pop("cache_dir", None)
        return create_attention_resnet(arch, block, pretrained=pretrained, variant=name, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{arch} with visattn's {block!r} attention block in every residual block."
    return entrypoint


def _register_variants(block: str) -> None:
    module = sys.modules[__name__]
    for arch in ARCHITECTURES:
        name = f"{arch}_{block}"
        if timm.is_model(name) and getattr(module, name, None) is not None:
            continue  # already ours: entry points look the block class up at call time
        if timm.is_model(name):  # timm's own, e.g. resnet50_gn for a block named 'gn'
            warnings.warn(f"timm already has a model named {name!r}, so visattn does not register its {block!r} "
                          f"variant under that name; use visattn.create_attention_resnet({arch!r}, {block!r})",
                          stacklevel=3)
            continue
        default_cfgs.update(generate_default_cfgs({name: resnet_cfg()}))
        fn = _make_entrypoint(arch, block)
        setattr(module, name, fn)
        register_model(fn)


for _name in list_blocks():
    _register_variants(_name)
on_register(_register_variants)
