"""Shared toys: a way to make a freshly built model look trained, a tiny CIFAR folder, naive reference formulas."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import visattn

BLOCK_NAMES = visattn.list_blocks()


def make_trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer non-trivial affine parameters and running statistics.

    A freshly built timm ResNet zero-initialises the last BN of each residual branch, so the branch outputs zero and
    an identity check on it could not fail. Trained models have no such zeros.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def randomize_parameters(module: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite every parameter with N(0, 0.5): no zero-initialised branch, no exact-identity blend."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * 0.5)
    return module


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def image_folder(root, counts, size=(10, 14), suffix="png"):
    """Write an ImageFolder of random RGB images under ``root``: ``counts`` maps each class folder to its count."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / name / f"{i:02d}.{suffix}")


def fake_cifar(root, name="cifar10", n_per_batch=6, protocol=pickle.DEFAULT_PROTOCOL):
    """A CIFAR-10/100 python-version folder of random images under ``root`` (the real layout, tiny)."""
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, train_files, test_files = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], \
            ["test_batch"]
        label_key, meta_file, meta = b"labels", "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]}
    else:
        folder, train_files, test_files = root / "cifar-100-python", ["train"], ["test"]
        label_key, meta_file, meta = b"fine_labels", "meta", {b"fine_label_names": [f"c{i}".encode() for i in
                                                                                     range(100)]}
    folder.mkdir(parents=True)
    for f in train_files + test_files:
        batch = {b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 label_key: list(rng.integers(0, 10, n_per_batch))}
        (folder / f).write_bytes(pickle.dumps(batch, protocol=protocol))
    (folder / meta_file).write_bytes(pickle.dumps(meta, protocol=protocol))
    return folder


def naive_sinusoid(y: float, x: float, dim: int) -> torch.Tensor:
    """The 2-D sinusoid written out channel by channel."""
    out = torch.zeros(dim, dtype=torch.float64)
    for start, size, p in ((0, dim // 2, y), (dim // 2, dim - dim // 2, x)):
        for k in range(size // 2):
            angle = p / 10_000 ** (2 * k / size)
            out[start + 2 * k], out[start + 2 * k + 1] = math.sin(angle), math.cos(angle)
    return out
