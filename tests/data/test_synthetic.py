import pickle

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from hypothesis import given, settings
from hypothesis import strategies as st

from visattn.data.synthetic import CLASSES, ShapeSample, ShapesDataset, render_sample


@pytest.fixture(scope="module")
def small_train():
    return ShapesDataset("train", num_samples=200)


def _same(a: ShapeSample, b: ShapeSample) -> bool:
    return (a.label == b.label and a.centre == b.centre and np.array_equal(a.image, b.image)
            and np.array_equal(a.mask, b.mask))


def test_classes():
    assert len(CLASSES) == 10 and len(set(CLASSES)) == 10
    assert ShapesDataset.classes == CLASSES


@pytest.mark.parametrize("image_size", [16, 32, 57])
def test_sample_shapes_and_dtypes(image_size):
    s = render_sample(3, image_size=image_size)
    assert s.image.shape == (image_size, image_size, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (image_size, image_size) and s.mask.dtype == np.uint8
    assert set(np.unique(s.mask)) <= {0, 1}
    assert isinstance(s.label, int) and 0 <= s.label < len(CLASSES)


def test_deterministic():
    for index in (0, 7, 12345):
        assert _same(render_sample(index, split="val", seed=3), render_sample(index, split="val", seed=3))


def test_seed_split_and_index_change_the_sample():
    base = render_sample(5, split="train", seed=0)
    for other in (render_sample(5, split="train", seed=1), render_sample(5, split="val", seed=0),
                  render_sample(6, split="train", seed=0)):
        assert not np.array_equal(base.image, other.image)


def test_train_and_val_never_coincide():
    train = ShapesDataset("train", num_samples=300)
    val = ShapesDataset("val", num_samples=300)
    train_images = {train.sample(i).image.tobytes() for i in range(len(train))}
    assert not any(val.sample(i).image.tobytes() in train_images for i in range(len(val)))


def test_dataset_matches_render_sample(small_train):
    for i in (0, 1, 199):
        assert _same(small_train.sample(i), render_sample(i, split="train"))


def test_lazy_path_matches_prerendered(monkeypatch):
    # Large splits render on access; force that path on a small one and compare with the pre-rendered arrays.
    import visattn.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "_PRERENDER_BYTES", 0)
    lazy = ShapesDataset("val", num_samples=30, seed=2)
    assert lazy._images is None
    monkeypatch.undo()
    eager = ShapesDataset("val", num_samples=30, seed=2)
    assert eager._images is not None
    for i in range(30):
        assert _same(lazy.sample(i), eager.sample(i))
    assert lazy.targets == eager.targets


def test_mask_marks_a_visible_object():
    for i in range(150):
        s = render_sample(i, seed=1)
        inside = s.mask.astype(bool)
        assert inside.sum() >= 10, f"sample {i}: object too small or missing"
        # The object differs from its surroundings: compare with a band of pixels just outside the mask.
        grown = np.zeros_like(inside)
        ys, xs = np.nonzero(inside)
        grown[max(ys.min() - 3, 0):ys.max() + 4, max(xs.min() - 3, 0):xs.max() + 4] = True
        band = grown & ~inside
        diff = np.abs(s.image[inside].mean(0) - s.image[band].mean(0)).max()
        assert diff > 10, f"sample {i}: object indistinguishable from background ({diff:.1f})"


def test_centre_is_the_objects_centre():
    # Point-symmetric shapes (circle, square, cross, ring) have their mask's centroid at the centre, unless a stroke
    # occludes part of them (20 % of samples); every object's centre lies inside the mask's bounding box and scales
    # with image_size.
    symmetric = {CLASSES.index(name) for name in ("circle", "square", "cross", "ring")}
    close = []
    for i in range(200):
        s = render_sample(i, split="val", image_size=64)
        x, y = s.centre
        ys, xs = np.nonzero(s.mask)
        assert xs.min() <= x <= xs.max() + 1 and ys.min() <= y <= ys.max() + 1, (i, s.centre)
        if s.label in symmetric:
            # Pixel (row i, column j) spans [j, j+1) x [i, i+1): its centre is at (j + 0.5, i + 0.5).
            close.append(max(abs(xs.mean() + 0.5 - x), abs(ys.mean() + 0.5 - y)) < 0.3)
        small = render_sample(i, split="val", image_size=32)
        assert np.allclose(np.array(small.centre) * 2, s.centre, atol=1.0), i
    assert len(close) >= 60 and np.mean(close) >= 0.75, (len(close), np.mean(close))


def test_image_size_renders_the_same_scene():
    ious = []
    for i in range(40):
        small = render_sample(i, image_size=32).mask.astype(bool)
        large = render_sample(i, image_size=64).mask.astype(np.float32)
        down = large.reshape(32, 2, 32, 2).mean((1, 3)) >= 0.5
        ious.append((small & down).sum() / (small | down).sum())
    assert np.mean(ious) > 0.85 and min(ious) > 0.6, ious


def test_mask_not_empty_at_the_smallest_size():
    assert all(render_sample(i, image_size=16, seed=4).mask.any() for i in range(300))


def test_labels_balanced():
    targets = ShapesDataset("train", num_samples=1000).targets
    counts = np.bincount(targets, minlength=len(CLASSES))
    assert counts.sum() == 1000 and ((counts >= 70) & (counts <= 130)).all(), counts


def test_targets_match_samples_and_do_not_render(small_train, monkeypatch):
    import visattn.data.synthetic as synthetic

    assert small_train.targets == [small_train.sample(i).label for i in range(len(small_train))]
    expected = [render_sample(i, split="val").label for i in range(55)]
    monkeypatch.setattr(synthetic, "_PRERENDER_BYTES", 0)
    monkeypatch.setattr(synthetic, "_render", lambda *a, **k: pytest.fail("targets rendered an image"))
    assert ShapesDataset("val", num_samples=55).targets == expected


def test_len(monkeypatch):
    import visattn.data.synthetic as synthetic

    assert len(ShapesDataset("val", num_samples=7)) == 7
    # The default sizes without rendering 12,000 images: the lazy path makes construction free.
    monkeypatch.setattr(synthetic, "_PRERENDER_BYTES", 0)
    assert len(ShapesDataset("train")) == 10_000 and len(ShapesDataset("val")) == 2_000


def test_getitem_without_transform(small_train):
    image, label = small_train[4]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert 0.0 <= image.min() and image.max() <= 1.0
    raw = small_train.sample(4)
    assert label == raw.label
    torch.testing.assert_close(image, torch.from_numpy(raw.image).permute(2, 0, 1).float() / 255)
    assert small_train[-1][1] == small_train.sample(199).label


def test_getitem_with_albumentations_transform():
    transform = A.Compose([A.HorizontalFlip(p=1), A.Normalize(), ToTensorV2()])
    ds = ShapesDataset("val", num_samples=20, transform=transform)
    image, label = ds[3]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert label == ds.sample(3).label
    image, mask, label = ds.get_with_mask(3)
    raw = ds.sample(3)
    np.testing.assert_array_equal(np.asarray(mask), raw.mask[:, ::-1])  # the mask moves with the image
    assert label == raw.label


def test_get_with_mask_without_transform(small_train):
    image, mask, label = small_train.get_with_mask(2)
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == torch.uint8
    np.testing.assert_array_equal(mask.numpy(), small_train.sample(2).mask)


def test_sample_returns_copies(small_train):
    s = small_train.sample(0)
    s.image[:] = 0
    assert small_train.sample(0).image.any()


def test_bad_transform_output():
    ds = ShapesDataset("val", num_samples=2, transform=lambda image, mask: image)
    with pytest.raises(TypeError, match="transform must return a dict"):
        ds[0]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"split": "test"}, ValueError, r"split must be one of \['train', 'val'\], got 'test'"),
        ({"num_samples": 0}, ValueError, "num_samples must be an int >= 1, got 0"),
        ({"num_samples": 2.5}, TypeError, "num_samples must be an int >= 1, got float 2.5"),
        ({"image_size": 8}, ValueError, "image_size must be an int >= 16, got 8"),
        ({"image_size": True}, TypeError, "image_size must be an int"),
        ({"seed": -1}, ValueError, "seed must be an int >= 0, got -1"),
        ({"transform": "flip"}, TypeError, "transform must be a callable"),
    ],
)
def test_bad_dataset_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ShapesDataset(**{"num_samples": 5, **kwargs})


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((-1,), {}, ValueError, "index must be an int >= 0, got -1"),
        (("3",), {}, TypeError, "index must be an int"),
        ((0,), {"split": "Train"}, ValueError, "split must be one of"),
        ((0,), {"image_size": 15}, ValueError, "image_size must be an int >= 16, got 15"),
        ((0,), {"seed": 1.0}, TypeError, "seed must be an int"),
    ],
)
def test_bad_render_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        render_sample(*args, **kwargs)


def test_bad_index(small_train):
    with pytest.raises(IndexError, match="index 200 is out of range for a dataset of 200 samples"):
        small_train[200]
    with pytest.raises(TypeError, match="index must be an int"):
        small_train[1.5]


def test_dataloader_workers_render_identically(small_train, monkeypatch):
    import visattn.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "_PRERENDER_BYTES", 0)  # each worker renders its own samples
    lazy = ShapesDataset("train", num_samples=40)
    loader = torch.utils.data.DataLoader(lazy, batch_size=10, num_workers=2)
    images, labels = zip(*loader, strict=True)
    assert torch.cat(labels).tolist() == small_train.targets[:40]
    torch.testing.assert_close(torch.cat(images), torch.stack([small_train[i][0] for i in range(40)]))


def test_pickles_for_spawned_workers(monkeypatch):
    import visattn.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "_PRERENDER_BYTES", 0)
    ds = ShapesDataset("val", num_samples=10)
    ds.sample(3)  # fills the cache
    clone = pickle.loads(pickle.dumps(ds))
    assert _same(clone.sample(3), ds.sample(3)) and clone.targets == ds.targets


@settings(max_examples=25, deadline=None)
@given(index=st.integers(0, 2**40), seed=st.integers(0, 2**32), image_size=st.integers(16, 80),
       split=st.sampled_from(["train", "val"]))
def test_any_sample_is_well_formed(index, seed, image_size, split):
    s = render_sample(index, split=split, image_size=image_size, seed=seed)
    assert s.image.shape == (image_size, image_size, 3) and s.mask.shape == (image_size, image_size)
    assert s.mask.any() and s.mask.max() == 1
