"""visattn: attention blocks for timm image classifiers, and identity-safe injection into trained ResNets.

Example:
    >>> import timm, visattn
    >>> model = timm.create_model('resnet18_cbam', num_classes=10)           # registered variant
    >>> model, report = visattn.inject(timm.create_model('resnet50'), 'se')  # into an existing model
"""

from importlib.metadata import PackageNotFoundError, version

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

try:
    __version__ = version("visattn")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

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
]
