"""Toy models and reference saliency "methods" shared by the faithfulness tests, and checks that the toys are what
the other tests assume: the target logit depends on the pixels of a known region and on nothing else."""

from __future__ import annotations

import torch
from torch import nn

H, W = 16, 16
REGION = torch.zeros(H, W, dtype=torch.bool)
REGION[4:10, 5:12] = True  # 42 of 256 pixels


class RegionNet(nn.Module):
    """Two classes; class 1's logit is ``scale * (mean over REGION of the channel-mean pixel - 0.5)``.

    Built from real layers (1x1 conv, BatchNorm, Linear) so the sanity check has parameters and buffers to randomise.
    """

    def __init__(self, scale: float = 8.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 1, 1)
        self.bn1 = nn.BatchNorm2d(1)
        self.fc = nn.Linear(H * W, 2)
        with torch.no_grad():
            self.conv1.weight.fill_(1 / 3)
            self.conv1.bias.zero_()
            self.bn1.eps = 0.0  # identity in eval mode with the default running statistics
            self.fc.weight.zero_()
            self.fc.weight[1] = REGION.flatten().float() * scale / REGION.sum()
            self.fc.bias.copy_(torch.tensor([0.0, -0.5 * scale]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn1(self.conv1(x)).flatten(1))


def region_images(n: int = 4, seed: int = 0) -> torch.Tensor:
    """Background ~ N(0, 0.3), region ~ N(1, 0.1): confidently class 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, H, W, generator=g) * 0.3
    return torch.where(REGION, 1 + torch.randn(n, 3, H, W, generator=g) * 0.1, x)


def mask_maps(n: int) -> torch.Tensor:
    return REGION.float().expand(n, H, W).clone()


def random_maps(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, H, W, generator=torch.Generator().manual_seed(seed))


def input_gradient(model: nn.Module):
    """make_explain for |d logit / d input| (max over channels), scaled to [0, 1] per image."""

    def explain(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        x = images.detach().clone().requires_grad_(True)
        model(x).gather(1, classes[:, None]).sum().backward()
        grad = x.grad.abs().amax(1)
        return grad / grad.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]

    return explain


def test_region_net_depends_only_on_region():
    model = RegionNet().eval()
    x = region_images(2)
    outside = torch.where(REGION, x, torch.randn_like(x) * 5)
    torch.testing.assert_close(model(x), model(outside))
    assert (model(x).softmax(-1)[:, 1] > 0.9).all()
    assert (model(torch.zeros_like(x)).softmax(-1)[:, 1] < 0.1).all()


def test_input_gradient_is_the_region():
    model = RegionNet().eval()
    x = region_images(2)
    maps = input_gradient(model)(x, torch.ones(2, dtype=torch.long))
    torch.testing.assert_close(maps, mask_maps(2))
