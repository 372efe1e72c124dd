"""Which modules a CAM reads: names, patterns or modules given by the user, or the model's last spatial stage."""

from __future__ import annotations

import difflib
import fnmatch
from collections import Counter
from collections.abc import Sequence

import torch
from torch import nn

from ..utils import eval_mode

__all__ = ["LayerSpec", "resolve_layers", "default_target_layer"]

LayerSpec = None | str | nn.Module | Sequence[str | nn.Module]


def _lookup(model: nn.Module, spec: str | nn.Module, names: dict[str, nn.Module]) -> list[tuple[str, nn.Module]]:
    if isinstance(spec, nn.Module):
        for name, module in names.items():
            if module is spec:
                return [(name, module)]
        raise ValueError(f"target layer {type(spec).__name__} is not a submodule of the model")
    if not isinstance(spec, str):
        raise TypeError(f"target_layers must be module names, fnmatch patterns or modules, got {spec!r}")
    if spec in names:
        return [(spec, names[spec])]
    matches = [(n, m) for n, m in names.items() if n and fnmatch.fnmatchcase(n, spec)]
    if matches:
        return matches
    close = difflib.get_close_matches(spec, [n for n in names if n], n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"target layer {spec!r} matches no module of {type(model).__name__}{hint}")


def resolve_layers(model: nn.Module, target_layers: LayerSpec, example: torch.Tensor | None = None
                   ) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` pairs for a layer spec; ``None`` picks :func:`default_target_layer`.

    Args:
        model: the network.
        target_layers: a module name (``'layer4'``), an fnmatch pattern (``'layer4.*'``), a module, or a list of them.
        example: an input batch, used to probe models without timm's ``feature_info`` when ``target_layers`` is None.

    Raises:
        ValueError: a name or pattern that matches nothing (the closest names are suggested), or an empty list.
    """
    if target_layers is None:
        name = default_target_layer(model, example)
        return [(name, model.get_submodule(name))]
    names = dict(model.named_modules())
    specs = [target_layers] if isinstance(target_layers, (str, nn.Module)) else list(target_layers)
    if not specs:
        raise ValueError("target_layers is an empty list; give at least one module name, or None for the default")
    found: dict[str, nn.Module] = {}
    for spec in specs:
        found.update(_lookup(model, spec, names))
    return list(found.items())


def default_target_layer(model: nn.Module, example: torch.Tensor | None = None) -> str:
    """Name of the model's last spatial stage.

    timm models list their stages in ``feature_info``; its last entry is the deepest one (``layer4`` for a ResNet,
    ``stages.3`` for a ConvNeXt). Other models are probed with ``example``: the last module to finish whose output is
    a ``(B, C, H, W)`` map larger than 1x1.

    Raises:
        ValueError: no stage could be found (give ``target_layers`` explicitly).
    """
    names = dict(model.named_modules())
    info = getattr(model, "feature_info", None)
    if isinstance(info, (list, tuple)) and info and isinstance(info[-1], dict):
        stage = str(info[-1].get("module", ""))
        for candidate in (stage, stage.replace("_", ".")):  # features_only models flatten 'stages.3' to 'stages_3'
            if candidate and candidate in names:
                return candidate
    if example is None:
        raise ValueError(f"{type(model).__name__} has no timm feature_info, so the default target layer must be found "
                         "by running the model once; pass target_layers explicitly (e.g. the last conv stage)")
    finished: list[tuple[str, tuple[int, ...]]] = []
    handles = [m.register_forward_hook(lambda mod, inp, out, n=n: finished.append(
        (n, tuple(out.shape) if isinstance(out, torch.Tensor) else ()))) for n, m in names.items() if n]
    try:
        with eval_mode(model), torch.no_grad():  # eval: a probe must not update BatchNorm statistics
            model(example)
    finally:
        for h in handles:
            h.remove()
    runs = Counter(n for n, _ in finished)
    # A module that runs more than once (a shared activation) cannot be a target layer.
    spatial = [n for n, shape in finished if len(shape) == 4 and runs[n] == 1]
    larger = [n for n, shape in finished if len(shape) == 4 and runs[n] == 1 and shape[2] * shape[3] > 1]
    if not spatial:
        raise ValueError(f"no module of {type(model).__name__} outputs a (B, C, H, W) map; pass target_layers")
    return (larger or spatial)[-1]
