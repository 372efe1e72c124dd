"""How far a linear model gets on the shapes dataset: multinomial logistic regression on raw, standardised pixels.

The shapes data (``visattn.data.synthetic``) is meant to need spatial reasoning: the class is an outline that appears
at any position, angle, size and colour over clutter. A pixels-only linear classifier should therefore stay far below
a small CNN (the quickstart's ResNet + CBAM reaches >= 95 %). This script measures it, full-batch L-BFGS on the CPU,
in a few seconds to a minute.

Usage:
    python benchmarks/shapes_linear_baseline.py [--train-samples 10000] [--val-samples 2000] [--epochs 100]
        [--seed 0] [--image-size 32] [--weight-decay 1e-2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from visattn.data.synthetic import CLASSES, ShapesDataset


def pixels_and_labels(dataset: ShapesDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All images as a float matrix ``(N, H*W*3)`` in [0, 1], and the labels."""
    images = np.stack([dataset.sample(i).image for i in range(len(dataset))])
    x = torch.from_numpy(images).reshape(len(dataset), -1).float() / 255.0
    return x, torch.tensor(dataset.targets)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=10_000)
    parser.add_argument("--val-samples", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=100, help="full-batch L-BFGS iterations")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (the fit itself is deterministic)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--weight-decay", type=float, default=1e-2, help="L2 penalty on the weights (mean loss scale)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.weight_decay < 0:
        parser.error(f"--weight-decay must be >= 0, got {args.weight_decay}")

    # --- data: rendered in the dataset constructors (ValueError there for bad sizes or seeds) ---
    start = time.perf_counter()
    train = ShapesDataset("train", num_samples=args.train_samples, image_size=args.image_size, seed=args.seed)
    val = ShapesDataset("val", num_samples=args.val_samples, image_size=args.image_size, seed=args.seed)
    x_train, y_train = pixels_and_labels(train)
    x_val, y_val = pixels_and_labels(val)
    # Standardise each pixel with the training statistics: L-BFGS converges far better on whitened-scale inputs.
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-3)
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    print(f"data: {len(train)} train / {len(val)} val images of {args.image_size}x{args.image_size}, "
          f"{len(CLASSES)} classes, rendered in {time.perf_counter() - start:.1f} s")

    # --- model and optimisation: convex problem, so full-batch L-BFGS finds the optimum without tuning ---
    model = nn.Linear(x_train.shape[1], len(CLASSES))
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=args.epochs, history_size=20,
                                  line_search_fn="strong_wolfe")
    loss_fn = nn.CrossEntropyLoss()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(model(x_train), y_train) + 0.5 * args.weight_decay * model.weight.square().sum()
        loss.backward()
        return loss

    start = time.perf_counter()
    optimizer.step(closure)
    fit_s = time.perf_counter() - start
    with torch.no_grad():
        loss = loss_fn(model(x_train), y_train).item()

    # --- evaluation ---
    result = {"train_acc": accuracy(model, x_train, y_train), "val_acc": accuracy(model, x_val, y_val)}
    print(f"logistic regression on raw pixels: train loss {loss:.3f}, fit {fit_s:.1f} s, "
          f"train acc {100 * result['train_acc']:.1f} %, val acc {100 * result['val_acc']:.1f} % "
          f"(chance {100 / len(CLASSES):.0f} %)")
    return result


if __name__ == "__main__":
    main()
