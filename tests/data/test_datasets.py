"""Every data set kind on tiny generated files, and the augmentation pipelines."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import fake_cifar
from visattn.config import DataConfig
from visattn.data.cifar import load_cifar
from visattn.data.datasets import build_datasets
from visattn.data.folder import collate_skipping, read_rgb
from visattn.data.transforms import build_transform, transforms_from_list


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickle_layout(tmp_path, name):
    fake_cifar(tmp_path, name)
    images, labels, classes = load_cifar(name, tmp_path, "train")
    assert images.shape == ((30 if name == "cifar10" else 6), 32, 32, 3) and images.dtype == np.uint8
    assert len(labels) == len(images) and len(classes) == (10 if name == "cifar10" else 100)
    bundle = build_datasets(DataConfig(name=name, root=str(tmp_path), num_train=4))
    image, label = bundle.train[0]
    assert len(bundle.train) == 4 and image.shape == (3, 32, 32) and image.dtype == torch.float32


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_copies_repacked_with_any_protocol_load(tmp_path, protocol):
    fake_cifar(tmp_path, protocol=protocol)
    images, labels, _ = load_cifar("cifar10", tmp_path, "test")
    assert images.shape == (6, 32, 32, 3) and len(labels) == 6


def test_cifar_channel_order_matches_the_format(tmp_path):
    folder = fake_cifar(tmp_path)
    row = np.zeros(3072, dtype=np.uint8)
    row[:1024] = 200  # the red plane comes first in the CIFAR format
    batch = {b"data": row[None], b"labels": [3]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    images, labels, _ = load_cifar("cifar10", tmp_path, "test")
    assert labels == [3] and images[0, 5, 5].tolist() == [200, 0, 0]


def test_cifar_missing_says_where_files_go(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py lacks data_batch_1.*data.download=true"):
        load_cifar("cifar10", tmp_path, "train")


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
    folder = fake_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        load_cifar("cifar10", tmp_path, "test")


def _image_folder(root, classes=("ant", "bee", "cat"), per_class=3, corrupt=None):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    if corrupt:
        (root / classes[0] / corrupt).write_bytes(b"not an image at all")


def test_imagefolder_with_class_subset_and_cap(tmp_path):
    _image_folder(tmp_path / "train", per_class=4)
    _image_folder(tmp_path / "val", per_class=2)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "train"), val_root=str(tmp_path / "val"),
                     classes=["cat", "ant"], max_per_class=3, image_size=24, augment="imagenet")
    bundle = build_datasets(cfg)
    assert bundle.classes == ("cat", "ant")
    assert len(bundle.train) == 6 and len(bundle.val) == 4
    assert sorted(set(bundle.train.targets)) == [0, 1]
    image, label = bundle.val[0]
    assert image.shape == (3, 24, 24)
    assert build_datasets(DataConfig(name="imagefolder", root=str(tmp_path / "train"),
                                     val_root=str(tmp_path / "val"), classes=2)).classes == ("ant", "bee")


def test_imagefolder_bad_class_and_missing_root(tmp_path):
    _image_folder(tmp_path / "train")
    with pytest.raises(ValueError, match=r"lacks: \['dog'\]"):
        build_datasets(DataConfig(name="imagefolder", root=str(tmp_path / "train"), val_root=str(tmp_path / "train"),
                                  classes=["dog"]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_datasets(DataConfig(name="imagefolder", root=str(tmp_path / "nope"), val_root=str(tmp_path)))
    with pytest.raises(ValueError, match="data.val_root must name"):
        build_datasets(DataConfig(name="imagefolder", root=str(tmp_path / "train")))
    _image_folder(tmp_path / "val", classes=("ant", "bee"))  # no cat: the message names val_root, not data.classes
    with pytest.raises(ValueError, match=r"data.val_root .* lacks class folder\(s\) that data.root has: \['cat'\]"):
        build_datasets(DataConfig(name="imagefolder", root=str(tmp_path / "train"), val_root=str(tmp_path / "val")))


def test_tiny_imagenet_val_layout(tmp_path):
    _image_folder(tmp_path / "train", classes=("n01", "n02"))
    val = tmp_path / "val"
    (val / "images").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(["n02", "n01", "n02"]):
        Image.new("RGB", (64, 64), (i * 40, 0, 0)).save(val / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (val / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    bundle = build_datasets(DataConfig(name="imagefolder", root=str(tmp_path / "train"), val_root=str(val),
                                       image_size=32))
    assert sorted(bundle.val.targets) == [0, 1, 1]


def test_tiny_imagenet_val_resorted_into_class_folders_or_missing(tmp_path):
    _image_folder(tmp_path / "train", classes=("n01", "n02"))
    val = tmp_path / "val"
    _image_folder(val, classes=("n01", "n02"), per_class=2)  # val/<wnid>/ folders ...
    (val / "val_annotations.txt").write_text("val_0.JPEG\tn01\t0\t0\t63\t63\n")  # ... and the old annotations
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "train"), val_root=str(val), image_size=32)
    assert sorted(build_datasets(cfg).val.targets) == [0, 0, 1, 1]  # the folders hold the images
    (val / "images").mkdir()  # the Tiny layout, but its images are gone: an error, not an empty validation set
    with pytest.raises(FileNotFoundError, match=r"none of the 1 images that .*val_annotations.txt lists is in"):
        build_datasets(cfg)
    (val / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t63\t63\n")
    with pytest.raises(ValueError, match="lists no image of data.root's classes"):
        build_datasets(cfg)


def test_corrupt_file_is_skipped_and_counted(tmp_path):
    _image_folder(tmp_path / "train", per_class=2, corrupt="broken.jpg")
    bundle = build_datasets(DataConfig(name="imagefolder", root=str(tmp_path / "train"),
                                       val_root=str(tmp_path / "train"), image_size=16))
    items = [bundle.train[i] for i in range(len(bundle.train))]
    assert sum(item is None for item in items) == 1
    images, labels, skipped = collate_skipping(items)
    assert skipped == 1 and images.shape == (6, 3, 16, 16) and labels.shape == (6,)


def test_image_pil_refuses_as_too_large_is_skipped_not_fatal(tmp_path, monkeypatch):
    # PIL raises DecompressionBombError (not an OSError) above twice its pixel limit: 179 M pixels by default, here
    # lowered so that the folder's 50x40 images trip it.
    _image_folder(tmp_path / "train", per_class=1)
    bundle = build_datasets(DataConfig(name="imagefolder", root=str(tmp_path / "train"),
                                       val_root=str(tmp_path / "train"), image_size=16))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert bundle.train[0] is None


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_read_rgb_any_mode(tmp_path, mode):
    arr = (np.arange(20 * 30).reshape(20, 30) % 251).astype(np.uint16 if mode == "I;16" else np.uint8)
    img = Image.fromarray(arr) if mode in ("L", "I;16") else Image.fromarray(arr).convert(mode)
    path = tmp_path / "x.png"
    img.save(path)
    out = read_rgb(path)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8 and out.max() > 0


def test_presets_shapes_and_normalisation():
    cfg = DataConfig(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    image = np.full((32, 32, 3), 255, dtype=np.uint8)
    out = build_transform(cfg, train=False, native_size=32)(image=image)["image"]
    assert out.shape == (3, 32, 32) and torch.allclose(out, torch.ones_like(out))  # (1 - 0.5) / 0.5
    train = build_transform(cfg, train=True, native_size=32)
    assert train(image=image)["image"].shape == (3, 32, 32)
    names = [type(t).__name__ for t in train.transforms]
    assert names[:4] == ["PadIfNeeded", "RandomCrop", "HorizontalFlip", "CoarseDropout"]


def test_explicit_transform_list_and_errors():
    steps = transforms_from_list([{"name": "HorizontalFlip", "p": 1.0}])
    assert type(steps[0]).__name__ == "HorizontalFlip"
    with pytest.raises(ValueError, match="did you mean 'HorizontalFlip'"):
        transforms_from_list([{"name": "HorizontalFlop"}])
    with pytest.raises(ValueError, match="must be a mapping with a 'name' key"):
        transforms_from_list(["HorizontalFlip"])
    with pytest.raises(ValueError, match=r"transforms\[0\] \(RandomCrop\).*did you mean 'height' for 'heigth'"):
        transforms_from_list([{"name": "RandomCrop", "heigth": 3}])
    # albumentations 2 would warn and drop arguments it no longer takes, giving its defaults: 1.x's CoarseDropout.
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['max_holes', 'max_height'\]"):
        transforms_from_list([{"name": "CoarseDropout", "max_holes": 1, "max_height": 8}])
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['always_apply'\].*valid: \['p', 'strict'\]"):
        transforms_from_list([{"name": "HorizontalFlip", "always_apply": True}])
    assert transforms_from_list([{"name": "HorizontalFlip", "strict": True}])  # albumentations' own option


@pytest.mark.parametrize("name", ["Normalize", "ToTensorV2"])
def test_explicit_list_may_not_repeat_the_appended_steps(name):
    cfg = DataConfig(image_size=32, train_transforms=[{"name": "HorizontalFlip"}, {"name": name}])
    with pytest.raises(ValueError, match=rf"data.train_transforms\[1\]: {name} is appended to every pipeline"):
        build_transform(cfg, train=True)


@pytest.mark.parametrize(("size", "resized"), [(32, 36), (96, 109), (224, 256), (256, 292), (384, 438)])
def test_imagenet_eval_resize_follows_timm(size, resized):
    from timm.data.transforms_factory import transforms_imagenet_eval

    expected = transforms_imagenet_eval(img_size=size, crop_pct=0.875).transforms[0].size
    assert expected == resized  # timm: floor(size / crop_pct)
    cfg = DataConfig(image_size=size, augment="imagenet")
    assert build_transform(cfg, train=False).transforms[0].max_size == resized


def _saved(tmp_path, image: Image.Image, suffix: str) -> str:
    path = tmp_path / f"x{suffix}"
    image.save(path)
    return str(path)


def _grey(out: np.ndarray) -> np.ndarray:
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert (out == out[..., :1]).all()  # greyscale: the three channels agree
    return out[..., 0]


@pytest.mark.parametrize(("mode", "suffix"), [("I;16", ".png"), ("I;16B", ".tif"), ("I;16L", ".tif")])
def test_read_rgb_16_bit_scales_by_bit_depth_not_by_image_max(tmp_path, mode, suffix):
    dark = np.array([[0, 1000], [500, 128]], dtype=np.uint16)  # e.g. a dark or 12-bit image: must stay dark
    full = np.array([[0, 65535], [257 * 100, 32768]], dtype=np.uint16)
    for values, expected in ((dark, [[0, 4], [2, 0]]), (full, [[0, 255], [100, 128]])):
        image = Image.frombytes(mode, (2, 2), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
        path = _saved(tmp_path, image, suffix)
        assert Image.open(path).mode.startswith("I;16")
        np.testing.assert_array_equal(_grey(read_rgb(path)), expected)


def test_read_rgb_mode_i_in_16_bit_range_scales_by_bit_depth(tmp_path):
    path = _saved(tmp_path, Image.fromarray(np.array([[0, 1000], [65535, 257 * 7]], dtype=np.int32)), ".tif")
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(_grey(read_rgb(path)), [[0, 4], [255, 7]])


def test_read_rgb_mode_i_outside_16_bit_range_is_min_max_scaled(tmp_path):
    values = np.array([[-100, 0], [100, 1_000_000]], dtype=np.int32)  # negative and > 65535: never wrapped
    path = _saved(tmp_path, Image.fromarray(values), ".tif")
    assert Image.open(path).mode == "I"
    expected = np.rint((values + 100) / 1_000_100 * 255)  # [[0, 0], [0, 255]] rounded
    np.testing.assert_array_equal(_grey(read_rgb(path)), expected)
    values = np.array([[-300, -100], [0, 100]], dtype=np.int32)
    out = _grey(read_rgb(_saved(tmp_path, Image.fromarray(values), ".tif")))
    np.testing.assert_array_equal(out, [[0, 128], [191, 255]])  # (v + 300) / 400 * 255, rounded


def test_read_rgb_float_in_unit_range_is_times_255(tmp_path):
    values = np.array([[0.0, 0.5], [1.0, 0.2]], dtype=np.float32)
    path = _saved(tmp_path, Image.fromarray(values), ".tif")
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(_grey(read_rgb(path)), [[0, 128], [255, 51]])


def test_read_rgb_float_with_large_range_is_min_max_scaled_and_nan_is_zero(tmp_path):
    values = np.array([[-10.0, 0.0], [30.0, 1000.0]], dtype=np.float32)
    out = _grey(read_rgb(_saved(tmp_path, Image.fromarray(values), ".tif")))
    np.testing.assert_array_equal(out, [[0, 3], [10, 255]])  # (v + 10) / 1010 * 255, rounded
    values = np.array([[0.25, np.nan], [np.inf, 1.0]], dtype=np.float32)
    out = _grey(read_rgb(_saved(tmp_path, Image.fromarray(values), ".tif")))
    np.testing.assert_array_equal(out, [[64, 0], [0, 255]])  # finite values in [0, 1]: times 255
    values = np.array([[2.0, np.nan], [-np.inf, 4.0]], dtype=np.float32)
    out = _grey(read_rgb(_saved(tmp_path, Image.fromarray(values), ".tif")))
    np.testing.assert_array_equal(out, [[0, 0], [0, 255]])


def test_read_rgb_drops_alpha_like_timm_and_torchvision(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)  # fully transparent: the colour is kept, not composited over white
    np.testing.assert_array_equal(read_rgb(_saved(tmp_path, Image.fromarray(rgba, "RGBA"), ".png")),
                                  np.broadcast_to([10, 20, 30], (2, 2, 3)))
