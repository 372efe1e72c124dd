"""Small-input (CIFAR) stem for ResNets: 3x3 stride-1 conv, no max-pool.

A stock ResNet stem divides the resolution by 4 before layer1, so a 32x32 image reaches layer4 as 1x1 and every
class-activation map is a single pixel. The CIFAR variant of He et al. 2016 (arXiv 1512.03385, Sec. 4.2) keeps full
resolution into layer1, so layer4 is 4x4 for a 32x32 input.
"""

from __future__ import annotations

from typing import TypeVar

from torch import nn

__all__ = ["use_small_input_stem"]

ModelT = TypeVar("ModelT", bound=nn.Module)


def use_small_input_stem(model: ModelT, *, kernel_size: int = 3, stride: int = 1) -> ModelT:
    """Replace a timm or torchvision ResNet's 7x7/2 conv + max-pool stem with one small conv and no pool, in place.

    The new conv is freshly initialised (Kaiming, fan-out, as timm does); ``bn1`` is kept. For timm models the
    ``feature_info`` reductions and ``pretrained_cfg`` input size are updated to match 32x32 inputs.

    Args:
        model: a ResNet whose ``conv1`` is a single ``nn.Conv2d`` and which has a ``maxpool``.
        kernel_size: odd kernel size of the new first conv.
        stride: its stride: 1 (CIFAR ResNets: layer4 is 4x4 for 32x32 inputs) or 2 (about 5x faster on CPU,
            layer4 2x2; worth it for tiny CPU budgets).

    Returns:
        The same model, modified.

    Raises:
        ValueError: if the model has no plain ``conv1`` conv or no ``maxpool`` (e.g. timm's deep ``resnet50d`` stem).

    Example:
        >>> model = use_small_input_stem(timm.create_model('resnet18', num_classes=10))
        >>> model(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(model, "maxpool"):
        found = type(conv).__name__ if conv is not None else "no conv1"
        raise ValueError(
            f"use_small_input_stem needs a ResNet with a single-conv stem (conv1: nn.Conv2d) and a maxpool; "
            f"{type(model).__name__} has conv1={found}"
        )
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")
    new = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        bias=conv.bias is not None,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    model.conv1 = new
    model.maxpool = nn.Identity()

    # timm bookkeeping: the stem now downsamples by `stride` (it did by 2 at act1 and by 4 from layer1 on).
    for info in getattr(model, "feature_info", []):
        if isinstance(info, dict) and "reduction" in info:
            old_stem = 2 if info.get("module") == "act1" else 4
            info["reduction"] = info["reduction"] // old_stem * stride
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        cfg.update(input_size=(3, 32, 32), pool_size=(4 // stride, 4 // stride), crop_pct=1.0)
    return model
