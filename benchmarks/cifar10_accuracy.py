"""Test accuracy of a shipped CIFAR-10 model, loaded the way a timm user loads it, scored another way than training.

    python benchmarks/cifar10_accuracy.py resnet10w32_cifar10 --data ~/.cache/visattn-data/cifar10/test
    python benchmarks/cifar10_accuracy.py resnet10w32_cifar10 --data /data/cifar-10-batches-py     # lossless
    python benchmarks/cifar10_accuracy.py resnet10w32_cifar10 --data /tmp/cifar10-png \
        --same-images-from ~/.cache/visattn-data/cifar10/test      # lossless test-set samples beside their JPEGs

``timm.create_model(name, pretrained=True)`` reads the file in ``weights/``; images go through timm's own eval
transform (``resolve_data_config`` + ``create_transform``) in float32, not through visattn's data pipeline. ``--data``
is an ImageFolder test split (``<class>/*.jpg|png``, CIFAR-10's class order) or CIFAR-10's python folder (or the
folder holding it), whose ``test_batch`` holds the original, never-compressed pixels; visattn's ``load_cifar`` reads
it without running pickled code. Prints top-1 beside the figure recorded in the file
(``test_acc`` in its safetensors metadata, measured on the JPEG copy at the end of training, in the precision its
config's ``loop.amp`` names).

``--data`` may also be a folder of test-set samples named ``<prefix>_<index>_<label>.png``, ``index`` being the image's
place in CIFAR-10's test order: foolbox's wheel ships the first 20 test images so, losslessly
(``pip download foolbox==3.3.4 --no-deps`` and unzip its ``foolbox/data/cifar10_*.png``). ``--same-images-from``
then scores the same images from an ImageFolder copy that numbers each class's files in test order (the JPEG copy's
``<class>/0000.jpg`` is the class's first test image), checks that each pair shows one picture, and prints both
accuracies and how many predictions agree: what compression changes, image by image.
"""

from __future__ import annotations

import argparse
import json
import re
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
from visattn.study.stats import wilson_interval
from visattn.system.machine import describe_machine

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
SAMPLE_NAME = re.compile(r".*_(\d+)_(\d)\.png$")  # foolbox's cifar10_<index>_<label>.png
SAME_PICTURE = 20.0  # mean |difference| in 0-255 levels; quality-75 JPEG pairs differ by 4-8, other pictures by 40+


def load_samples(data: Path) -> tuple[list[Image.Image], np.ndarray, str] | None:
    """Test-set samples named ``<prefix>_<index>_<label>.png`` in ``data``: images, labels, a description; else None."""
    matches = [SAMPLE_NAME.match(f.name) for f in data.glob("*.png")] if data.is_dir() else []
    if not matches or not all(matches):
        return None
    images, labels, indices = [], [], []
    for match in sorted(matches, key=lambda m: int(m.group(1))):  # type: ignore[union-attr]
        index, label = match.groups()  # type: ignore[union-attr]
        with Image.open(data / match.string) as im:  # type: ignore[union-attr]
            images.append(im.convert("RGB"))
        labels.append(int(label))
        indices.append(int(index))
    if indices != list(range(len(indices))):
        raise SystemExit(f"--data {data}: the samples must be the first test images, indices 0-{len(indices) - 1}; "
                         f"found {indices}")
    return images, np.asarray(labels), f"{data} (the first {len(images)} test images as PNG, lossless)"


def same_images(folder: Path, samples: list[Image.Image], labels: np.ndarray) -> list[Image.Image]:
    """The copies in the ImageFolder split ``folder`` of the first test images ``samples`` (labels ``labels``)."""
    listed = {label: sorted(f for f in (folder / CIFAR10_CLASSES[label]).glob("*") if f.suffix.lower() in SUFFIXES)
              for label in set(labels.tolist())}
    copies, seen = [], dict.fromkeys(listed, 0)
    for sample, label in zip(samples, labels.tolist(), strict=True):
        files = listed[label]
        if seen[label] >= len(files):
            raise SystemExit(f"--same-images-from {folder}: {CIFAR10_CLASSES[label]} has only {len(files)} files")
        with Image.open(files[seen[label]]) as im:
            copy = im.convert("RGB")
        difference = np.abs(np.asarray(copy, dtype=np.float32) - np.asarray(sample, dtype=np.float32)).mean()
        if difference > SAME_PICTURE:
            raise SystemExit(f"--same-images-from {folder}: {files[seen[label]]} differs from test image "
                             f"{len(copies)} by {difference:.1f} levels on average, so that folder does not number "
                             "each class's files in test order")
        copies.append(copy)
        seen[label] += 1
    return copies


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
def predict(model_name: str, images: list[Image.Image], batch_size: int = 500) -> np.ndarray:
    """The classes ``timm.create_model(model_name, pretrained=True)`` predicts, in float32 with timm's transform."""
    model = timm.create_model(model_name, pretrained=True).eval()
    transform = create_transform(**resolve_data_config(model=model))
    batches = [model(torch.stack([transform(im) for im in images[start:start + batch_size]])).argmax(1)
               for start in range(0, len(images), batch_size)]
    return torch.cat(batches).numpy()


def top1(predicted: np.ndarray, labels: np.ndarray) -> str:
    """``"85.92 % (95 % CI 85.2-86.6)"``: top-1 with Wilson's interval, which matters for a few images."""
    right = int((predicted == labels).sum())
    low, high = wilson_interval(right, len(labels))
    return f"{100 * right / len(labels):.2f} % (95 % CI {100 * low:.1f}-{100 * high:.1f})"


def recorded(model_name: str) -> dict[str, str]:
    """The safetensors metadata of a shipped model's file."""
    with safe_open(str(WEIGHTS_DIR / SHIPPED[model_name].file), framework="pt") as f:
        return f.metadata() or {}


def training_precision(meta: dict[str, str]) -> str:
    """How the file's run computed: ``'float32'``, ``'bf16'``, ... from ``loop.amp`` of the config in its metadata."""
    amp = json.loads(meta.get("config", "{}")).get("loop", {}).get("amp", "unknown")
    return {"none": "float32", "auto": "amp auto"}.get(amp, amp)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cifar = [name for name in SHIPPED if name.endswith("_cifar10")]
    parser.add_argument("models", nargs="+", metavar="model", help=f"shipped CIFAR-10 models: {', '.join(cifar)}")
    parser.add_argument("--data", type=Path, required=True,
                        help="ImageFolder test split, cifar-10-batches-py, or a folder of test-set samples")
    parser.add_argument("--same-images-from", type=Path, metavar="DIR",
                        help="with samples in --data: an ImageFolder copy of the test split to score the same images "
                             "from (e.g. the JPEG copy)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in cifar]
    if unknown:
        parser.error(f"unknown models {unknown}; valid: {', '.join(cifar)}")
    samples = load_samples(args.data.expanduser())
    images, labels, where = samples or load_images(args.data.expanduser())
    copies = None
    if args.same_images_from is not None:
        if samples is None:
            parser.error("--same-images-from needs --data to be a folder of samples named <prefix>_<index>_<label>.png")
        copies = same_images(args.same_images_from.expanduser(), images, labels)
    print(f"{len(images)} test images from {where}; {describe_machine()}")
    results = {}
    for name in args.models:
        meta = recorded(name)
        predicted = predict(name, images)
        results[name] = float((predicted == labels).mean())
        at_training = float(json.loads(meta["test_acc"])) if "test_acc" in meta else float("nan")
        print(f"{name}: top-1 {top1(predicted, labels)} (float32, timm transform); recorded at training "
              f"{100 * at_training:.2f} % (JPEG copy, {training_precision(meta)})")
        if copies is not None:
            from_copies = predict(name, copies)
            print(f"  the same {len(copies)} images from {args.same_images_from}: top-1 "
                  f"{top1(from_copies, labels)}; {int((from_copies == predicted).sum())} of "
                  f"{len(copies)} predictions agree")
    return results


if __name__ == "__main__":
    main()
