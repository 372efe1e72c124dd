"""What the pointing game can give on the shapes data: maps that point at known spots, per class, beside CAM methods.

The pointing game (``visattn.faithfulness.pointing_game``) counts a hit when a map's maximum lies on the object's
visible pixels. On the built-in shapes data that mask leaves out a ring's hole and a crescent's bite, so where an
"ideal" map should point depends on what it finds ideal. This script scores three maps that need no model, each a
single peak:

- image centre: Zhang et al.'s "Center" baseline, the point any map beats by looking at the image;
- object centre (oracle): the centre of the object's bounding circle, where a detector that has found the object
  and knows its extent would point (``ShapeSample.centre``; for a ring it is in the hole);
- mask centroid (oracle): the centre of mass of the visible object pixels (for a ring, again in the hole).

With ``--weights``, the CAM methods of ``--methods`` on ``--layers`` are scored on the same images, each map
explaining the true class, so their per-class hits read against the oracles (the same images as ``visattn
evaluate-cams --num-images N``: the first N validation images of the weights' config).

Usage:
    python benchmarks/shapes_pointing_oracles.py [--num-images 500] [--image-size 32] [--seed 0] [--tolerance 0 2]
        [--weights weights/quickstart_resnet18_cbam_shapes.safetensors --methods gradcam --layers layer3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from visattn.cam import create_cam
from visattn.data.synthetic import CLASSES, ShapesDataset
from visattn.faithfulness import pointing_game
from visattn.faithfulness.perturbation import compute_maps
from visattn.pipelines.samples import validation_batch
from visattn.pipelines.trained import TrainedModel, load_trained


def peak_maps(points: np.ndarray, size: int) -> torch.Tensor:
    """``(N, size, size)`` maps that are 1 at one pixel each and 0 elsewhere; ``points`` are ``(N, 2)`` pixel (x, y)."""
    maps = torch.zeros(len(points), size, size)
    xs, ys = torch.from_numpy(points).long().clamp(0, size - 1).unbind(1)
    maps[torch.arange(len(points)), ys, xs] = 1.0
    return maps


def oracle_points(val: ShapesDataset, count: int) -> dict[str, np.ndarray]:
    """Integer pixel (x, y) of each image's centre, object centre and mask centroid, for the first ``count`` images."""
    size = val.image_size
    centre, centroid = [], []
    for i in range(count):
        s = val.sample(i)
        centre.append(s.centre)  # continuous coordinates: the pixel is the integer part
        ys, xs = np.nonzero(s.mask)
        centroid.append((xs.mean() + 0.5, ys.mean() + 0.5))  # pixel j's centre is at j + 0.5
    middle = (size - 1) // 2  # centre_baseline's rule: the first central pixel for an even side
    return {
        "image centre": np.full((count, 2), middle),
        "object centre (oracle)": np.floor(np.array(centre)).astype(int),
        "mask centroid (oracle)": np.floor(np.array(centroid)).astype(int),
    }


def cam_maps(trained: TrainedModel, methods: list[str], layers: list[str], count: int) -> dict[str, torch.Tensor]:
    """Maps of each CAM method for the first ``count`` validation images of the model's config (true classes)."""
    images, labels, _ = validation_batch(trained.config.data, count)
    trained.model.eval()
    maps = {}
    for method in methods:
        with create_cam(method, trained.model, layers) as cam:  # hooks removed on exit
            maps[method] = compute_maps(cam, images, labels, batch_size=100)
    return maps


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=500, help="the first N validation images")
    parser.add_argument("--image-size", type=int, default=32, help="ignored with --weights (the config's is used)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; ignored with --weights")
    parser.add_argument("--tolerance", type=float, nargs="+", default=[0.0, 2.0], help="pixels")
    parser.add_argument("--weights", help="a trained shapes model (.safetensors with its config) to score too")
    parser.add_argument("--methods", nargs="+", default=["gradcam"], help="CAM methods for --weights")
    parser.add_argument("--layers", nargs="+", default=["layer3"], help="target layers for --weights (fused)")
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error(f"--num-images must be >= 1, got {args.num_images}")
    if any(t < 0 for t in args.tolerance):
        parser.error(f"--tolerance must be >= 0 pixels, got {args.tolerance}")

    maps: dict[str, torch.Tensor] = {}
    size, seed = args.image_size, args.seed
    if args.weights:
        trained = load_trained(args.weights)
        size, seed = trained.config.data.image_size, trained.config.data.seed
        maps = cam_maps(trained, args.methods, args.layers, args.num_images)
    val = ShapesDataset("val", num_samples=args.num_images, image_size=size, seed=seed)
    masks = torch.stack([torch.from_numpy(val.sample(i).mask) for i in range(len(val))]).bool()
    labels = np.array(val.targets)
    for name, points in oracle_points(val, len(val)).items():
        maps[name] = peak_maps(points, size)

    results: dict[str, dict[str, list[float]]] = {}
    header = ["map", "tolerance", "all", *CLASSES]
    print(f"pointing game on the first {len(val)} validation images ({size}x{size}, seed {seed}); "
          f"share of images whose map peaks on the object mask")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, m in maps.items():
        for tolerance in args.tolerance:
            hits = pointing_game(m, masks, tolerance=tolerance).hits.numpy()
            per_class = [float(hits[labels == c].mean()) for c in range(len(CLASSES))]
            results.setdefault(name, {})[f"{tolerance:g}px"] = [float(hits.mean()), *per_class]
            cells = [f"{100 * v:.1f} %" for v in (hits.mean(), *per_class)]
            print(f"| {name} | {tolerance:g} px | " + " | ".join(cells) + " |")
    return results


if __name__ == "__main__":
    main()
