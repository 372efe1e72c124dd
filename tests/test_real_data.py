"""Integration on real images: the 43 ImageNet photographs and the CIFAR-10 JPEG copy shipped in ../shared/data.

These archives are one source of real data among the user's own; the project never depends on them. Where they are
absent (or VISATTN_REAL_DATA points elsewhere and is empty) the tests skip and say why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tarfile
from pathlib import Path

import pytest

from visattn.cli import main
from visattn.config import load_train_config
from visattn.models.pretrained import SHIPPED
from visattn.pipelines.train import train

ROOT = Path(__file__).resolve().parents[1]
ARCHIVES = Path(os.environ.get("VISATTN_REAL_DATA", ROOT.parent / "shared" / "data"))


def _extract(archive: str, tmp_path_factory: pytest.TempPathFactory, per_folder: int | None = None,
             under: str = "") -> Path:
    """Extract ``archive`` into a temporary folder: the members under ``under``, at most ``per_folder`` per folder."""
    source = ARCHIVES / archive
    if not source.is_file():
        pytest.skip(f"{source} not found: real-data tests need ../shared/data (or set VISATTN_REAL_DATA)")
    target = tmp_path_factory.mktemp(archive.split(".")[0])
    counts: dict[str, int] = {}
    with tarfile.open(source) as tar:
        for member in tar:
            if not member.name.startswith(under):
                continue
            folder = os.path.dirname(member.name)
            if member.isfile() and per_folder is not None:
                counts[folder] = counts.get(folder, 0) + 1
                if counts[folder] > per_folder:
                    continue
            tar.extract(member, target, filter="data")
    return target


@pytest.mark.slow
def test_overlays_of_real_photographs(tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    photos = _extract("photos.tar.gz", tmp_path_factory) / "photos"
    out = tmp_path_factory.mktemp("overlays")
    weights = ROOT / "weights" / "quickstart_resnet18_cbam_shapes.safetensors"
    assert main(["overlay", str(weights), str(photos), "--out", str(out), "--methods", "gradcam,layercam"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["images"]) == len(list(photos.iterdir())) == 43  # greyscale ones included
    assert manifest["errors"] == []


@pytest.mark.slow
def test_training_on_the_cifar10_jpeg_copy(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = _extract("cifar10-jpg.tar.gz", tmp_path_factory, per_folder=50)
    cfg = load_train_config(ROOT / "configs" / "cifar10" / "cbam.yaml", [
        "data.name=imagefolder", f"data.root={root / 'train'}", f"data.val_root={root / 'test'}",
        "data.num_workers=0", "data.batch_size=64", "loop.epochs=1", "loop.amp=none",
        "loop.device=cpu", "loop.progress=false", "optim.warmup_epochs=0",
        "model.kwargs={layers: [1, 1, 1, 1], channels: [16, 32, 64, 128]}",
        f"checkpoint.output_dir={tmp_path_factory.mktemp('runs')}", "eval.overlays=2"])
    result = train(cfg)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["skipped_images"] == 0
    assert 0.0 <= result.best_accuracy <= 1.0
    manifest = json.loads((result.run_dir / "overlays" / "manifest.json").read_text())
    classes = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}
    assert {e["label"] for e in manifest["images"]} <= classes  # class names come from the folders


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SHIPPED if n.endswith("_cifar10")])
def test_shipped_cifar10_weights_keep_their_accuracy(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """All 10,000 test images, through timm's loader and transform in float32: the file's recorded top-1 (scored at
    the end of training, on images decoded into memory) to within 0.3 points."""
    root = _extract("cifar10-jpg.tar.gz", tmp_path_factory, under="test/")
    spec = importlib.util.spec_from_file_location("cifar10_accuracy", ROOT / "benchmarks" / "cifar10_accuracy.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    accuracy = script.main([name, "--data", str(root / "test")])[name]
    recorded = json.loads(script.recorded(name)["test_acc"])
    assert abs(accuracy - recorded) <= 0.003, (accuracy, recorded)
