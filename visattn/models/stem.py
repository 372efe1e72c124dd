"""Small-input (CIFAR) stems: a ResNet's 3x3 stride-1 conv with no max-pool, and the same reach for any CNN.

A stock ImageNet CNN divides the resolution by 32, so a 32x32 image reaches its last stage as 1x1 and every
class-activation map is a single pixel. The CIFAR variant of He et al. 2016 (arXiv 1512.03385, Sec. 4.2) keeps full
resolution into layer1, so layer4 is 4x4 for a 32x32 input. Other families get the same total stride of 8 by taking
the stride out of their first two downsampling layers (an EfficientNet's or MobileNet's stem conv and first
depthwise conv), which keeps every weight.
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
        model: a ResNet whose ``conv1`` is a single ``nn.Conv2d`` and which has a ``maxpool``; any other CNN loses the
            stride of its first two (``stride=1``) or first (``stride=2``) downsampling layers, if they come before
            its first residual block (:func:`_without_early_strides`).
        kernel_size: odd kernel size of the new first conv.
        stride: its stride: 1 (CIFAR ResNets: layer4 is 4x4 for 32x32 inputs) or 2 (about 5x faster on CPU,
            layer4 2x2; worth it for tiny CPU budgets).

    Returns:
        The same model, modified.

    Raises:
        ValueError: a bad ``kernel_size`` or ``stride``, or a model whose early downsampling sits in a residual block
            (its shortcut would no longer match) or in a layer whose stride cannot simply be set to 1.

    Example:
        >>> model = use_small_input_stem(timm.create_model('resnet18', num_classes=10))
        >>> model(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    conv = getattr(model, "conv1", None)
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")
    if not isinstance(conv, nn.Conv2d) or not hasattr(model, "maxpool"):
        return _without_early_strides(model, 2 if stride == 1 else 1)
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
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


def _without_early_strides(model: ModelT, count: int) -> ModelT:
    """Set the stride of the first ``count`` downsampling convs / poolings (in execution order) to 1, in place.

    Each must be a plain ``nn.Conv2d`` or max/avg pooling with an odd kernel padded to keep the size at stride 1, and
    come before the first residual block: a block with a shortcut must downsample both paths alike.
    """
    import torch

    from .structure import find_structure

    size = 64
    probe = torch.zeros(1, _in_channels(model), size, size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            residual = [s.path for sites in find_structure(model, probe).sites.values() for s in sites
                        if s.kind == "residual"]
        order: list[tuple[str, nn.Module, int, int]] = []
        hooks = [m.register_forward_hook(lambda m, i, o, n=n: order.append((n, m, i[0].shape[-1], o.shape[-1])))
                 for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]
        with torch.no_grad():
            model(probe)
        for h in hooks:
            h.remove()
    finally:
        model.train(was_training)
    halving = [(n, m) for n, m, before, after in order if after * 2 == before or after * 2 == before + 1]
    chosen = halving[:count]
    for name, module in chosen:
        if any(name.startswith(r + ".") for r in residual):
            raise ValueError(f"use_small_input_stem: {type(model).__name__}'s downsampling layer {name} sits in a "
                             f"residual block, whose shortcut would no longer match; pass small_input=false")
        kernel = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,) * 2
        padding = module.padding if isinstance(module.padding, tuple) else (module.padding,) * 2
        if any(k % 2 == 0 or p != k // 2 for k, p in zip(kernel, padding, strict=True)):
            raise ValueError(f"use_small_input_stem: {type(model).__name__}'s downsampling layer {name} "
                             f"(kernel {kernel}, padding {padding}) would not keep the size at stride 1")
    for _, module in chosen:
        module.stride = (1, 1) if isinstance(module, nn.Conv2d) else 1
    factor = 2 ** len(chosen)
    for info in getattr(model, "feature_info", []):
        if isinstance(info, dict) and "reduction" in info:
            info["reduction"] = max(1, info["reduction"] // factor)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        cfg.update(input_size=(3, 32, 32), crop_pct=1.0)
    return model


def _in_channels(model: nn.Module) -> int:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3
