"""The validation images every explanation pipeline shares: masks kept with a held-out split, side vectors refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import image_folder
from visattn.config import load_train_config
from visattn.data import datasets as datasets_module
from visattn.data.datasets import build_datasets
from visattn.data.synthetic import ShapesDataset
from visattn.pipelines.faithfulness import evaluate_cams
from visattn.pipelines.samples import validation_batch, validation_samples
from visattn.pipelines.trained import TrainedModel

ROOT = Path(__file__).resolve().parents[2]
_TINY = ["data.num_train=60", "data.num_val=20"]


def test_a_held_out_shapes_split_keeps_its_object_masks():
    cfg = load_train_config(ROOT / "configs" / "quickstart.yaml", [*_TINY, "data.val_split=12"])
    images, labels, masks = validation_batch(cfg.data, 5)
    held_out = build_datasets(cfg.data).val  # the images the run validated on: part of the generated train split
    raw = [held_out.base.sample(j) for j in held_out.indices[:5]]
    assert images.shape == (5, 3, 32, 32) and labels.tolist() == [s.label for s in raw]
    assert masks is not None and masks.dtype == torch.bool
    # The eval transform keeps the geometry, so each mask is the rendered object's, pixel for pixel.
    assert all(np.array_equal(m.numpy(), s.mask.astype(bool)) for m, s in zip(masks, raw, strict=True))


def test_cams_of_a_model_with_side_vectors_are_refused_with_a_reason():
    cfg = load_train_config(ROOT / "configs" / "shapes_fusion.yaml", _TINY)
    trained = TrainedModel(nn.Linear(1, 1), cfg, list(ShapesDataset.classes), Path("unused.safetensors"))
    with pytest.raises(ValueError, match="data.side is set: this model reads a side vector with each image"):
        evaluate_cams(trained, ["gradcam"], num_images=4)


def test_a_few_validation_images_do_not_decode_an_in_memory_folder(tmp_path, monkeypatch):
    image_folder(tmp_path / "train", {"a": 3, "b": 3}, size=(12, 12))
    image_folder(tmp_path / "val", {"a": 2, "b": 2}, size=(12, 12))
    cfg = load_train_config(ROOT / "configs" / "quickstart.yaml", [
        "data.name=imagefolder", f"data.root={tmp_path / 'train'}", f"data.val_root={tmp_path / 'val'}",
        "data.in_memory=true", "data.image_size=12", "data.augment=none"])
    decoded = build_datasets(cfg.data).val  # what training validates on: every image decoded up front
    monkeypatch.setattr(datasets_module, "decode_all", lambda *a, **k: pytest.fail("decoded the whole folder"))
    names = [name for name, _ in validation_samples(cfg.data, 3)]
    assert names == [decoded.name(i) for i in range(3)]
    images, labels, masks = validation_batch(cfg.data, 3)
    assert masks is None and labels.tolist() == list(decoded.targets[:3])
    assert all(torch.equal(images[i], decoded[i][0]) for i in range(3))
