"""Side vectors for fusion models: CSV rows checked before training, and the built-in data's noisy class code."""

import csv

import numpy as np
import pytest
from PIL import Image

from visattn.config import ConfigError, DataConfig, SideConfig, load_train_config
from visattn.data.datasets import build_datasets
from visattn.data.side import SideDataset, shapes_side


def _folder_with_csv(root, name, per_class=3, rows=None):
    rng = np.random.default_rng(0)
    lines = []
    for c in ("ant", "bee"):
        (root / name / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / c / f"{i}.png")
            lines.append({"file": f"{c}/{i}.png", "age": str(10 * i + (c == "bee")), "weight": str(i / 2)})
    path = root / f"{name}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["file", "age", "weight"])
        writer.writeheader()
        writer.writerows(rows(lines) if rows else lines)
    return path


def _cfg(tmp_path, **side):
    side = SideConfig(csv=str(tmp_path / "train.csv"), val_csv=str(tmp_path / "val.csv"), columns=["age", "weight"],
                      **side)
    return DataConfig(name="imagefolder", root=str(tmp_path / "train"), val_root=str(tmp_path / "val"), image_size=8,
                      augment="none", side=side)


def test_csv_vectors_follow_their_images_through_holdout_and_memory(tmp_path):
    _folder_with_csv(tmp_path, "train")
    _folder_with_csv(tmp_path, "val", per_class=1)
    for in_memory in (False, True):
        cfg = _cfg(tmp_path)
        cfg.in_memory, cfg.val_split = in_memory, 2
        bundle = build_datasets(cfg)
        assert isinstance(bundle.train, SideDataset) and bundle.train.features == 2
        assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (4, 2, 2)
        for ds in (bundle.train, bundle.val, bundle.test):
            for i in range(len(ds)):
                (image, side), label = ds[i]
                path = ds.base.names[i] if in_memory else ds.base.samples[i][0]
                cls, index = path.split("/")[-2], int(path.split("/")[-1][0])
                assert side.tolist() == [10 * index + (cls == "bee"), index / 2] and image.shape == (3, 8, 8)


@pytest.mark.parametrize(("rows", "match"), [
    (lambda lines: lines[1:], r"train.csv has no row for image 'ant/0.png' \(its 'file' column holds paths"),
    (lambda lines: [*lines, lines[0]], r"train.csv rows 2 and 8 both describe 'ant/0.png'"),
    (lambda lines: [{**r, "age": "nan"} if r["file"] == "bee/2.png" else r for r in lines],
     r"train.csv row 7 \('bee/2.png'\), column 'age': 'nan' is not a finite number"),
    (lambda lines: [{**r, "weight": "heavy"} if r["file"] == "ant/1.png" else r for r in lines],
     r"train.csv row 3 \('ant/1.png'\), column 'weight': 'heavy' is not a number"),
])
def test_bad_rows_are_named_before_anything_trains(tmp_path, rows, match):
    _folder_with_csv(tmp_path, "train", rows=rows)
    _folder_with_csv(tmp_path, "val", per_class=1)
    with pytest.raises(ValueError, match=match):
        build_datasets(_cfg(tmp_path))


def test_a_missing_column_or_file_is_named(tmp_path):
    _folder_with_csv(tmp_path, "train")
    _folder_with_csv(tmp_path, "val", per_class=1)
    cfg = _cfg(tmp_path)
    cfg.side.columns = ["age", "height"]
    with pytest.raises(ValueError, match=r"train.csv lacks column\(s\) \['height'\]; its header has"):
        build_datasets(cfg)
    cfg.side.columns, cfg.side.val_csv = ["age"], str(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="nope.csv' does not exist"):
        build_datasets(cfg)


def test_side_config_errors():
    for overrides, match in [
        (["data.side={}"], "data.side gives every image a second input"),
        (["model.fusion={}"], "model.fusion fuses the image with data.side"),
        (["data.name=cifar10", "data.side={}", "model.fusion={}"], "cifar10 has no side vectors"),
        (["data.side={csv: a.csv}", "model.fusion={}"], "csv and columns go together"),
        (["data.side={noise: -1}", "model.fusion={}"], "noise must be a finite number >= 0"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_train_config(None, overrides)


def test_the_built_in_side_vector_is_a_noisy_class_code():
    side = SideConfig(noise=0.5, features=12)
    labels = list(range(10)) * 200
    vectors = shapes_side(labels, 10, side, seed=0, split="train")
    assert vectors.shape == (2000, 12) and vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, shapes_side(labels, 10, side, seed=0, split="train"))
    assert not np.array_equal(vectors, shapes_side(labels, 10, side, seed=0, split="val"))
    # Informative: the label's coordinate carries +1 on average; the noise has the asked spread.
    hit = vectors[np.arange(2000), labels]
    assert abs(hit.mean() - 1) < 0.05 and abs(vectors[:, 10:].std() - 0.5) < 0.05
    assert 0.5 < (vectors[:, :10].argmax(1) == np.array(labels)).mean() < 0.99  # noisy: not the whole answer
    with pytest.raises(ValueError, match="leaves classes 8..9 without a code"):
        shapes_side(labels, 10, SideConfig(features=8), seed=0, split="train")
