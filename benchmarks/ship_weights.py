"""Copy a study run's weights into ``weights/`` as a shipped file: the tensors unchanged, its record in the metadata.

    python benchmarks/ship_weights.py runs/study/cifar10_cpu/baseline-seed1 \\
        weights/cifar10_resnet10w32_baseline.safetensors

The run's ``best.safetensors`` (weights of the best validation epoch, with the resolved config and class names in
its metadata) gains the run's test accuracy (``test_acc``: at that epoch), variant, seed and epoch. Prints the file's
sha256 for the model card. The file is written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from visattn.files import atomic_write


def ship(run_dir: Path, out: Path) -> str:
    """Write ``out`` from ``run_dir`` and return its sha256."""
    summary = json.loads((run_dir / "summary.json").read_text())
    record_file = run_dir / "study_record.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    with safe_open(str(run_dir / "best.safetensors"), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = dict(f.metadata() or {})
    if "best_val_test_acc" not in summary:
        raise SystemExit(f"{run_dir}/summary.json has no best_val_test_acc: the run had no held-out test split")
    metadata.update(test_acc=json.dumps(summary["best_val_test_acc"]), best_epoch=json.dumps(summary["best_epoch"]),
                    variant=json.dumps(record.get("variant")), seed=json.dumps(record.get("seed")))
    atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return hashlib.sha256(out.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    digest = ship(args.run_dir, args.out)
    print(f"{args.out}: sha256 {digest}")
    return digest


if __name__ == "__main__":
    main()
