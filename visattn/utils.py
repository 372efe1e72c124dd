"""Small helpers shared across visattn: module-state context managers and model measurements."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["eval_mode", "count_params", "count_flops", "model_device_dtype", "user_stacklevel", "input_channels"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel, for the function calling this, of the first frame outside visattn.

    A warning raised deep inside the package then names the line of the user's code that led to it, however many
    internal calls lie between (``warnings.warn(skip_file_prefixes=...)`` does the same from Python 3.12 on).
    """
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each module's own train/eval flag, even on error.

    ``model.train(was_training)`` would flatten a mixed state (e.g. BatchNorms frozen inside a training model), so
    the flags are saved and restored one module at a time.
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, training in flags:
            module.training = training


def count_params(module: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters())


def _cpu_attention_flops(query: torch.Size, key: torch.Size, value: torch.Size, *args: object,
                         out_shape: object = None, **kwargs: object) -> int:
    """FLOPs of softmax(Q K^T) V: two matmuls (torch's own table lacks the CPU flash kernel)."""
    batch_heads, queries, keys = query[:-2].numel(), query[-2], key[-2]
    return 2 * batch_heads * queries * keys * (query[-1] + value[-1])


def _flop_table() -> dict[object, object]:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _cpu_attention_flops} if op is not None else {}  # keyed by overload packet, as torch does


def count_flops(model: nn.Module, *inputs: torch.Tensor) -> tuple[int, torch.Tensor]:
    """FLOPs of one forward pass ``model(*inputs)`` as counted by ``torch.utils.flop_counter`` (convs, matmuls,
    attention), and its output.

    Element-wise work (pooling, gating, normalisation) is not counted, as in most papers' FLOP tables.
    """
    with FlopCounterMode(display=False, custom_mapping=_flop_table()) as counter:
        out = model(*inputs)
    return counter.get_total_flops(), out


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (CPU / float32 for a parameterless model)."""
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def input_channels(model: nn.Module, *, guess: bool = False) -> int | None:
    """Channels the model's stem convolution takes, from timm's ``pretrained_cfg['first_conv']``.

    Without that entry (a torchvision or hand-written model) the stem is unknown: registration order says nothing
    about execution order (a model may define its classifier conv first). Then ``None``, or with ``guess=True`` the
    first registered ``nn.Conv2d``'s in-channels, for callers that only use the answer as a default.
    """
    names = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    for name in [names] if isinstance(names, str) else list(names or []):
        try:
            conv = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(conv, nn.Conv2d):
            return conv.in_channels
    if guess:
        return next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None
