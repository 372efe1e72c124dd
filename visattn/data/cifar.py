"""CIFAR-10/100 from the official "python version" layout, read without executing pickled code.

The official archives store numpy arrays inside Python pickles. ``torchvision.datasets.CIFAR10`` unpickles them with
the full ``pickle`` module and also insists on the archive's MD5 sums; this reader accepts only the handful of
numpy globals those files need (so a tampered file cannot run code) and needs no checksums, so users' re-packed
copies and the tests' tiny fake layouts load too. ``download=True`` delegates the fetch to torchvision.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["CIFAR_LAYOUTS", "load_cifar"]

CIFAR_LAYOUTS = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta="batches.meta", label_key=b"labels", names_key=b"label_names"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     label_key=b"fine_labels", names_key=b"fine_label_names"),
}

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("builtins", "list"),
    # Re-packed copies: protocol 5 stores arrays through _frombuffer, protocol 2 from Python 3 stores bytes through
    # _codecs.encode. Both only build data (torch's weights_only unpickler allows them too).
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR file: only numpy arrays, "
                                         f"lists and dicts are expected")
        return super().find_class(module, name)


def _read(path: Path) -> dict[bytes, Any]:
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f, encoding="bytes").load()


def load_cifar(
        name: Literal["cifar10", "cifar100"],
        root: str | Path,
        split: Literal["train", "test"],
        *,
        download: bool = False,
) -> tuple[np.ndarray, list[int], list[str]]:
    """Images ``(N, 32, 32, 3)`` uint8 RGB, integer labels and class names of one CIFAR split.

    Raises:
        FileNotFoundError: the layout is missing and ``download`` is False; the message says where files belong.
    """
    layout = CIFAR_LAYOUTS[name]
    folder = Path(root) / layout["folder"]
    files = [folder / f for f in layout[split]] + [folder / layout["meta"]]
    if not all(f.is_file() for f in files) and download:
        from torchvision.datasets import CIFAR10, CIFAR100

        (CIFAR10 if name == "cifar10" else CIFAR100)(str(root), train=split == "train", download=True)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name} not found: {folder} lacks {', '.join(missing)}. Put the extracted 'python version' archive "
            f"there (https://www.cs.toronto.edu/~kriz/cifar.html: {layout['folder']}/ with "
            f"{', '.join(layout['train'] + layout['test'] + [layout['meta']])}), or set data.download=true where "
            f"the machine has internet. An ImageFolder copy (train/<class>/*.jpg) works with data.name=imagefolder."
        )
    images, labels = [], []
    for f in files[:-1]:
        batch = _read(f)
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels += [int(v) for v in batch[layout["label_key"]]]
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _read(files[-1])[layout["names_key"]]]
    return np.ascontiguousarray(np.concatenate(images)), labels, names
