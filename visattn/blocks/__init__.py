"""Attention blocks following timm's ``attn_layer`` contract: ``Block(channels, **kwargs)``, shape-preserving.

Importing this package registers the built-in blocks, in this order: se, cam, spatial, cbam, nonlocal.
"""

from .registry import create_block, get_block, is_block, list_blocks, register_block  # noqa: I001 (registry first)
from .squeeze_excite import SqueezeExcite
from .channel import ChannelAttention
from .spatial import SpatialAttention
from .cbam import CBAM
from .self_attention import PAIRWISE_FUNCTIONS, PixelSelfAttention

__all__ = [
    "register_block",
    "list_blocks",
    "get_block",
    "create_block",
    "is_block",
    "SqueezeExcite",
    "ChannelAttention",
    "SpatialAttention",
    "CBAM",
    "PixelSelfAttention",
    "PAIRWISE_FUNCTIONS",
]
