"""visattn: attention blocks for timm image classifiers, and identity-safe injection into trained ResNets.

Example:
    >>> import timm, visattn
    >>> model = timm.create_model('resnet18_cbam', num_classes=10)           # registered variant
    >>> model, report = visattn.inject(timm.create_model('resnet50'), 'se')  # into an existing model
"""

from .blocks import (
    CBAM,
    ChannelAttention,
    CrossAttention2d,
    GatedFusion,
    PixelSelfAttention,
    SpatialAttention,
    SqueezeExcite,
    create_block,
    get_block,
    list_blocks,
    register_block,
)
from .models import (
    InjectionReport,
    create_attention_resnet,
    inject,
    inject_cross,
    load_weights,
    use_small_input_stem,
)
from .version import __version__

# Entry points of the upper layers, imported on first use so that `import visattn` stays light.
_LAZY = {
    "train": ("visattn.pipelines.train", "train"),
    "load_train_config": ("visattn.config", "load_train_config"),
    "load_trained": ("visattn.pipelines.trained", "load_trained"),
    "overlay_files": ("visattn.pipelines.overlays", "overlay_files"),
    "evaluate_cams": ("visattn.pipelines.faithfulness", "evaluate_cams"),
    "run_study": ("visattn.study", "run_study"),
    "load_study_config": ("visattn.study", "load_study_config"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'visattn' has no attribute {name!r}")



__all__ = [
    "__version__",
    "list_blocks",
    "get_block",
    "create_block",
    "register_block",
    "SqueezeExcite",
    "ChannelAttention",
    "SpatialAttention",
    "CBAM",
    "PixelSelfAttention",
    "CrossAttention2d",
    "GatedFusion",
    "inject",
    "inject_cross",
    "InjectionReport",
    "load_weights",
    "create_attention_resnet",
    "use_small_input_stem",
    *_LAZY,
]
