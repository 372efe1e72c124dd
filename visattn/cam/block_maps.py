"""The attention blocks' own maps: what each visattn block attended to during one forward pass.

- Spatial gates of :class:`~visattn.SpatialAttention` (alone or inside CBAM): ``(B, H, W)``.
- Channel weights of :class:`~visattn.SqueezeExcite` and :class:`~visattn.ChannelAttention`: ``(B, C)``.
- :class:`~visattn.PixelSelfAttention`: the attention of chosen query pixels over all pixels: ``(B, H, W)``.
- :class:`~visattn.CrossAttention2d`: the attention of chosen query pixels over the context map's pixels:
  ``(B, H, W)``, the context's grid stretched over the image.

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

from ..blocks import ChannelAttention, CrossAttention2d, PixelSelfAttention, SpatialAttention, SqueezeExcite
from ..utils import eval_mode, model_device_dtype
from .base import normalize_maps

__all__ = ["BlockMaps", "BlockMapReader", "block_maps"]


@dataclass
class BlockMaps:
    """Block maps of one batch, keyed by module name (self-attention keys add ``@y,x`` for the query point, and
    ``#hN`` for head N when each head is read apart).

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


class BlockMapReader:
    """Hooks that read every matching visattn block's own attention during a forward pass run by someone else, so
    block maps can ride on the pass a CAM makes anyway.

    While entered, the first forward pass after entering (or after the last :meth:`read`) is kept: the spatial and
    channel gates, and each self-attention block's input; :meth:`read` turns them into maps and starts over. Later
    passes before a read (e.g. Score-CAM's masked inputs) are ignored. Hooks are removed on exit, even after an
    exception, and exiting twice is safe.

    Args:
        model: a network containing visattn blocks (e.g. ``timm.create_model('resnet18_cbam')``).
        patterns: fnmatch pattern(s) over module names, timm style (``'layer4.*'``); a block matches when its own name
            or the name of a module containing it does (``'layer4'``). Blocks matching none are skipped.
        queries: query pixels for self-attention blocks, as ``(y, x)`` fractions of the image (``(0.5, 0.5)`` = centre).
        scale: scale each spatial / self-attention map to ``[0, 1]`` per image (gates often span a narrow band).
        heads: also give each head's map of a multi-head self-attention block (keys ``...@y,x#h0``, ...), next to
            their mean.

    Example:
        >>> with BlockMapReader(model, patterns="layer4") as reader, torch.no_grad():
        ...     logits = model(images)
        ...     maps = reader.read(images.shape[-2:], logits)
    """

    def __init__(self, model: nn.Module, patterns: str | Sequence[str] = "*",
                 queries: Sequence[tuple[float, float]] = ((0.5, 0.5),), *, scale: bool = True,
                 heads: bool = False) -> None:
        self.model = model
        self.heads = heads
        self.patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        self.queries = _check_queries(queries)
        self.scale = scale
        self._handles: list[Any] = []
        self._spatial: dict[str, torch.Tensor] = {}
        self._channel: dict[str, torch.Tensor] = {}
        # Each self- or cross-attention block's inputs: (block, x) or (block, x, context).
        self._attention_inputs: dict[str, tuple[Any, ...]] = {}
        self._seen: set[str] = set()  # blocks read in this pass: a gate that runs twice in it keeps its first output
        self._complete = False

    def __enter__(self) -> BlockMapReader:
        try:
            for name, module in self.model.named_modules():
                # A pattern may name the block itself or any module around it ('layer4', 'layer4.0.se' for a CBAM).
                scopes = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)] if name else [""]
                if not any(fnmatch.fnmatchcase(scope, p) for scope in scopes for p in self.patterns):
                    continue
                if isinstance(module, SpatialAttention):
                    self._handles.append(module.gate.register_forward_hook(self._keep_gate(self._spatial, name)))
                elif isinstance(module, (SqueezeExcite, ChannelAttention)):
                    self._handles.append(module.gate.register_forward_hook(self._keep_gate(self._channel, name)))
                elif isinstance(module, (PixelSelfAttention, CrossAttention2d)):
                    self._handles.append(module.register_forward_pre_hook(self._keep_input(name, module)))
            self._handles.append(self.model.register_forward_hook(self._end_of_pass))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks and drop what was kept. Safe to call any number of times."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._reset()

    def _reset(self) -> None:
        for kept in (self._spatial, self._channel, self._attention_inputs, self._seen):
            kept.clear()  # in place: the hooks hold these containers
        self._complete = False

    def _keep(self, name: str) -> bool:
        if self._complete or name in self._seen:
            return False
        self._seen.add(name)
        return True

    def _keep_gate(self, store: dict[str, torch.Tensor], name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if self._keep(name):
                store[name] = output.detach().float()
        return hook

    def _keep_input(self, name: str, block: nn.Module) -> Any:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if self._keep(name):
                self._attention_inputs[name] = (block, *(t.detach() for t in inputs[:2]))
        return hook

    def _end_of_pass(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._complete = True

    def read(self, size: Sequence[int], logits: torch.Tensor | None = None) -> BlockMaps:
        """Maps of the kept forward pass at ``size`` ``(H, W)`` (the input resolution), then start over.

        Raises:
            RuntimeError: no forward pass ran since entering or since the last read.
        """
        if not self._handles:
            raise RuntimeError("BlockMapReader.read() needs the hooks: use it inside a `with` block")
        if not self._complete:
            raise RuntimeError("no forward pass of the model ran since the reader was entered or last read")
        size = (int(size[0]), int(size[1]))
        out = BlockMaps(channel=dict(self._channel), logits=logits)
        with torch.no_grad():
            for name, gate in self._spatial.items():
                out.spatial[name] = _to_input_size(gate[:, 0], size, self.scale)
            for name, (block, x, *context) in self._attention_inputs.items():
                h, w = x.shape[-2:]
                flat = torch.tensor([min(int(y * h), h - 1) * w + min(int(xq * w), w - 1) for y, xq in self.queries],
                                    device=x.device)
                with eval_mode(block):  # explanations read the eval-mode attention
                    weights = block.query_attention(x, *context, flat, per_head=True)  # (B, heads, P, N_kv)
                    kh, kw = block.pool((context[0] if context else x)[:, :1]).shape[-2:]
                for p, (y, xq) in enumerate(self.queries):
                    key = f"{name}@{y:g},{xq:g}"
                    out.self_attention[key] = _to_input_size(weights[:, :, p].mean(1).view(-1, kh, kw), size,
                                                             self.scale)
                    if self.heads and weights.shape[1] > 1:
                        for h in range(weights.shape[1]):
                            out.self_attention[f"{key}#h{h}"] = _to_input_size(
                                weights[:, h, p].reshape(-1, kh, kw), size, self.scale)
        self._reset()
        return out


def block_maps(
        model: nn.Module,
        images: torch.Tensor,
        *,
        patterns: str | Sequence[str] = "*",
        queries: Sequence[tuple[float, float]] = ((0.5, 0.5),),
        scale: bool = True,
        heads: bool = False,
) -> BlockMaps:
    """Read every matching visattn block's own attention during one eval-mode forward pass.

    Args:
        model: a network containing visattn blocks (e.g. ``timm.create_model('resnet18_cbam')``).
        images: ``(B, C, H, W)`` normalised input.
        patterns, queries, scale, heads: as :class:`BlockMapReader`.

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
    device, dtype = model_device_dtype(model)
    reader = BlockMapReader(model, patterns, queries, scale=scale, heads=heads)
    with reader, eval_mode(model), torch.no_grad():
        logits = model(images.to(device=device, dtype=dtype))
        return reader.read(images.shape[-2:], logits)


def _to_input_size(maps: torch.Tensor, size: tuple[int, int], scale: bool) -> torch.Tensor:
    maps = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalize_maps(maps) if scale else maps
