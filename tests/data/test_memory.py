"""Decoding a folder into memory, and holding a stratified validation split out of the training images."""

import numpy as np
import pytest
import torch

from tests.conftest import image_folder
from visattn.config import DataConfig, TrainConfig
from visattn.config.loader import ConfigError, load_config
from visattn.data.datasets import ArrayDataset, build_datasets, raw_images
from visattn.data.folder import ImageFileDataset
from visattn.data.memory import decode_all, holdout_indices


def test_in_memory_folder_gives_the_same_samples_as_reading_files(tmp_path):
    image_folder(tmp_path / "train", {"a": 5, "b": 4})
    image_folder(tmp_path / "val", {"a": 2, "b": 2})
    common = dict(name="imagefolder", root=str(tmp_path / "train"), val_root=str(tmp_path / "val"), image_size=8,
                  augment="none")
    files, memory = build_datasets(DataConfig(**common)), build_datasets(DataConfig(**common, in_memory=True))
    assert isinstance(files.train, ImageFileDataset) and isinstance(memory.train, ArrayDataset)
    for split in ("train", "val"):
        a, b = getattr(files, split), getattr(memory, split)
        assert len(a) == len(b) and list(a.targets) == list(b.targets)
        for i in range(len(a)):
            assert torch.equal(a[i][0], b[i][0])
    # Overlays name decoded images by their files, as they name file-backed ones.
    assert [name for name, _ in raw_images(memory.val, 2)] == [name for name, _ in raw_images(files.val, 2)]


def test_decode_all_skips_or_fails_on_unreadable_files(tmp_path):
    image_folder(tmp_path, {"a": 3})
    (tmp_path / "a" / "01.png").write_bytes(b"not a png")
    paths = sorted(str(p) for p in (tmp_path / "a").iterdir())
    with pytest.warns(UserWarning, match=r"left out 1 unreadable image\(s\) .*01.png"):
        images, kept = decode_all(paths, progress=False)
    assert kept == [0, 2] and len(images) == 2 and images[0].shape == (10, 14, 3)
    with pytest.raises(ValueError, match=r"cannot read image .*01.png.*on_corrupt='fail'"):
        decode_all(paths, on_corrupt="fail", progress=False)


def test_holdout_is_stratified_exact_and_seeded():
    targets = [0] * 50 + [1] * 30 + [2] * 20
    kept, held = holdout_indices(targets, 10, seed=0)
    assert len(held) == 10 and len(kept) == 90 and not set(kept) & set(held)
    assert np.bincount(np.asarray(targets)[held]).tolist() == [5, 3, 2]  # the class balance of the whole
    assert holdout_indices(targets, 0.1, seed=0)[1].tolist() == held.tolist()
    assert holdout_indices(targets, 10, seed=1)[1].tolist() != held.tolist()
    # Shares that do not divide evenly: the largest remainders get the rounding, and the total is exact.
    assert len(holdout_indices([0] * 7 + [1] * 7 + [2] * 7, 10, seed=0)[1]) == 10
    for bad in (0, 100, 1.0, 0.0):
        with pytest.raises(ValueError, match="val_split"):
            holdout_indices(targets, bad, seed=0)


def test_val_split_makes_the_data_sets_own_split_the_test_set(tmp_path):
    image_folder(tmp_path / "train", {"a": 6, "b": 6})
    image_folder(tmp_path / "test", {"a": 3, "b": 3})
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "train"), val_root=str(tmp_path / "test"), image_size=8,
                     val_split=4, in_memory=True)
    bundle = build_datasets(cfg)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (8, 4, 6)
    assert sorted(bundle.val.targets) == [0, 0, 1, 1]
    held = set(bundle.val.names)
    assert not held & set(bundle.train.names) and held <= {str(p) for p in (tmp_path / "train").rglob("*.png")}
    # The held-out images get the evaluation transform, not the training augmentation.
    assert bundle.val.transform is not bundle.train.transform
    assert build_datasets(DataConfig(**{**cfg.__dict__, "val_split": None})).test is None


def test_val_split_on_the_built_in_data_holds_out_generated_images():
    bundle = build_datasets(DataConfig(num_train=100, num_val=30, val_split=20))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (80, 20, 30)
    assert sorted(bundle.train.indices + bundle.val.indices) == list(range(100))
    assert bundle.val.transform is not bundle.train.transform  # held out: evaluation preprocessing
    image, label = bundle.val[0]
    assert image.shape == (3, 32, 32) and label == bundle.val.targets[0]


def test_val_split_errors():
    with pytest.raises(ConfigError, match=r"val_split must be a count >= 1 or a fraction in \(0, 1\), got 1.5"):
        load_config(TrainConfig, None, ["data.val_split=1.5"])
