"""A study's results for people: summary.json, summary.md, accuracy_vs_cost.png and curves.png.

Every figure comes from the runs' records alone, so the committed ``summary.json`` can redraw the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_write, atomic_write_json, atomic_write_text
from ..system.machine import describe_machine
from .stats import mean_std, paired_difference

__all__ = ["aggregate", "write_report", "markdown_summary"]


def aggregate(records: Sequence[dict[str, Any]], variants: Sequence[str], baseline: str,
              machines: Sequence[Any] = ()) -> dict[str, dict[str, Any]]:
    """Per variant: runs, test top-1 mean and std, costs per machine, and the paired difference to ``baseline``.

    ``machines`` numbers the records' ``machine`` entries (from 1, as summary.md does); without it all runs count as
    one machine's.
    """
    base = {r["seed"]: r["test_acc"] for r in records if r["variant"] == baseline}
    out: dict[str, dict[str, Any]] = {}
    for name in variants:
        rows = [r for r in records if r["variant"] == name]
        if not rows:
            continue
        acc_mean, acc_std = mean_std([r["test_acc"] for r in rows])
        entry: dict[str, Any] = {
            "runs": len(rows),
            "seeds": sorted(r["seed"] for r in rows),
            "test_acc_mean": acc_mean,
            "test_acc_std": acc_std,
            "best_val_test_acc_mean": mean_std([r["best_val_test_acc"] for r in rows
                                                if r.get("best_val_test_acc") is not None])[0],
            "params": rows[0]["params"],
            "flops": rows[0]["flops"],
            "cost_by_machine": _costs(rows, machines),
        }
        if name != baseline:
            diff = paired_difference({r["seed"]: r["test_acc"] for r in rows}, base)
            entry["vs_baseline"] = {"mean": diff.mean, "ci95_low": diff.low, "ci95_high": diff.high,
                                    "pairs": diff.pairs, "includes_zero": diff.includes_zero,
                                    "verdict": diff.verdict}
        out[name] = entry
    return out


def _costs(rows: Sequence[dict[str, Any]], machines: Sequence[Any]) -> list[dict[str, Any]]:
    """Speed and time of ``rows`` on each machine they ran on: machines differ by 2x and more, so no mean over them."""
    out = []
    for number, machine in enumerate(machines or [None], start=1):
        mine = [r for r in rows if not machines or r.get("machine") == machine]
        if not mine:
            continue
        minutes_mean, minutes_std = mean_std([r["train_seconds"] / 60 for r in mine])
        out.append({
            "machine": number,
            "runs": len(mine),
            "train_img_s_mean": mean_std([r["train_img_s"] for r in mine if r.get("train_img_s")])[0],
            "train_minutes_mean": minutes_mean,
            "train_minutes_std": minutes_std,
            # CPU time of the runs that logged it for every epoch (robust to other work sharing the machine).
            "cpu_minutes_mean": mean_std([r["cpu_seconds"] / 60 for r in mine if r.get("cpu_seconds")])[0],
        })
    return out


def _per_machine(costs: Sequence[dict[str, Any]], key: str, digits: int, several: bool) -> str:
    """One cost per machine, e.g. ``"47.0 (1), 24.9 (2)"``; without the machine's number where the grid has one."""
    cells = [("-" if not math.isfinite(c[key]) else f"{c[key]:.{digits}f}") + (f" ({c['machine']})" if several else "")
             for c in costs]
    return ", ".join(cells) or "-"


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.{digits}f}"


def _signed_pct(value: float) -> str:
    return f"{100 * value:+.2f}"  # finite: intervals are printed only over two or more pairs


def markdown_summary(summary: dict[str, Any]) -> str:
    """The table a person reads: mean +- std per variant, and each block's paired difference to the baseline."""
    baseline = summary["baseline"]
    machines = summary["machines"]
    if len(machines) == 1:
        where = f"Machine: {describe_machine(machines[0])}."
    else:  # a grid shared among machines: times compare only within one
        where = ("Machines (speed and minutes are given per machine, in brackets, and compare only within one): " +
                 "; ".join(f"({i}) {describe_machine(m)}" for i, m in enumerate(machines, start=1)) + ".")
    lines = [f"# {summary['title']}", "",
             f"{summary['finished']} of {summary['planned']} runs finished. Test top-1 is the last epoch's weights "
             f"on the data set's own test split, which no run uses for any choice (the validation split held out of "
             f"the training images draws the curves and picks the best epoch of the second column of the runs "
             f"table). {where}", "",
             f"| variant | runs | test top-1 % (mean +- std) | vs {baseline}, paired (95 % CI) | params | MFLOPs "
             f"| train img/s | minutes per run | CPU minutes per run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, v in summary["variants"].items():
        if name == baseline:
            versus = "(baseline)"
        else:
            d = v["vs_baseline"]
            if d["pairs"] >= 2:
                versus = f"{_signed_pct(d['mean'])} [{_signed_pct(d['ci95_low'])}, {_signed_pct(d['ci95_high'])}]: "
                versus += d["verdict"]
            elif d["pairs"] == 1:  # a difference, but no interval yet
                versus = f"{_signed_pct(d['mean'])} (one seed: no interval)"
            else:
                versus = f"- (no {baseline} run of the same seeds yet)"
        spread = f" +- {_pct(v['test_acc_std'])}" if v["runs"] > 1 else ""

        def costs(key: str, digits: int, v: dict[str, Any] = v) -> str:
            return _per_machine(v["cost_by_machine"], key, digits, several=len(machines) > 1)

        lines.append(f"| {name} | {v['runs']} | {_pct(v['test_acc_mean'])}{spread} | {versus} "
                     f"| {v['params'] / 1e6:.2f}M | {v['flops'] / 1e6:.0f} | {costs('train_img_s_mean', 0)} "
                     f"| {costs('train_minutes_mean', 1)} | {costs('cpu_minutes_mean', 1)} |")
    lines += ["", "Differences are in percentage points, paired by seed (the runs of a seed share data order and "
              "augmentations); the interval is mean +- t(0.975, n-1) x std / sqrt(n) over the pairs. An interval that "
              "includes 0 means these seeds cannot tell the block from the baseline. Minutes are wall time of the "
              "training loop (evaluation included); CPU minutes add up all threads' CPU time, which other work on the "
              "same machine barely changes.", "",
              "## Runs", "", "| variant | seed | test top-1 % | at best val epoch % | best epoch | epochs | minutes "
              "| precision | machine |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(summary["records"], key=lambda r: (list(summary["variants"]).index(r["variant"]), r["seed"])):
        machine = machines.index(r.get("machine")) + 1 if r.get("machine") in machines else "-"
        lines.append(f"| {r['variant']} | {r['seed']} | {_pct(r['test_acc'])} | {_pct(r.get('best_val_test_acc'))} "
                     f"| {r.get('best_epoch')} | {r['epochs']} | {r['train_seconds'] / 60:.1f} | {r.get('amp')} "
                     f"| {machine} |")
    return "\n".join(lines) + "\n"


def write_report(records: Sequence[dict[str, Any]], study: Any, *, planned: int, results_dir: Path) -> dict[str, Any]:
    """Write summary.json, summary.md, accuracy_vs_cost.png and curves.png into ``results_dir``; returns the summary."""
    order = [v for v in study.variants if any(r["variant"] == v for r in records)]
    machines = _distinct([r.get("machine") for r in records])
    summary = {
        "title": study.title,
        "train_config": Path(study.train).as_posix(),
        "baseline": study.baseline,
        "planned": planned,
        "finished": len(records),
        "machines": machines,
        "variants": aggregate(records, order, study.baseline, machines),
        "records": list(records),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results_dir / "summary.json", summary)
    atomic_write_text(results_dir / "summary.md", markdown_summary(summary))
    plot_accuracy_vs_cost(summary, results_dir / "accuracy_vs_cost.png")
    plot_curves(summary, results_dir / "curves.png")
    return summary


def _distinct(values: Sequence[Any]) -> list[Any]:
    """The values in order of first appearance, each once (dicts are not hashable, so no set)."""
    out: list[Any] = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_MARKERS = "osD^v<>p"


def plot_accuracy_vs_cost(summary: dict[str, Any], path: Path) -> None:
    """Test top-1 (mean +- std over seeds) against training minutes and against parameters, one point per variant.

    Minutes compare only within one machine: where the runs come from several, the time panel has one point per
    variant and machine (marker: machine, numbered as in summary.md), at the variant's accuracy over all its seeds.
    """
    plt = _pyplot()
    machines = summary.get("machines") or []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for index, (name, v) in enumerate(summary["variants"].items()):
        color = f"C{index}"
        acc, acc_err = 100 * v["test_acc_mean"], 100 * _finite(v["test_acc_std"])
        for cost in v["cost_by_machine"]:
            mean, std = cost["train_minutes_mean"], cost["train_minutes_std"]
            axes[0].errorbar(mean, acc, xerr=_finite(std), yerr=acc_err, fmt=_MARKERS[(cost["machine"] - 1) % len(
                _MARKERS)], color=color, capsize=3)
            axes[0].annotate(name, (mean, acc), textcoords="offset points", xytext=(5, 4), fontsize=8, color=color)
        axes[1].errorbar(v["params"] / 1e6, acc, yerr=acc_err, fmt="o", color=color, capsize=3,
                         label=f"{name} (n={v['runs']})")
        axes[1].annotate(name, (v["params"] / 1e6, acc), textcoords="offset points", xytext=(5, 4), fontsize=8,
                         color=color)
    xlabel = "training time per run (minutes)"
    if len(machines) > 1:
        keys = ", ".join(f"{_MARKERS[i % len(_MARKERS)]}: machine {i + 1}" for i in range(len(machines)))
        xlabel += f"\nmarker {keys} of summary.md (minutes compare within one)"
    axes[0].set(xlabel=xlabel, ylabel="test top-1 (%)", title="accuracy vs time")
    axes[1].set(xlabel="parameters (millions)", title="accuracy vs parameters")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle(f"{summary['title']}: mean +- std over seeds")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def plot_curves(summary: dict[str, Any], path: Path) -> None:
    """Validation accuracy and training loss per epoch, one line per variant (mean over seeds, band = min..max)."""
    plt = _pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, name in enumerate(summary["variants"]):
        curves = [r["curve"] for r in summary["records"] if r["variant"] == name]
        for ax, key, scale in ((ax_acc, "val_acc", 100), (ax_loss, "train_loss", 1)):
            by_epoch: dict[int, list[float]] = {}
            for curve in curves:
                for point in curve:
                    if point.get(key) is not None:
                        by_epoch.setdefault(point["epoch"], []).append(scale * point[key])
            if not by_epoch:
                continue
            epochs = sorted(by_epoch)
            ax.plot(epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs], color=f"C{index}", label=name)
            ax.fill_between(epochs, [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs],
                            color=f"C{index}", alpha=0.15)
    ax_acc.set(xlabel="epoch", ylabel="validation top-1 (%)", title="validation accuracy (held-out train split)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="training loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{summary['title']}: learning curves, mean over seeds (band: min to max)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0
