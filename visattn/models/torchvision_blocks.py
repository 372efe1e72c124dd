"""torchvision ResNet blocks with timm's ``se`` attention slot.

torchvision's ``BasicBlock`` / ``Bottleneck`` have no attention slot, so ``inject`` re-classes each chosen block to
one of these subclasses. They add an ``se`` child and apply it where timm does (after the last norm, before the
residual add); every original child keeps its name, so state_dict keys are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = ["AttnBasicBlock", "AttnBottleneck", "with_attention_slot"]


class AttnBasicBlock(BasicBlock):
    """torchvision ``BasicBlock`` plus ``se`` after ``bn2``."""

    se: nn.Module | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


class AttnBottleneck(Bottleneck):
    """torchvision ``Bottleneck`` plus ``se`` after ``bn3``."""

    se: nn.Module | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)


_SLOTTED = {BasicBlock: AttnBasicBlock, Bottleneck: AttnBottleneck}


def can_add_attention_slot(block: nn.Module) -> bool:
    """True for torchvision's own BasicBlock/Bottleneck (or ours): a subclass has its own forward, which re-classing
    would drop (e.g. the quantizable blocks)."""
    return type(block) in _SLOTTED or type(block) in _SLOTTED.values()


def with_attention_slot(block: nn.Module) -> nn.Module:
    """Re-class a torchvision residual block in place so it has an ``se`` slot (initially None).

    Raises:
        ValueError: for a block :func:`can_add_attention_slot` refuses, naming its class.
    """
    if type(block) in _SLOTTED.values():
        return block
    if not can_add_attention_slot(block):
        raise ValueError(f"{type(block).__name__} subclasses torchvision's {type(block).__mro__[1].__name__} with its "
                         f"own forward; visattn adds attention to torchvision's BasicBlock and Bottleneck only")
    block.__class__ = _SLOTTED[type(block)]
    block.se = None
    return block
