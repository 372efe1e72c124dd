"""visattn.export.writer: the overlay folder, its manifest and gallery, name collisions, errors and re-runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from visattn.export import OverlayItem, blend, render_index_html, write_overlays
from visattn.export.naming import safe_name


def make_item(source: str, seed: int = 0, size: int = 16, cams=("gradcam", "gradcam++"),
              block_maps=("layer4.0.se.spatial",), **kwargs) -> OverlayItem:
    rng = np.random.default_rng(seed)
    fields = {
        "image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "cams": {name: rng.random((size // 2, size // 2)).astype(np.float32) for name in cams},
        "block_maps": {name: rng.random((size, size)).astype(np.float32) for name in block_maps},
        "label": "circle",
        "probability": 0.973,
        **kwargs,
    }
    return OverlayItem(source, **fields)


def listed_files(entry: dict) -> list[str]:
    files = entry["files"]
    return [files["original"], files["grid"], *files["cams"].values(), *files["block_maps"].values()]


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_every_item_is_written_and_listed(tmp_path):
    items = [make_item("data/one.jpg", seed=1, extra={"target": np.int64(3), "score": np.float32(0.5)}),
             make_item("data/two.png", seed=2)]
    manifest_path = write_overlays(tmp_path / "out", items, run_info={"model": "resnet18", "methods": ["gradcam"]})
    out = tmp_path / "out"
    assert manifest_path == out / "manifest.json" and (out / "index.html").is_file()
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    assert manifest["run"] == {"model": "resnet18", "methods": ["gradcam"]}
    assert [e["source"] for e in manifest["images"]] == ["data/one.jpg", "data/two.png"]
    first = manifest["images"][0]
    assert first["label"] == "circle" and first["probability"] == pytest.approx(0.973)
    assert first["extra"] == {"target": 3, "score": 0.5}
    assert set(first["files"]["cams"]) == {"gradcam", "gradcam++"}
    assert set(first["files"]["block_maps"]) == {"layer4.0.se.spatial"}
    for entry in manifest["images"]:
        for relative in listed_files(entry):
            assert not Path(relative).is_absolute() and (out / relative).is_file(), relative
    # The PNGs hold what they claim: the image itself, and its blend with each map.
    np.testing.assert_array_equal(read_png(out / first["files"]["original"]), items[0].image)
    np.testing.assert_array_equal(read_png(out / first["files"]["cams"]["gradcam"]),
                                  blend(items[0].image, items[0].cams["gradcam"]))
    grid = read_png(out / first["files"]["grid"])
    assert grid.shape[0] > 128 and grid.shape[1] > 4 * 128  # original + 3 maps, each upscaled from 16 px


@pytest.mark.parametrize("sources", [("a/cat.jpg", "b/cat.jpg"), ("Cat.jpg", "cat.png"), ("x/manifest.json.png",)])
def test_same_stem_does_not_overwrite(tmp_path, sources):
    items = [make_item(source, seed=i) for i, source in enumerate(sources)]
    manifest = json.loads(write_overlays(tmp_path, items).read_text(encoding="utf-8"))
    folders = [entry["folder"] for entry in manifest["images"]]
    assert len({folder.casefold() for folder in folders}) == len(sources)  # distinct even on macOS / Windows
    assert "manifest.json" not in folders and (tmp_path / "manifest.json").is_file()
    for item, entry in zip(items, manifest["images"], strict=True):
        np.testing.assert_array_equal(read_png(tmp_path / entry["files"]["original"]), item.image)


def test_unsafe_and_unicode_names_stay_inside_their_folder(tmp_path):
    item = make_item("../up/my cat ü:1.png", cams=("grad/cam", "original", "grid"), block_maps=("a\\b",))
    manifest = json.loads(write_overlays(tmp_path / "out", [item]).read_text(encoding="utf-8"))
    entry = manifest["images"][0]
    assert entry["folder"] == "my cat ü_1"
    paths = listed_files(entry)
    assert len(set(paths)) == len(paths) == 6  # a map named "original" or "grid" gets its own file
    for relative in paths:
        assert (tmp_path / "out" / relative).resolve().parent == (tmp_path / "out" / entry["folder"]).resolve()
    np.testing.assert_array_equal(read_png(tmp_path / "out" / entry["files"]["original"]), item.image)


def test_errors_appear_in_manifest_and_html(tmp_path):
    errors = [{"source": "bad <1>.jpg", "error": "OSError: cannot identify image file"}]
    manifest_path = write_overlays(tmp_path, [make_item("ok.png")], errors=errors)
    assert json.loads(manifest_path.read_text(encoding="utf-8"))["errors"] == errors
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "bad &lt;1&gt;.jpg" in html and "cannot identify image file" in html and "bad <1>" not in html


def test_errors_appended_while_items_stream_are_recorded(tmp_path):
    errors: list[dict[str, str]] = []

    def items():
        yield make_item("first.png")
        errors.append({"source": "broken.jpg", "error": "truncated"})
        assert (tmp_path / "first" / "grid.png").is_file()  # the first item was written before the next was asked for
        yield make_item("second.png")

    manifest = json.loads(write_overlays(tmp_path, items(), errors=errors).read_text(encoding="utf-8"))
    assert [e["source"] for e in manifest["images"]] == ["first.png", "second.png"]
    assert manifest["errors"] == [{"source": "broken.jpg", "error": "truncated"}]


def test_html_escapes_text_and_quotes_paths(tmp_path):
    write_overlays(tmp_path, [make_item("my pic #1 ü.png", label="<script>alert(1)</script>")],
                   run_info={"model": "m&m"})
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in html and "&lt;script&gt;" in html and "m&amp;m" in html
    sources = re.findall(r'<img class="view-\d+" src="([^"]+)"', html)
    # "#" is not kept in folder names; the page shows thumbnails of the grid and of each map
    assert sources[0] == "my%20pic%20_1%20%C3%BC/thumbs/grid.jpg" and len(sources) == 4  # grid + 3 maps
    for link in re.findall(r'(?:href|src)="([^"]+)"', html):
        assert (tmp_path / unquote(link)).is_file(), link


def test_gallery_quotes_url_special_characters():
    files = {"original": "a#b?/o.png", "grid": "a#b?/g.png", "cams": {"x": "a#b?/x y.png"}, "block_maps": {}}
    html = render_index_html({"images": [{"source": "s", "label": "l", "probability": 0.5, "files": files}]})
    # Without thumbnails (an older manifest) the page shows the full-size files.
    assert 'src="a%23b%3F/g.png"' in html and 'href="a%23b%3F/x%20y.png"' in html and "50.0 %" in html


def test_empty_run_writes_an_empty_gallery(tmp_path):
    manifest = json.loads(write_overlays(tmp_path / "out", []).read_text(encoding="utf-8"))
    assert manifest["images"] == [] and manifest["errors"] == []
    assert "No images were exported" in (tmp_path / "out" / "index.html").read_text(encoding="utf-8")


def test_rerun_replaces_previous_run_and_keeps_user_files(tmp_path):
    write_overlays(tmp_path, [make_item("a.png", seed=1), make_item("b.png")])
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "a" / "my.png").write_bytes(b"mine")
    new_a = make_item("a.png", seed=5, cams=("gradcam",), block_maps=())
    manifest = json.loads(write_overlays(tmp_path, [new_a]).read_text(encoding="utf-8"))
    assert [e["folder"] for e in manifest["images"]] == ["a"]
    np.testing.assert_array_equal(read_png(tmp_path / "a" / "original.png"), new_a.image)
    assert not (tmp_path / "b").exists()  # the old run's folder, emptied of its listed files, is gone
    assert not (tmp_path / "a" / "gradcam_.png").exists() and not (tmp_path / "a" / "layer4.0.se.spatial.png").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "a" / "my.png").read_bytes() == b"mine"
    assert not list(tmp_path.rglob("*.tmp"))


def test_progress_bar_goes_to_stderr(tmp_path, capsys):
    write_overlays(tmp_path, [make_item("a.png")], progress=True)
    assert "overlays" in capsys.readouterr().err


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"alpha": 2.0}, ValueError, "alpha must lie in"),
    ({"cmap": "no_such_map"}, ValueError, "cmap 'no_such_map'"),
    ({"run_info": {"model": object()}}, TypeError, "run_info must be JSON-able"),
    ({"errors": [{"source": "x.jpg"}]}, ValueError, r"errors\[0\] must be a mapping with 'source' and 'error'"),
])
def test_bad_arguments_fail_before_any_item_is_read(tmp_path, kwargs, error, match):
    def items():
        raise AssertionError("items were read before the arguments were checked")
        yield  # pragma: no cover

    with pytest.raises(error, match=match):
        write_overlays(tmp_path, items(), **kwargs)


@pytest.mark.parametrize(("item", "error", "match"), [
    (make_item("p.png", probability=1.5), ValueError, r"source='p.png'.*probability must be a number in \[0, 1\]"),
    (make_item("e.png", extra={"loss": float("nan")}), ValueError, r"source='e.png'.*extra holds NaN"),
    (make_item("i.png", image=np.zeros((4, 4), np.uint8)), ValueError, r"source='i.png'.*image must have shape"),
    ("not an item", TypeError, "items must yield OverlayItem objects, got str"),
])
def test_bad_items_are_named(tmp_path, item, error, match):
    with pytest.raises(error, match=match):
        write_overlays(tmp_path, [item])


def test_item_without_cams_writes_its_block_maps(tmp_path):
    manifest = json.loads(write_overlays(tmp_path, [make_item("c.png", cams=())]).read_text(encoding="utf-8"))
    files = manifest["images"][0]["files"]
    assert files["cams"] == {} and (tmp_path / files["block_maps"]["layer4.0.se.spatial"]).is_file()


def test_bad_map_is_named_with_its_item_and_name(tmp_path):
    item = make_item("m.png")
    item.block_maps["layer4.0.se.spatial"] = item.block_maps["layer4.0.se.spatial"] * 3
    with pytest.raises(ValueError, match=r"source='m.png'.*block_maps\['layer4.0.se.spatial'\].*\[0, 1\]"):
        write_overlays(tmp_path, [item])


@pytest.mark.parametrize(("text", "expected"), [
    ("con", "_con"), ("con.tar", "_con.tar"), ("NUL.txt", "_NUL.txt"), ("com1", "_com1"), ("LPT9.png", "_LPT9.png"),
    ("aux.tar.gz", "_aux.tar.gz"), ("prn .png", "_prn .png"), ("COM\u00b9", "_COM\u00b9"),
    ("console", "console"), ("com10", "com10"), ("my.con", "my.con"), ("nul_", "nul_"),
])
def test_safe_name_avoids_windows_device_names_with_any_extension(text, expected):
    assert safe_name(text) == expected


@pytest.mark.parametrize("text", [
    "\u0939\u093f\u0928\u094d\u0926\u0940",  # Hindi: vowel sign I (Mc) and virama (Mn)
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22\u0e17\u0e35\u0e48",  # Thai with a tone mark (Mn)
    "x\u20dd",  # enclosing circle (Me)
])
def test_safe_name_keeps_combining_marks(text):
    assert safe_name(text) == text


def test_safe_name_keeps_combining_marks_next_to_replaced_characters():
    assert safe_name("\u0915:\u093e/\u093f?b") == "\u0915_\u093e_\u093f_b"
    assert safe_name("e\u0301cole") == "\u00e9cole"  # NFC first: a decomposed accent is composed


def test_device_name_source_gets_a_safe_folder(tmp_path):
    manifest = json.loads(write_overlays(tmp_path, [make_item("in/NUL.txt.png")]).read_text(encoding="utf-8"))
    entry = manifest["images"][0]
    assert entry["folder"] == "_NUL.txt" and (tmp_path / entry["files"]["grid"]).is_file()


def test_sources_with_undecodable_bytes_are_written_escaped(tmp_path):
    source = b"imgs/caf\xe9 \xff.jpg".decode("utf-8", "surrogateescape")  # a Latin-1 file name on a UTF-8 system
    bad = b"bad\xfe.jpg".decode("utf-8", "surrogateescape")
    errors = [{"source": bad, "error": f"OSError: cannot identify image file {bad!s}"}]
    item = make_item(source, label="l\udcff", cams=("grad\udcffcam",), extra={"path\udce9": "v\udce9", "odd": "\ud800"})
    manifest_path = write_overlays(tmp_path, [item], errors=errors, run_info={"model": "m\udcff"})
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    entry = manifest["images"][0]
    assert entry["source"] == "imgs/caf\\xe9 \\xff.jpg" and entry["label"] == "l\\xff"
    assert entry["extra"] == {"path\\xe9": "v\\xe9", "odd": "\\ud800"}
    assert list(entry["files"]["cams"]) == ["grad\\xffcam"] and manifest["run"] == {"model": "m\\xff"}
    assert manifest["errors"] == [{"source": "bad\\xfe.jpg",
                                   "error": "OSError: cannot identify image file bad\\xfe.jpg"}]
    for relative in listed_files(entry):
        assert (tmp_path / relative).is_file(), relative
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "imgs/caf\\xe9 \\xff.jpg" in html and "bad\\xfe.jpg" in html


def test_a_folder_renamed_only_in_case_leaves_no_stale_copy(tmp_path):
    write_overlays(tmp_path, [make_item("Cat.png")])
    manifest = json.loads(write_overlays(tmp_path, [make_item("cat.png")]).read_text(encoding="utf-8"))
    assert [e["folder"] for e in manifest["images"]] == ["cat"]
    case_insensitive = (tmp_path / "INDEX.HTML").exists()
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders == ["cat"] or (case_insensitive and len(folders) == 1)  # one folder, whatever the file system


def test_formats_thumbnails_and_pages(tmp_path):
    items = [make_item(f"img{i}.png") for i in range(7)]
    manifest = json.loads(write_overlays(tmp_path, items, image_format="webp", page_size=3).read_text())
    entry = manifest["images"][0]
    assert entry["files"]["grid"].endswith("grid.webp") and entry["files"]["original"].endswith(".webp")
    assert set(entry["files"]["thumbs"]) == {"grid", *entry["files"]["cams"], *entry["files"]["block_maps"]}
    with Image.open(tmp_path / entry["files"]["thumbs"]["grid"]) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) <= 384
    assert manifest["complete"] is True and manifest["image_format"] == "webp"
    pages = sorted(p.name for p in tmp_path.glob("*.html"))
    assert pages == ["index.html", "page-2.html", "page-3.html"]  # 3 + 3 + 1 images
    assert 'href="page-3.html"' in (tmp_path / "index.html").read_text() and "Images 7-7 of 7" in \
        (tmp_path / "page-3.html").read_text()
    # A shorter run into the same folder removes the pages, images and thumbnails it no longer has.
    write_overlays(tmp_path, items[:2], page_size=3)
    assert sorted(p.name for p in tmp_path.glob("*.html")) == ["index.html"]
    assert not list(tmp_path.rglob("*.webp")) and not (tmp_path / "img5").exists()


def test_readable_top5_and_channel_gates(tmp_path):
    item = make_item("a.png")
    item.extra = {"class_index": 3, "top5": [{"class": "tench", "probability": 0.75}, {"class": "goldfish",
                                                                                       "probability": 0.2}],
                  "channel_gates_top5": {"layer4.0.se": [7, 2]}}
    write_overlays(tmp_path, [item])
    html = (tmp_path / "index.html").read_text()
    assert "top-5: tench 75.0 %, goldfish 20.0 %" in html and "layer4.0.se: 7, 2" in html
    assert "&quot;class&quot;" not in html  # no raw JSON


def test_an_interrupted_run_is_resumed_not_redone(tmp_path):
    from visattn.export import resumable_entries

    def items(names, stop_after=None):
        for i, name in enumerate(names):
            if i == stop_after:
                raise KeyboardInterrupt
            yield make_item(name)

    names = [f"img{i}.png" for i in range(30)]
    with pytest.raises(KeyboardInterrupt):  # killed after 27 images: the manifest holds the first 25
        write_overlays(tmp_path, items(names, stop_after=27), run_info={"model": "m"})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] is False and len(manifest["images"]) == 25
    assert "unfinished" in (tmp_path / "index.html").read_text()
    done = resumable_entries(tmp_path, run_info={"model": "m"}, alpha=0.5, cmap="jet", image_format="png")
    assert [e["source"] for e in done] == names[:25]
    assert resumable_entries(tmp_path, run_info={"model": "other"}, alpha=0.5, cmap="jet", image_format="png") == []
    stamp = (tmp_path / "img3" / "grid.png").stat().st_mtime_ns
    write_overlays(tmp_path, items(names[25:]), run_info={"model": "m"}, resumed=done)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] is True and [e["source"] for e in manifest["images"]] == names
    assert (tmp_path / "img3" / "grid.png").stat().st_mtime_ns == stamp  # kept, not rewritten
