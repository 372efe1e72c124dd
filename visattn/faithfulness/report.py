"""Every faithfulness metric for every saliency method, as one report: a table, a JSON file and a figure.

The metrics and the direction in which each is better:

=====================  ======  ================================================================
metric                 better  source
=====================  ======  ================================================================
deletion AUC           lower   RISE, Petsiuk et al. 2018 (:mod:`.perturbation`)
insertion AUC          higher  RISE, Petsiuk et al. 2018 (:mod:`.perturbation`)
ROAD MoRF / LeRF       ↓ / ↑   Rong et al. 2022 (:mod:`.road`); the gap LeRF - MoRF is better higher
pointing game          higher  Zhang et al. 2016 (:mod:`.pointing`), needs object masks
energy pointing game   higher  Wang et al. 2020 (Score-CAM), needs object masks
sanity Spearman        lower   Adebayo et al. 2018 (:mod:`.sanity`), after randomising every layer
=====================  ======  ================================================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from ..files import atomic_write, atomic_write_text
from ..utils import eval_mode
from .perturbation import (
    Baseline,
    Explain,
    PerturbationResult,
    check_batch_size,
    check_inputs,
    check_steps,
    compute_maps,
    deletion,
    insertion,
)
from .pointing import PointingResult, centre_baseline, pointing_game
from .road import RoadResult, check_percentiles, road
from .sanity import SanityResult, cascading_randomization, resolve_sanity_layers

__all__ = ["MethodScores", "FaithfulnessReport", "evaluate_faithfulness", "METRICS"]

MakeExplain = Callable[[nn.Module], Explain]

# (key, column label, arrow): the arrow says which direction is better.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("deletion_auc", "deletion AUC", "↓"),
    ("insertion_auc", "insertion AUC", "↑"),
    ("road_morf", "ROAD MoRF", "↓"),
    ("road_lerf", "ROAD LeRF", "↑"),
    ("road_gap", "ROAD gap", "↑"),
    ("pointing_game", "pointing", "↑"),
    ("energy_pointing_game", "energy pointing", "↑"),
    ("sanity_spearman", "sanity Spearman", "↓"),
)


def pointing_key(tolerance: float, first: bool) -> str:
    """Scalar key of the pointing game at ``tolerance``: ``pointing_game`` for the first, then ``pointing_game@2px``."""
    return "pointing_game" if first else f"pointing_game@{tolerance:g}px"


@dataclass
class MethodScores:
    """All results for one saliency method; ``pointing``/``sanity`` are None when not run.

    ``pointing`` is the pointing games at the first tolerance asked for; ``pointing_at`` holds every tolerance's.
    """

    deletion: PerturbationResult
    insertion: PerturbationResult
    road: RoadResult
    pointing: PointingResult | None = None
    sanity: SanityResult | None = None
    pointing_at: dict[float, PointingResult] = field(default_factory=dict)

    def scalars(self) -> dict[str, float | None]:
        """One number per metric (keys of :data:`METRICS`, plus ``pointing_game@<t>px`` for further tolerances);
        ``sanity_spearman`` is after the last step."""
        further = {pointing_key(t, False): r.hit_rate for t, r in list(self.pointing_at.items())[1:]}
        return {
            "deletion_auc": self.deletion.mean_auc,
            "insertion_auc": self.insertion.mean_auc,
            "road_morf": self.road.morf_mean,
            "road_lerf": self.road.lerf_mean,
            "road_gap": self.road.gap,
            "pointing_game": self.pointing.hit_rate if self.pointing else None,
            "energy_pointing_game": self.pointing.energy_mean if self.pointing else None,
            "sanity_spearman": float(self.sanity.mean_spearman[-1]) if self.sanity else None,
            **further,
        }


@dataclass
class FaithfulnessReport:
    """Results of :func:`evaluate_faithfulness`, per method name, with the settings that produced them."""

    methods: dict[str, MethodScores]
    n_images: int
    settings: dict[str, Any] = field(default_factory=dict)
    pointing_baseline: PointingResult | None = None  # centre point / uniform map (:func:`.pointing.centre_baseline`)
    baseline_at: dict[float, PointingResult] = field(default_factory=dict)  # the same at every tolerance

    def baseline_scores(self) -> dict[str, float] | None:
        """The pointing games' centre / uniform-map baseline (keys of :data:`METRICS`, and ``pointing_game@<t>px``
        for further tolerances); None without masks."""
        if self.pointing_baseline is None:
            return None
        further = {pointing_key(t, False): r.hit_rate for t, r in list(self.baseline_at.items())[1:]}
        return {"pointing_game": self.pointing_baseline.hit_rate,
                "energy_pointing_game": self.pointing_baseline.energy_mean, **further}

    def columns(self) -> list[tuple[str, str, str]]:
        """The table's ``(key, label, arrow)`` columns: :data:`METRICS`, with one pointing column per tolerance when
        several were asked for."""
        tolerances = list(next(iter(self.methods.values())).pointing_at) if self.methods else []
        if len(tolerances) < 2:
            return list(METRICS)
        columns = []
        for key, label, arrow in METRICS:
            if key == "pointing_game":
                columns += [(pointing_key(t, i == 0), f"{label} ({t:g} px)", arrow) for i, t in enumerate(tolerances)]
            else:
                columns.append((key, label, arrow))
        return columns

    def table(self, markdown: bool = False) -> str:
        """Aligned text (or markdown) table, one row per method, arrows marking the better direction.

        A second table lists the sanity-check Spearman correlation after each randomisation step.
        """
        columns = self.columns()
        header = ["method", *(f"{label} {arrow}" for _, label, arrow in columns)]
        scalars = {name: scores.scalars() for name, scores in self.methods.items()}
        rows = [[name, *(_fmt(values[key]) for key, _, _ in columns)] for name, values in scalars.items()]
        baseline = self.baseline_scores()
        if baseline is not None:
            rows.append(["centre/uniform baseline",
                         *(_fmt(baseline[key]) if key in baseline else "" for key, _, _ in columns)])
        parts = [_render(header, rows, markdown)]
        sanity = {name: s.sanity for name, s in self.methods.items() if s.sanity is not None}
        if sanity:
            layers = next(iter(sanity.values())).layers
            header = ["method", *(("+" if i else "") + _layer_label(layer) for i, layer in enumerate(layers))]
            rows = [[name, *(_fmt(v) for v in s.mean_spearman.tolist())] for name, s in sanity.items()]
            parts.append("sanity check: Spearman ↓ between original maps and maps after randomising these layers "
                         "(cumulatively, from the top)\n" + _render(header, rows, markdown))
        excluded = {s.pointing.n_excluded for s in self.methods.values() if s.pointing is not None}
        if excluded - {0}:
            parts.append(f"pointing games: {max(excluded)} of {self.n_images} images excluded (empty mask)")
        constant = {name: s.n_excluded for name, s in sanity.items() if s.n_excluded}
        if constant:
            parts.append("sanity check: images excluded because their original map is constant (no ranking to "
                         "keep): " + ", ".join(f"{name} {n} of {self.n_images}" for name, n in constant.items()))
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: settings, scalar scores, and the mean curves per method (NaN written as null)."""
        methods = {}
        for name, s in self.methods.items():
            entry: dict[str, Any] = {
                "scores": s.scalars(),
                "deletion_curve": s.deletion.mean_curve.tolist(),
                "insertion_curve": s.insertion.mean_curve.tolist(),
                "road_morf_curve": s.road.morf_curve.tolist(),
                "road_lerf_curve": s.road.lerf_curve.tolist(),
            }
            if s.pointing is not None:
                entry["pointing_excluded"] = s.pointing.n_excluded
            if s.sanity is not None:
                entry["sanity"] = {"layers": s.sanity.layers, "spearman": s.sanity.mean_spearman.tolist(),
                                   "excluded": s.sanity.n_excluded}
            methods[name] = entry
        first = next(iter(self.methods.values()))
        return _json_safe({
            "n_images": self.n_images,
            "settings": self.settings,
            "pointing_baseline": self.baseline_scores(),
            "fractions": first.deletion.fractions.tolist(),
            "road_percentiles": first.road.percentiles.tolist(),
            "better": {key: "lower" if arrow == "↓" else "higher" for key, _, arrow in [*METRICS, *self.columns()]},
            "methods": methods,
        })

    def plot(self) -> Figure:
        """Deletion, insertion, ROAD and sanity-check curves, one line (colour) per method."""
        fig = Figure(figsize=(12, 8.5), layout="constrained")
        (ax_del, ax_ins), (ax_road, ax_san) = fig.subplots(2, 2)
        for i, (name, s) in enumerate(self.methods.items()):
            colour = f"C{i % 10}"
            ax_del.plot(s.deletion.fractions, s.deletion.mean_curve, color=colour, label=f"{name} "
                        f"(AUC {s.deletion.mean_auc:.3f})")
            ax_ins.plot(s.insertion.fractions, s.insertion.mean_curve, color=colour, label=f"{name} "
                        f"(AUC {s.insertion.mean_auc:.3f})")
            ax_road.plot(s.road.percentiles, s.road.morf_curve, color=colour, marker="o", label=f"{name} MoRF")
            ax_road.plot(s.road.percentiles, s.road.lerf_curve, color=colour, marker="o", ls="--", label=f"{name} LeRF")
            if s.sanity is not None:
                ticks = ["original", *map(_layer_label, s.sanity.layers)]
                ax_san.plot(range(len(ticks)), [1.0, *s.sanity.mean_spearman.tolist()], color=colour, marker="o",
                            label=name)
                ax_san.set_xticks(range(len(ticks)), ticks, rotation=45, ha="right")
        ax_del.set(xlabel="fraction of pixels deleted", ylabel="target probability",
                   title="deletion (lower AUC better)")
        ax_ins.set(xlabel="fraction of pixels inserted", ylabel="target probability",
                   title="insertion (higher AUC better)")
        ax_road.set(xlabel="% pixels removed (noisy linear imputation)", ylabel="target probability",
                    title="ROAD: MoRF solid (lower better), LeRF dashed (higher better)")
        ax_san.axhline(0.0, color="grey", lw=0.8)
        ax_san.set(xlabel="randomised down to", ylabel="Spearman vs original maps",
                   title="cascading randomisation (lower better)")
        if not any(s.sanity is not None for s in self.methods.values()):
            ax_san.text(0.5, 0.5, "sanity check not run", ha="center", va="center", transform=ax_san.transAxes)
        for ax in (ax_del, ax_ins, ax_road, ax_san):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
        return fig

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``faithfulness.json`` and ``faithfulness.png`` to ``out_dir`` atomically; returns their paths."""
        out = Path(out_dir)
        paths = {"json": out / "faithfulness.json", "png": out / "faithfulness.png"}
        atomic_write_text(paths["json"], json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        fig = self.plot()
        atomic_write(paths["png"], lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        return paths


def evaluate_faithfulness(
        model: nn.Module,
        images: torch.Tensor,
        classes: torch.Tensor,
        masks: torch.Tensor | None,
        methods: Mapping[str, MakeExplain],
        *,
        out_dir: str | Path | None = None,
        steps: int = 21,
        percentiles: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
        deletion_baseline: Baseline = "zero",
        tolerance: float | Sequence[float] = 0,
        batch_size: int = 64,
        sanity: bool = True,
        sanity_layers: Sequence[str] | None = None,
        seed: int = 0,
        progress: bool = False,
) -> FaithfulnessReport:
    """Run deletion, insertion, ROAD, the pointing games and the sanity check for every method.

    Args:
        model: classifier mapping ``(B, C, H, W)`` to ``(B, K)`` logits; left unchanged.
        images: ``(B, C, H, W)`` normalised model input.
        classes: ``(B,)`` class to explain per image.
        masks: ``(B, H, W)`` bool object masks for the pointing games, or None to skip them. Images with an empty
            mask are excluded from the pointing games and counted in the table.
        methods: name -> ``make_explain``; ``make_explain(model)`` returns ``explain(images, classes) -> (B, H, W)``
            maps in ``[0, 1]``. It is also called on randomised copies of ``model`` by the sanity check.
        out_dir: if given, write ``faithfulness.json`` and ``faithfulness.png`` there.
        steps: points on the deletion/insertion curves.
        percentiles: ROAD removal percentages.
        deletion_baseline: deletion fill (see :func:`~.perturbation.deletion`); insertion starts from a blur.
        tolerance: pointing-game tolerance in pixels, or several (one pointing column each; the first is
            ``pointing_game``, the others ``pointing_game@<t>px``).
        batch_size: images per forward pass / explain call.
        sanity: run the cascading randomisation test (one deep copy of the model at a time).
        sanity_layers: layers to randomise, top first; default :func:`.sanity.default_sanity_layers`.
        seed: seed for the ROAD noise and the re-initialisation.
        progress: show a progress bar.

    Returns:
        The report; ``report.table()`` for a summary.

    Raises:
        ValueError: on malformed inputs or arguments.

    Example:
        >>> report = evaluate_faithfulness(model, images, labels, masks, {"gradcam": GradCAM, "random": random_maps},
        ...                                out_dir="runs/faith")
        >>> print(report.table())
    """
    images, classes = check_inputs(model, images, classes)
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError(f"methods must be a non-empty mapping of name -> make_explain(model), got {methods!r}")
    for name, make in methods.items():
        if not isinstance(name, str) or not callable(make):
            raise ValueError(f"methods must map str names to callables make_explain(model) -> explain, got "
                             f"{name!r}: {type(make).__name__}")
    check_steps(steps)
    check_percentiles(percentiles)
    check_batch_size(batch_size)
    if sanity:
        resolve_sanity_layers(model, sanity_layers)
    tolerances = _tolerances(tolerance)
    if masks is not None:  # fail before any work: the pointing game validates masks against maps of the right shape
        for t in tolerances:
            pointing_game(torch.zeros(images.shape[0], *images.shape[2:]), masks, tolerance=t, on_empty="exclude")
    per_step = 4 + (masks is not None) + bool(sanity)
    bar = tqdm(total=per_step * len(methods), disable=not progress, desc="faithfulness")
    results = {}
    try:
        for name, make in methods.items():
            bar.set_postfix_str(f"{name}: maps")
            with eval_mode(model):
                maps = compute_maps(make(model), images, classes, batch_size=batch_size)
            bar.update()
            common = {"steps": steps, "batch_size": batch_size}
            bar.set_postfix_str(f"{name}: deletion")
            deleted = deletion(model, images, classes, maps, baseline=deletion_baseline, **common)
            bar.update()
            bar.set_postfix_str(f"{name}: insertion")
            inserted = insertion(model, images, classes, maps, **common)
            bar.update()
            bar.set_postfix_str(f"{name}: ROAD")
            removed = road(model, images, classes, maps, percentiles=percentiles, seed=seed, batch_size=batch_size)
            bar.update()
            scores = MethodScores(deletion=deleted, insertion=inserted, road=removed)
            if masks is not None:
                scores.pointing_at = {t: pointing_game(maps, masks, tolerance=t, on_empty="exclude")
                                      for t in tolerances}
                scores.pointing = scores.pointing_at[tolerances[0]]
                bar.update()
            if sanity:
                bar.set_postfix_str(f"{name}: sanity")
                scores.sanity = cascading_randomization(model, images, classes, make, layers=sanity_layers, seed=seed,
                                                        batch_size=batch_size)
                bar.update()
            results[name] = scores
    finally:
        bar.close()
    settings = {"steps": steps, "percentiles": list(percentiles), "deletion_baseline": _setting(deletion_baseline),
                "insertion_baseline": "blur", "tolerance": tolerances[0] if len(tolerances) == 1 else list(tolerances),
                "seed": seed, "sanity": sanity}
    baselines = {} if masks is None else {t: centre_baseline(masks, tolerance=t, on_empty="exclude")
                                          for t in tolerances}
    report = FaithfulnessReport(methods=results, n_images=images.shape[0], settings=settings,
                                pointing_baseline=baselines.get(tolerances[0]), baseline_at=baselines)
    if out_dir is not None:
        report.save(out_dir)
    return report


def _setting(value: object) -> object:
    return f"tensor{tuple(value.shape)}" if isinstance(value, torch.Tensor) else value


def _tolerances(tolerance: float | Sequence[float]) -> tuple[float, ...]:
    values = (tolerance,) if isinstance(tolerance, (int, float)) else tuple(tolerance)
    labels = [f"{v:g}" if isinstance(v, (int, float)) else repr(v) for v in values]
    if not values or len(set(labels)) != len(labels):  # the columns and keys are named by the :g form
        raise ValueError(f"tolerance must be a number of pixels or a non-empty list of different ones, got "
                         f"{tolerance!r}")
    return values  # each is checked by pointing_game


def _layer_label(name: str) -> str:
    return name or "own parameters"  # "": the model's own parameters (see sanity.default_sanity_layers)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def _render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = [header, ["---"] * len(header), *rows]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [_line(header, widths), "  ".join("-" * w for w in widths), *(_line(r, widths) for r in rows)]
    return "\n".join(lines)


def _line(cells: list[str], widths: list[int]) -> str:
    # Names left-aligned, numbers right-aligned so their decimal points line up.
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
