"""Attention blocks following timm's ``attn_layer`` contract: ``Block(channels, **kwargs)``, shape-preserving.

Importing this package registers the built-in blocks, in this order: se, cam, spatial, cbam, nonlocal; then the
blocks of two inputs: cross_attention, gated_fusion.
"""

from .registry import (  # noqa: I001 (registry first)
    aliases_of,
    block_inputs,
    create_block,
    get_block,
    is_block,
    list_blocks,
    register_block,
)
from .squeeze_excite import SqueezeExcite
from .channel import ChannelAttention
from .spatial import SpatialAttention
from .cbam import CBAM
from .self_attention import PAIRWISE_FUNCTIONS, PixelSelfAttention
from .attention_core import POSITIONS, SCORES, AttentionCore
from .positions import RelativePositionBias2d
from .cross_attention import CrossAttention2d
from .gated_fusion import GatedFusion

__all__ = [
    "register_block",
    "list_blocks",
    "get_block",
    "create_block",
    "is_block",
    "block_inputs",
    "aliases_of",
    "SqueezeExcite",
    "ChannelAttention",
    "SpatialAttention",
    "CBAM",
    "PixelSelfAttention",
    "CrossAttention2d",
    "GatedFusion",
    "PAIRWISE_FUNCTIONS",
    "SCORES",
    "POSITIONS",
    "AttentionCore",
    "RelativePositionBias2d",
]
