"""Test accuracy of a shipped CIFAR-10 model, loaded the way a timm user loads it, scored another way than training.

    python benchmarks/cifar10_accuracy.py resnet10w32_cifar10 --data ~/.cache/visattn-data/cifar10/test
    python benchmarks/cifar10_accuracy.py resnet10w32_cifar10 --data /data/cifar-10-batches-py     # lossless

``timm.create_model(name, pretrained=True)`` reads the file in ``weights/``; images go through timm's own eval
transform (``resolve_data_config`` + ``create_transform``) in float32, not through visattn's data pipeline. ``--data``
is an ImageFolder test split (``<class>/*.jpg|png``, CIFAR-10's class order) or CIFAR-10's python folder (or the
folder holding it), whose ``test_batch`` holds the original, never-compressed pixels; visattn's ``load_cifar`` reads
it without running pickled code. Prints top-1 beside the figure recorded in the file
(``test_acc`` in its safetensors metadata, measured on the JPEG copy under bf16 autocast at the end of training).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors import safe_open
from timm.data import create_transform, resolve_data_config

import visattn  # noqa: F401  (registers the models)
from visattn.data.cifar import CIFAR_LAYOUTS, load_cifar
from visattn.models.pretrained import SHIPPED, WEIGHTS_DIR
from visattn.system.machine import describe_machine

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def load_images(data: Path) -> tuple[list[Image.Image], np.ndarray, str]:
    """The test images and labels of ``data`` (an ImageFolder split or CIFAR-10's python folder) and a description."""
    folder = CIFAR_LAYOUTS["cifar10"]["folder"]
    for root in (data.parent, data):  # --data is cifar-10-batches-py itself, or the folder holding it
        if (root / folder / "test_batch").is_file():
            pixels, labels, _ = load_cifar("cifar10", root, "test")
            return [Image.fromarray(p) for p in pixels], np.asarray(labels), f"{root / folder} (lossless)"
    folders = sorted(p for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
    if [p.name for p in folders] != list(CIFAR10_CLASSES):
        raise SystemExit(f"--data {data}: expected CIFAR-10's python folder (with test_batch) or an ImageFolder split "
                         f"with the folders {', '.join(CIFAR10_CLASSES)}; found {[p.name for p in folders]}")
    images, labels = [], []
    for label, folder in enumerate(folders):
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() in SUFFIXES:
                with Image.open(file) as im:
                    images.append(im.convert("RGB"))
                labels.append(label)
    return images, np.asarray(labels), f"{data} (image files)"


@torch.no_grad()
def accuracy(model_name: str, images: list[Image.Image], labels: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 of ``timm.create_model(model_name, pretrained=True)`` on the images, in float32 with timm's transform."""
    model = timm.create_model(model_name, pretrained=True).eval()
    transform = create_transform(**resolve_data_config(model=model))
    correct = 0
    for start in range(0, len(images), batch_size):
        x = torch.stack([transform(im) for im in images[start:start + batch_size]])
        correct += int((model(x).argmax(1).numpy() == labels[start:start + batch_size]).sum())
    return correct / len(images)


def recorded(model_name: str) -> dict[str, str]:
    """The safetensors metadata of a shipped model's file."""
    with safe_open(str(WEIGHTS_DIR / SHIPPED[model_name].file), framework="pt") as f:
        return f.metadata() or {}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cifar = [name for name in SHIPPED if name.endswith("_cifar10")]
    parser.add_argument("models", nargs="+", metavar="model", help=f"shipped CIFAR-10 models: {', '.join(cifar)}")
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder test split or cifar-10-batches-py")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in cifar]
    if unknown:
        parser.error(f"unknown models {unknown}; valid: {', '.join(cifar)}")
    images, labels, where = load_images(args.data.expanduser())
    print(f"{len(images)} test images from {where}; {describe_machine()}")
    results = {}
    for name in args.models:
        meta = recorded(name)
        results[name] = accuracy(name, images, labels)
        at_training = float(json.loads(meta["test_acc"])) if "test_acc" in meta else float("nan")
        print(f"{name}: top-1 {100 * results[name]:.2f} % (float32, timm transform); recorded at training "
              f"{100 * at_training:.2f} % (JPEG copy, bf16)")
    return results


if __name__ == "__main__":
    main()
