"""Cascading model-parameter randomisation: does the map depend on what the model learned?

Paper: "Sanity Checks for Saliency Maps", Adebayo et al., NeurIPS 2018, https://arxiv.org/abs/1810.03292 (Sec. 3,
"cascading randomization"). Starting from the logits, successive layers are re-initialised toward the input and the
maps are recomputed after each step; a method whose maps stay similar (high rank correlation) is not explaining the
trained model. Lower correlation is better.

Choices:
- The randomisation runs on a ``copy.deepcopy`` of the model, taken before the user's model is explained, so hooks an
  explain function leaves behind are not copied into the randomised model; the user's model is never modified.
- A step re-initialises every submodule of the named layer with its own ``reset_parameters()`` (PyTorch's default
  init, as the paper's "re-initialise to the initial distribution"), and fills from N(0, 0.02^2) (timm's init scale)
  every parameter that no ``reset_parameters()`` wrote to: those of modules without one, and those a reset misses
  (legacy ``nn.utils.weight_norm`` keeps ``weight_g``/``weight_v`` while its conv resets a derived ``weight``). The
  global RNG is forked and seeded with ``seed + step`` (CPU and the model's CUDA devices), so results are reproducible
  and the caller's RNG state is untouched.
- The default steps are the model's top-level children that own parameters, last first. For a timm ResNet that is
  ``fc, layer4, layer3, layer2, layer1, bn1, conv1`` (``bn1`` is its own step because it is its own child). A model
  with parameters of its own (a ViT's ``cls_token`` and ``pos_embed``) gets a last step, named ``""``, that
  re-initialises just those, so the last step leaves no trained parameter behind.
- Spearman correlation is Pearson correlation of ranks, with tied values given their average rank (as
  ``scipy.stats.spearmanr``); it is NaN when either map is constant (no ranking). In the cascade, an image whose
  original map is constant cannot show whether the map depends on the model: it is NaN and left out of the means
  (``SanityResult.n_excluded``), so a method returning all-zero maps scores n/a, not a perfect 0. A randomised map
  that collapses to a constant while the original varies has lost the original's ranking: that counts as 0.
- SSIM (also in the paper) is not computed: rank correlation is the paper's headline measure.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..utils import eval_mode
from .perturbation import Explain, check_batch_size, check_inputs, compute_maps

__all__ = ["SanityResult", "cascading_randomization", "default_sanity_layers", "resolve_sanity_layers", "spearman",
           "average_ranks"]

_INIT_STD = 0.02


@dataclass
class SanityResult:
    """Rank correlation between the maps of the model and of its progressively randomised copies.

    Attributes:
        layers: names randomised, in order; step ``i`` has ``layers[:i + 1]`` randomised (``""``: the model's own
            parameters, not its children's).
        spearman: ``(L, B)`` Spearman correlation per step and image; NaN for images whose original map is constant.
    """

    layers: list[str]
    spearman: torch.Tensor

    @property
    def n_excluded(self) -> int:
        """Images left out of the means because their original map is constant."""
        return int(self.spearman.isnan().all(0).sum()) if self.spearman.numel() else 0

    @property
    def mean_spearman(self) -> torch.Tensor:
        """``(L,)`` correlation averaged over the images with a non-constant original map, per step (lower is better;
        NaN when there is none)."""
        return self.spearman.nanmean(1)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` ranks 0..N-1 of each row of ``values``; tied values share their average rank."""
    flat = values.flatten(1)
    b, n = flat.shape
    sorted_values, order = flat.sort(dim=1, stable=True)
    position = torch.arange(n, device=flat.device).expand(b, n)
    starts = torch.ones_like(sorted_values, dtype=torch.bool)
    starts[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    # First and last sorted position of each element's run of equal values, by running max/min; exact in integers.
    first = torch.where(starts, position, 0).cummax(1).values
    last = torch.where(ends, position, n).flip(1).cummin(1).values.flip(1)
    ranks = torch.empty(b, n, device=flat.device, dtype=torch.float32)
    return ranks.scatter_(1, order, (first + last).float() / 2)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B,)`` Spearman rank correlation between matching maps of ``a`` and ``b`` (any shape ``(B, ...)``).

    Ties get their average rank; a row where either map is constant gives NaN, as ``scipy.stats.spearmanr``.

    Raises:
        ValueError: if the shapes differ or there are fewer than 2 values per map.
    """
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"a and b must be tensors of the same shape (B, ...), got "
                         f"{tuple(getattr(a, 'shape', ()))} and {tuple(getattr(b, 'shape', ()))}")
    if a[0].numel() < 2:
        raise ValueError(f"maps need at least 2 values to rank, got shape {tuple(a.shape)}")
    # float64 keeps sums of squared ranks exact for any image size; MPS has no float64.
    dtype = torch.float32 if a.device.type == "mps" else torch.float64
    ra = average_ranks(a.detach()).to(dtype)
    rb = average_ranks(b.detach().to(a.device)).to(dtype)
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    denom = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(denom > 0, (ra * rb).sum(1) / denom.clamp_min(torch.finfo(dtype).tiny), torch.nan).float()


def _is_constant(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.detach().flatten(1)
    return (flat == flat[:, :1]).all(1)


def default_sanity_layers(model: nn.Module) -> list[str]:
    """The model's top-level children that own parameters, last first (``fc, layer4, ..., conv1`` for a ResNet), then
    ``""`` if the model has parameters of its own (a ViT's ``cls_token``)."""
    names = [name for name, child in model.named_children() if next(child.parameters(), None) is not None][::-1]
    return names + [""] if next(model.parameters(recurse=False), None) is not None else names


def resolve_sanity_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    names = default_sanity_layers(model) if layers is None else layers
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ValueError(f"layers must be a non-empty sequence of module names (top of the model first), got "
                         f"{layers!r}" + ("; the model has no child module with parameters" if layers is None else ""))
    known = dict(model.named_modules())
    for name in names:
        if not isinstance(name, str) or name not in known:
            close = difflib.get_close_matches(str(name), list(known), n=3)
            raise ValueError(f"layers: {name!r} is not a submodule of the model; did you mean {close}? Default: "
                             f"{default_sanity_layers(model)}")
        if next(known[name].parameters(recurse=bool(name)), None) is None:
            raise ValueError(f"layers: {name!r} has no parameters to randomise"
                             + ("" if name else " ('' names the model's own parameters, not its children's)"))
    return list(names)


def _reinitialize(module: nn.Module, seed: int, *, recurse: bool = True) -> None:
    """Re-initialise every parameter under ``module`` (only its own with ``recurse=False``) reproducibly (see the
    module notes)."""
    cuda = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        for m in module.modules() if recurse else [module]:
            own = list(m.parameters(recurse=False))
            reset = getattr(m, "reset_parameters", None) if recurse else None
            # What reset() did not write to is still trained. An in-place write bumps a tensor's version counter;
            # one through .data does not, but changes the values.
            before = [(p._version, p.detach().clone()) for p in own] if callable(reset) else None
            if callable(reset):
                reset()
            for i, p in enumerate(own):
                if before is None or (p._version == before[i][0] and torch.equal(p, before[i][1])):
                    p.copy_(torch.randn(p.shape, generator=generator).to(p) * _INIT_STD)


def cascading_randomization(
        model: nn.Module,
        images: torch.Tensor,
        classes: torch.Tensor,
        make_explain: Callable[[nn.Module], Explain],
        *,
        layers: Sequence[str] | None = None,
        seed: int = 0,
        batch_size: int = 64,
) -> SanityResult:
    """Adebayo et al.'s cascading randomisation test, on a deep copy of ``model``.

    Args:
        model: the trained classifier; left unchanged (parameters and train/eval flags).
        images: ``(B, C, H, W)`` normalised model input.
        classes: ``(B,)`` target class per image.
        make_explain: builds the explain function for a model, ``make_explain(m)(images, classes) -> (B, H, W)``;
            called once on ``model`` and once per step on the randomised copy.
        layers: module names to randomise, top (logits) first, cumulatively (``""``: the model's own parameters);
            default :func:`default_sanity_layers`.
        seed: re-initialisation seed (step ``i`` uses ``seed + i``).
        batch_size: images per explain call.

    Returns:
        Spearman correlation per step and image (on the CPU); NaN for images whose original map is constant.

    Raises:
        ValueError: on malformed inputs or an unknown layer name.

    Example:
        >>> result = cascading_randomization(model, images, classes, lambda m: GradCAM(m))
        >>> dict(zip(result.layers, result.mean_spearman.tolist()))
    """
    images, classes = check_inputs(model, images, classes)
    check_batch_size(batch_size)
    if not callable(make_explain):
        raise TypeError(f"make_explain must be a callable model -> explain function, got {type(make_explain).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    names = resolve_sanity_layers(model, layers)
    randomized = copy.deepcopy(model)  # before explaining: hooks the explain function leaves are not copied
    randomized.eval()
    with eval_mode(model):
        original = compute_maps(make_explain(model), images, classes, batch_size=batch_size)
    varies = ~_is_constant(original)
    correlations = []
    for step, name in enumerate(names):
        _reinitialize(randomized.get_submodule(name), seed + step, recurse=bool(name))
        maps = compute_maps(make_explain(randomized), images, classes, batch_size=batch_size)
        rho = spearman(original, maps)
        correlations.append(torch.where(varies & _is_constant(maps), 0.0, rho).cpu())
    return SanityResult(layers=names, spearman=torch.stack(correlations))
