"""Shared fixtures: tiny inputs and a way to make a freshly built model look trained."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import visattn

BLOCK_NAMES = visattn.list_blocks()


def make_trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer non-trivial affine parameters and running statistics.

    A freshly built timm ResNet zero-initialises the last BN of each residual branch, so the branch outputs zero and
    an identity check on it could not fail. Trained models have no such zeros.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def randomize_parameters(module: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite every parameter with N(0, 0.5): no zero-initialised branch, no exact-identity blend."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * 0.5)
    return module


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
