"""How much each class leans on the image: the mean gate of trained gated-fusion models, per class.

    python benchmarks/fusion_gates.py runs/study/shapes_fusion/fused-seed* [--out results/shapes_fusion]

For every run folder, the best weights classify the run's test split (the data set's own val split when the run held
its validation images out of train); the gate ``z`` of :class:`visattn.GatedFusion` (1 = all from the image, 0 = all
from the side vector) is averaged over its features and over each class's images. Prints a table (mean +- std over
the runs) and writes ``gates_per_class.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from visattn.data.datasets import build_datasets
from visattn.data.folder import collate_skipping
from visattn.files import atomic_write
from visattn.pipelines.trained import load_trained


def class_gates(run_dir: Path, batch_size: int = 256) -> tuple[list[str], np.ndarray, float]:
    """Per class, the mean gate over its test images; and the run's test accuracy."""
    trained = load_trained(run_dir)
    model = trained.model.eval()
    if getattr(model, "fuse", None) is None:
        raise ValueError(f"{run_dir} holds no gated-fusion model (model.fusion.inputs must be 'both')")
    data = build_datasets(trained.config.data)
    split = data.test if data.test is not None else data.val
    sums, counts = np.zeros(len(trained.classes)), np.zeros(len(trained.classes))
    correct = total = 0
    with torch.no_grad():
        for (images, side), labels, _ in DataLoader(split, batch_size=batch_size, collate_fn=collate_skipping):
            logits = model(images, side)
            gate = model.fuse.gate.flatten(1).mean(1)
            np.add.at(sums, labels.numpy(), gate.numpy())
            np.add.at(counts, labels.numpy(), 1)
            correct += int((logits.argmax(1) == labels).sum())
            total += len(labels)
    return list(trained.classes), sums / np.maximum(counts, 1), correct / max(total, 1)


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of gated-fusion trainings")
    parser.add_argument("--out", type=Path, default=None, help="folder for gates_per_class.png (default: none)")
    args = parser.parse_args(argv)
    results = [class_gates(run) for run in args.runs]
    classes = results[0][0]
    gates = np.stack([g for _, g, _ in results])  # runs x classes
    mean, std = gates.mean(0), gates.std(0, ddof=1) if len(results) > 1 else np.zeros(len(classes))
    accuracies = ", ".join(f"{100 * acc:.1f} %" for _, _, acc in results)
    print(f"mean gate per class over {len(results)} run(s) (1 = all image, 0 = all side vector); test top-1: "
          f"{accuracies}")
    print("| class | mean gate | std over runs |\n|---|---|---|")
    for name, m, s in zip(classes, mean, std, strict=True):
        print(f"| {name} | {m:.3f} | {s:.3f} |")
    if args.out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.6))
        ax.bar(classes, mean, yerr=std, capsize=3, color="C0")
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set(ylim=(0, 1), ylabel="mean gate z (1 = image)",
               title=f"Gated fusion: how much each class takes from the image ({len(results)} seeds)")
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out / "gates_per_class.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)
        print(f"written: {args.out / 'gates_per_class.png'}")
    return {name: (float(m), float(s)) for name, m, s in zip(classes, mean, std, strict=True)}


if __name__ == "__main__":
    main()
