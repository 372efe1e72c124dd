"""Pieces shared by the blocks: layer resolvers, argument checks and the multiplicative gate."""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import torch
from timm.layers import make_divisible
from torch import nn

__all__ = ["LayerSpec", "resolve_act", "resolve_norm", "reduced_channels", "check_channels", "reject_unknown", "Gate"]

LayerSpec = str | type[nn.Module] | None

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "hard_swish": nn.Hardswish,
    "sigmoid": nn.Sigmoid,
    "hard_sigmoid": nn.Hardsigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}

_NORMS: dict[str, type[nn.Module]] = {
    "batchnorm": nn.BatchNorm2d,
    "batchnorm2d": nn.BatchNorm2d,
    "instancenorm": nn.InstanceNorm2d,
}


def _resolve(spec: LayerSpec, table: dict[str, type[nn.Module]], arg: str) -> type[nn.Module] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        key = spec.lower().replace("-", "_")
        if key not in table:
            close = difflib.get_close_matches(key, table, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{arg}={spec!r} is not a known layer; use a class or one of {sorted(table)}.{hint}")
        return table[key]
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        return spec
    if isinstance(spec, nn.Module):  # callable too, but the block builds its own layers from a class
        raise TypeError(f"{arg} must be a name, an nn.Module class or a factory, not an instance: pass "
                        f"{type(spec).__name__} (or functools.partial({type(spec).__name__}, ...)), got {spec!r}")
    if callable(spec):  # functools.partial(nn.LeakyReLU, 0.2) and similar factories
        return spec  # type: ignore[return-value]
    raise TypeError(f"{arg} must be a name, an nn.Module class or None, got {type(spec).__name__} {spec!r}")


def resolve_act(spec: LayerSpec, arg: str = "act_layer") -> type[nn.Module]:
    """Turn an activation/gate spec (``'relu'``, ``nn.SiLU``, ...) into a module class."""
    layer = _resolve(spec, _ACTIVATIONS, arg)
    return nn.Identity if layer is None else layer


def resolve_norm(spec: LayerSpec, arg: str = "norm_layer") -> type[nn.Module] | None:
    """Turn a norm spec (``'batchnorm'``, ``nn.BatchNorm2d``, ``None``) into a module class or None."""
    return _resolve(spec, _NORMS, arg)


def check_odd_kernel(value: Any, arg: str) -> int:
    """Validate a spatial kernel size: a positive odd int, so that 'same' padding keeps the map's size."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f"{arg} must be a positive odd int so the map keeps its size, got {value!r}")
    return value


def check_channels(channels: Any, name: str = "channels") -> int:
    """Validate a channel count (the positional ``channels`` argument every block takes, or another named one)."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"{name} must be a positive int, got {channels!r}")
    return channels


def reduced_channels(channels: int, rd_ratio: float, rd_channels: int | None, rd_divisor: int) -> int:
    """Hidden width of a block's bottleneck, with timm's semantics for ``rd_ratio`` / ``rd_channels`` / ``rd_divisor``.

    An explicit ``rd_channels`` wins; otherwise ``channels * rd_ratio`` is rounded to a multiple of ``rd_divisor``
    (never below the divisor itself, so 3-channel inputs still get a hidden layer).
    """
    if rd_channels is not None:
        if isinstance(rd_channels, bool) or not isinstance(rd_channels, int) or rd_channels < 1:
            raise ValueError(f"rd_channels must be a positive int or None, got {rd_channels!r}")
        return rd_channels
    if not isinstance(rd_ratio, int | float) or not rd_ratio > 0:
        raise ValueError(f"rd_ratio must be a positive number, got {rd_ratio!r}")
    if isinstance(rd_divisor, bool) or not isinstance(rd_divisor, int) or rd_divisor < 1:
        raise ValueError(f"rd_divisor must be a positive int, got {rd_divisor!r}")
    return make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)


def reject_unknown(cls: type, kwargs: dict[str, Any]) -> None:
    """Raise a TypeError naming unknown keyword arguments and the closest valid one.

    Blocks take ``**kwargs`` (the timm ``attn_layer`` contract) but never drop a misspelt option silently.
    """
    if not kwargs:
        return
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "channels", "kwargs")]
    parts = []
    for key in kwargs:
        close = difflib.get_close_matches(key, valid, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(f"{cls.__name__} got unexpected argument(s) {', '.join(parts)}; valid: {', '.join(valid)}")


class Gate(nn.Module):
    """Multiplicative gate ``g = gate_layer(z)`` applied as ``x * g``.

    With ``identity_init=True`` the gate becomes ``1 + blend * (g - 1)`` with a learnable scalar ``blend`` that starts
    at 0 (ReZero, Bachlechner et al. 2020, arXiv 2003.04887): the block is an exact identity at step 0, so it can be
    dropped into a trained network, and it recovers the paper's gate as ``blend`` reaches 1. A plain sigmoid can never
    output exactly 1, and a saturated one would not learn, hence the blend.
    """

    def __init__(
            self,
            gate_layer: LayerSpec = "sigmoid",
            *,
            identity_init: bool = False,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.act = resolve_act(gate_layer, "gate_layer")()
        if identity_init:
            self.blend = nn.Parameter(torch.zeros((), device=device, dtype=dtype))
        else:
            self.register_parameter("blend", None)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        g = self.act(z)
        if self.blend is not None:
            g = 1 + self.blend * (g - 1)
        return g
