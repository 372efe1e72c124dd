"""The attention blocks' own maps: what each visattn block attended to during one forward pass.

- Spatial gates of :class:`~visattn.SpatialAttention` (alone or inside CBAM): ``(B, H, W)``.
- Channel weights of :class:`~visattn.SqueezeExcite` and :class:`~visattn.ChannelAttention`: ``(B, C)``.
- :class:`~visattn.PixelSelfAttention`: the attention of chosen query pixels over all pixels: ``(B, H, W)``.

Gates are read from each block's ``gate`` submodule, which every code path calls (CBAM's parallel order included).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import ChannelAttention, PixelSelfAttention, SpatialAttention, SqueezeExcite
from ..utils import eval_mode, model_device_dtype
from .base import normalize_maps

__all__ = ["BlockMaps", "block_maps"]


@dataclass
class BlockMaps:
    """Block maps of one batch, keyed by module name (self-attention keys add ``@y,x`` for the query point).

    Attributes:
        spatial: ``(B, H, W)`` spatial gates, at input resolution.
        channel: ``(B, C)`` channel weights (the gate values, not scaled).
        self_attention: ``(B, H, W)`` attention of the query point over all pixels, at input resolution.
        logits: ``(B, K)`` model output.
    """

    spatial: dict[str, torch.Tensor] = field(default_factory=dict)
    channel: dict[str, torch.Tensor] = field(default_factory=dict)
    self_attention: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None

    def spatial_maps(self) -> dict[str, torch.Tensor]:
        """Every ``(B, H, W)`` map: spatial gates then self-attention."""
        return {**self.spatial, **self.self_attention}


def _check_queries(queries: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    checked = []
    for q in queries:
        if (not isinstance(q, (tuple, list)) or len(q) != 2
                or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in q)):
            raise ValueError(f"queries must be (y, x) pairs of fractions in [0, 1], got {q!r}")
        checked.append((float(q[0]), float(q[1])))
    return checked


def block_maps(
        model: nn.Module,
        images: torch.Tensor,
        *,
        patterns: str | Sequence[str] = "*",
        queries: Sequence[tuple[float, float]] = ((0.5, 0.5),),
        scale: bool = True,
) -> BlockMaps:
    """Read every matching visattn block's own attention during one eval-mode forward pass.

    Args:
        model: a network containing visattn blocks (e.g. ``timm.create_model('resnet18_cbam')``).
        images: ``(B, C, H, W)`` normalised input.
        patterns: fnmatch pattern(s) over module names, timm style (``'layer4.*'``); a block matches when its own name
            or the name of a module containing it does (``'layer4'``). Blocks matching none are skipped.
        queries: query pixels for self-attention blocks, as ``(y, x)`` fractions of the image (``(0.5, 0.5)`` = centre).
        scale: scale each spatial / self-attention map to ``[0, 1]`` per image (gates often span a narrow band).

    Returns:
        A :class:`BlockMaps`; it is empty when the model has no matching block.

    Example:
        >>> maps = block_maps(model, images, patterns="layer4.*")
        >>> maps.spatial["layer4.0.se.spatial"].shape
        torch.Size([8, 32, 32])
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a (B, C, H, W) float tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    pattern_list = [patterns] if isinstance(patterns, str) else list(patterns)
    query_list = _check_queries(queries)
    size = (images.shape[-2], images.shape[-1])
    out = BlockMaps()
    raw_spatial: dict[str, torch.Tensor] = {}
    attention_inputs: dict[str, tuple[PixelSelfAttention, torch.Tensor]] = {}

    def keep_gate(store: dict[str, torch.Tensor], name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            store[name] = output.detach().float()
        return hook

    def keep_input(name: str, block: PixelSelfAttention) -> Any:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            attention_inputs[name] = (block, inputs[0].detach())
        return hook

    handles = []
    try:
        for name, module in model.named_modules():
            # A pattern may name the block itself or any module around it ('layer4', 'layer4.0.se' for a CBAM).
            scopes = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)] if name else [""]
            if not any(fnmatch.fnmatchcase(scope, p) for scope in scopes for p in pattern_list):
                continue
            if isinstance(module, SpatialAttention):
                handles.append(module.gate.register_forward_hook(keep_gate(raw_spatial, name)))
            elif isinstance(module, (SqueezeExcite, ChannelAttention)):
                handles.append(module.gate.register_forward_hook(keep_gate(out.channel, name)))
            elif isinstance(module, PixelSelfAttention):
                handles.append(module.register_forward_pre_hook(keep_input(name, module)))
        device, dtype = model_device_dtype(model)
        with eval_mode(model), torch.no_grad():
            out.logits = model(images.to(device=device, dtype=dtype))
            for name, gate in raw_spatial.items():
                out.spatial[name] = _to_input_size(gate[:, 0], size, scale)
            for name, (block, x) in attention_inputs.items():
                h, w = x.shape[-2:]
                flat = [min(int(y * h), h - 1) * w + min(int(xq * w), w - 1) for y, xq in query_list]
                weights = block.query_attention(x, torch.tensor(flat, device=x.device))  # (B, P, N_kv)
                kh, kw = block.pool(x[:, :1]).shape[-2:]
                for (y, xq), row in zip(query_list, weights.unbind(1), strict=True):
                    out.self_attention[f"{name}@{y:g},{xq:g}"] = _to_input_size(row.view(-1, kh, kw), size, scale)
    finally:
        for handle in handles:
            handle.remove()
    return out


def _to_input_size(maps: torch.Tensor, size: tuple[int, int], scale: bool) -> torch.Tensor:
    maps = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalize_maps(maps) if scale else maps
