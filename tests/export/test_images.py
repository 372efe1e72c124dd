"""visattn.export.images: every kind of input file decodes to (H, W, 3) uint8 RGB; sources expand predictably."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, features

from visattn.export import expand_image_sources, load_image

RGB = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)


def _save(path, image: Image.Image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def test_png_is_exact(tmp_path):
    path = _save(tmp_path / "x.png", Image.fromarray(RGB))
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out, RGB)


def test_jpeg_decodes_close_to_source(tmp_path):
    colour = np.full((16, 24, 3), (200, 100, 50), dtype=np.uint8)
    out = load_image(_save(tmp_path / "x.JPG", Image.fromarray(colour), quality=95))
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - colour).max() <= 4


@pytest.mark.skipif(not features.check("webp"), reason="this Pillow build has no WebP support")
def test_webp_lossless_is_exact(tmp_path):
    out = load_image(_save(tmp_path / "x.webp", Image.fromarray(RGB), lossless=True))
    np.testing.assert_array_equal(out, RGB)


def test_greyscale_is_repeated_over_channels(tmp_path):
    grey = np.array([[0, 128], [200, 255]], dtype=np.uint8)
    out = load_image(_save(tmp_path / "g.png", Image.fromarray(grey)))
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))


def test_rgba_drops_alpha_and_keeps_colour(tmp_path):
    rgba = np.concatenate([RGB, np.array([[[0], [64]], [[128], [255]]], dtype=np.uint8)], axis=2)
    out = load_image(_save(tmp_path / "a.png", Image.fromarray(rgba)))
    np.testing.assert_array_equal(out, RGB)


def test_palette_image_is_looked_up(tmp_path):
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    palette_image.putpixel((0, 0), 0)
    palette_image.putpixel((1, 0), 1)
    out = load_image(_save(tmp_path / "p.png", palette_image))
    np.testing.assert_array_equal(out, [[[255, 0, 0], [0, 0, 255]]])


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    deep = np.array([[0, 32768], [65535, 65535]], dtype=np.uint16)
    out = load_image(_save(tmp_path / "d.png", Image.fromarray(deep)))
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255 and 126 <= out[0, 1, 0] <= 128  # clipping would give 255


def test_large_and_single_pixel_images(tmp_path):
    large = load_image(_save(tmp_path / "large.jpg", Image.new("RGB", (2400, 1800), (30, 60, 90))))
    assert large.shape == (1800, 2400, 3)
    single = load_image(_save(tmp_path / "one.png", Image.new("RGB", (1, 1), (1, 2, 3))))
    np.testing.assert_array_equal(single, [[[1, 2, 3]]])


def test_images_above_pils_bomb_limit_are_read_up_to_max_pixels(tmp_path, monkeypatch):
    # Scaled down: PIL's limit set to 1,000 pixels stands in for its 179 M; a 100x100 image is then "too large" for PIL
    # but not for visattn, which reads up to MAX_PIXELS and puts PIL's limit back afterwards.
    import visattn.export.images as images

    path = _save(tmp_path / "big.png", Image.new("L", (100, 100), 7))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError), Image.open(path):
        pass
    assert load_image(path).shape == (100, 100, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000
    monkeypatch.setattr(images, "MAX_PIXELS", 5000)
    with pytest.raises(OSError, match="big.png.*DecompressionBombError"):
        load_image(path)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_corrupt_file_raises_oserror_naming_it(tmp_path):
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes())
    with pytest.raises(OSError, match="corrupt.jpg"):
        load_image(path)


def test_truncated_jpeg_raises_oserror(tmp_path):
    good = _save(tmp_path / "good.jpg", Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3),
                                                                                            dtype=np.uint8)))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(OSError, match="truncated.jpg"):
        load_image(truncated)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")


@pytest.fixture
def tree(tmp_path):
    """root/b.png, root/a.JPG, root/sub/c.webp, root/sub/notes.txt, other/d.gif"""
    for relative in ("root/b.png", "root/a.JPG", "root/sub/c.webp", "other/d.gif"):
        _save(tmp_path / relative, Image.new("RGB", (2, 2)))
    (tmp_path / "root/sub/notes.txt").write_text("not an image")
    return tmp_path


def test_folder_is_searched_recursively_sorted_and_filtered(tree):
    names = [p.relative_to(tree).as_posix() for p in expand_image_sources([tree / "root"])]
    assert names == ["root/a.JPG", "root/b.png", "root/sub/c.webp"]


def test_glob_pattern_and_order_of_sources(tree):
    found = expand_image_sources([str(tree / "other" / "*.gif"), str(tree / "root" / "**" / "*.webp")])
    assert [p.name for p in found] == ["d.gif", "c.webp"]


def test_duplicates_are_dropped_where_first_reached(tree):
    found = expand_image_sources([tree / "root" / "b.png", tree / "root", tree / "root" / "sub" / ".." / "b.png"])
    assert [p.name for p in found] == ["b.png", "a.JPG", "c.webp"]


def test_other_photo_suffixes_are_found(tmp_path):
    for name in ("a.jfif", "b.jpe", "c.ppm", "d.pgm"):
        _save(tmp_path / name, Image.new("RGB", (2, 2)), format="JPEG" if name[-1] in "ef" else None)
    found = expand_image_sources([tmp_path])
    assert [p.name for p in found] == ["a.jfif", "b.jpe", "c.ppm", "d.pgm"]
    assert all(load_image(p).shape == (2, 2, 3) for p in found)


def test_broken_links_are_kept_to_be_reported_not_skipped(tree):
    link = tree / "root" / "gone.png"
    link.symlink_to(tree / "nowhere.png")
    found = expand_image_sources([tree / "root"])
    assert link in found  # a folder scan lists it ...
    assert expand_image_sources([link]) == [link]  # ... and so does naming it
    with pytest.raises(FileNotFoundError, match="gone.png.*broken symbolic link"):
        load_image(link)


def test_explicit_file_is_kept_whatever_its_extension(tree):
    assert expand_image_sources([tree / "root/sub/notes.txt"]) == [tree / "root/sub/notes.txt"]


@pytest.mark.parametrize("missing", ["does_not_exist.png", "nowhere/*.jpg", "root/sub/*.txt"])
def test_source_matching_nothing_raises_naming_it(tree, missing):
    with pytest.raises(FileNotFoundError, match=missing.split("/")[-1].replace("*", r"\*").replace(".", r"\.")):
        expand_image_sources([tree / "root", str(tree / missing)])


def test_empty_folder_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        expand_image_sources([tmp_path / "empty"])


def test_single_string_is_rejected(tree):
    with pytest.raises(TypeError, match="sources"):
        expand_image_sources(str(tree / "root"))
