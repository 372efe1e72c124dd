"""A two-input classifier: a timm image backbone and a side vector, fused by a two-input block.

``FusionClassifier(backbone, side_features, num_classes)`` pools the backbone's last feature map to a vector, fuses it
with the side vector through a registered two-input block (:class:`~visattn.GatedFusion` by default), and classifies
the result with one linear layer. ``inputs='image'`` and ``inputs='side'`` build the two single-input baselines from
the same parts (the image path alone; a one-hidden-layer MLP on the side vector alone), so that a comparison changes
one thing.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..blocks.registry import block_inputs, create_block

__all__ = ["FusionClassifier"]


class FusionClassifier(nn.Module):
    """``head(fuse(backbone(image), side))``, or one of its single-input baselines.

    Args:
        backbone: a timm model built with ``num_classes=0`` (it returns pooled features), or None for
            ``inputs='side'``.
        side_features: the side vector's width.
        num_classes: classifier outputs.
        inputs: ``'both'``, ``'image'`` or ``'side'``.
        block: the registered two-input block that fuses (``'gated_fusion'``).
        out_channels: the fused width; default the backbone's feature width.
        side_hidden: the side-only MLP's hidden width.

    Example:
        >>> backbone = timm.create_model("resnet18", num_classes=0)
        >>> model = FusionClassifier(backbone, side_features=16, num_classes=10)
        >>> model(torch.randn(2, 3, 64, 64), torch.randn(2, 16)).shape
        torch.Size([2, 10])
    """

    def __init__(self, backbone: nn.Module | None, side_features: int, num_classes: int, *,
                 inputs: Literal["both", "image", "side"] = "both", block: str = "gated_fusion",
                 out_channels: int | None = None, side_hidden: int = 64) -> None:
        super().__init__()
        if inputs not in ("both", "image", "side"):
            raise ValueError(f"inputs must be 'both', 'image' or 'side', got {inputs!r}")
        if (backbone is None) != (inputs == "side"):
            raise ValueError(f"inputs={inputs!r} {'takes no' if inputs == 'side' else 'needs a'} backbone")
        if block_inputs(block) != 2:
            raise ValueError(f"block {block!r} takes one input; a fusion needs a two-input block such as "
                             f"'gated_fusion'")
        self.inputs = inputs
        self.side_features = side_features
        self.num_classes = num_classes
        self.backbone = backbone
        self.fuse: nn.Module | None = None
        self.side_mlp: nn.Module | None = None
        if inputs == "side":
            self.side_mlp = nn.Sequential(nn.Linear(side_features, side_hidden), nn.ReLU())
            width = side_hidden
        else:
            width = int(backbone.num_features)
            if inputs == "both":
                self.fuse = create_block(block, width, side_features, out_channels=out_channels or width)
                width = out_channels or width
        self.head = nn.Linear(width, num_classes)

    def features(self, images: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """What the classifier sees: the fused vector (or a baseline's single input, encoded)."""
        if self.side_mlp is not None:
            return self.side_mlp(side)
        pooled = self.backbone(images)
        return self.fuse(pooled, side) if self.fuse is not None else pooled

    def forward(self, images: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images, side))
