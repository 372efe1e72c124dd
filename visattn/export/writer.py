"""``write_overlays``: the folder of images, ``manifest.json`` and the gallery behind ``visattn overlay``.

Layout of ``out_dir`` (``.png``, or ``.jpg`` / ``.webp`` with ``image_format``)::

    manifest.json            run info, one entry per image (paths relative to out_dir), unreadable inputs
    index.html, page-N.html  the gallery (see gallery.py)
    <stem>/original.png      the image as the model saw it
    <stem>/<method>.png      one overlay per CAM method, then one per attention-block map
    <stem>/grid.png          all of the above side by side, titled with the prediction
    <stem>/thumbs/*.jpg      small copies of the grid and each overlay, for the gallery's pages

Items are streamed: each is written and dropped before the next is read, so a long run holds one image at a time.
The manifest is rewritten every 25 images or 20 seconds (but never more than a tenth of the time) with
``"complete": false``, so a run killed midway leaves a gallery of what it finished, and ``overlay_files`` resumes it
instead of explaining those images, or its own output, again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from numbers import Real
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
from matplotlib.colors import Colormap
from PIL import Image
from tqdm import tqdm

from ..files import atomic_write, atomic_write_text
from .gallery import page_name, render_pages
from .grid import make_grid
from .naming import UniqueNames
from .render import blend, check_image

__all__ = ["OverlayItem", "write_overlays", "read_manifest", "resumable_entries", "IMAGE_FORMATS"]

MANIFEST_FORMAT = "visattn.overlays/1"
MANIFEST_NAME = "manifest.json"
IMAGE_FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
_THUMB_SIDE = 384  # gallery thumbnails: at most this many pixels on the longer side (small inputs keep their size)
_SAVE_EVERY = (25, 20.0)  # rewrite the manifest after this many new images or seconds, whichever comes first ...
_SAVE_SHARE = 0.1  # ... but spend at most this share of the time on it: a save rewrites the whole manifest and every
#                    page, so in a run of many thousand images fixed intervals would make the saving quadratic


def _save_due(new_images: int, seconds_since: float, last_save_seconds: float) -> bool:
    """Whether to rewrite the manifest now, ``new_images`` and ``seconds_since`` after the last save, which took
    ``last_save_seconds``."""
    if seconds_since * _SAVE_SHARE < last_save_seconds:
        return False
    return new_images >= _SAVE_EVERY[0] or seconds_since >= _SAVE_EVERY[1]


@dataclass
class OverlayItem:
    """One explained image, ready to write.

    Attributes:
        source: the input path as given (or any label); its stem names the output folder.
        image: ``(H, W, 3)`` uint8, the image as the model saw it (after the eval resize/crop, before normalisation).
        cams: method name (e.g. ``"gradcam"``) to a float ``(H, W)`` map in ``[0, 1]``.
        block_maps: attention-block map name (e.g. ``"layer4.0.se.spatial"``) to a float ``(H, W)`` map in ``[0, 1]``.
        label: the predicted class name.
        probability: the predicted class probability, in ``[0, 1]``.
        extra: JSON-able per-image information copied into the manifest (numpy scalars/arrays and paths are fine).
    """

    source: str
    image: np.ndarray
    cams: dict[str, np.ndarray]
    block_maps: dict[str, np.ndarray]
    label: str
    probability: float
    extra: dict[str, Any] = field(default_factory=dict)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"a {type(value).__name__} value ({value!r:.60}) cannot be stored in JSON")


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as plain JSON types (a normalised copy), or a clear error naming ``where``."""
    try:
        return json.loads(json.dumps(value, default=_json_default, allow_nan=False))
    except TypeError as err:
        raise TypeError(f"{where} must be JSON-able (str, numbers, bools, None, lists, str-keyed dicts): "
                        f"{err}") from err
    except ValueError as err:  # NaN or inf: valid Python, invalid JSON (a browser's JSON.parse rejects it)
        raise ValueError(f"{where} holds NaN or inf, which JSON cannot store; use None instead ({err})") from err


def _display_text(text: str) -> str:
    """``text`` as valid UTF-8 for the manifest and page.

    A file name with bytes that do not decode as UTF-8 reaches Python with surrogate escapes (``b"\\xff"`` becomes
    ``"\\udcff"``, PEP 383), which no UTF-8 file can hold; those bytes are shown as ``\\xff`` instead.
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte (e.g. "\\ud800"): show its code point
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _for_display(value: Any) -> Any:
    """A JSON value with every string (keys too) passed through ``_display_text``."""
    if isinstance(value, str):
        return _display_text(value)
    if isinstance(value, dict):
        return {_for_display(k): _for_display(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_display(v) for v in value]
    return value


def _check_item(item: Any) -> None:
    if not isinstance(item, OverlayItem):
        raise TypeError(f"items must yield OverlayItem objects, got {type(item).__name__}")
    where = f"OverlayItem(source={item.source!r})"
    if not isinstance(item.source, str) or not isinstance(item.label, str):
        raise TypeError(f"{where}: source and label must be str, got {type(item.source).__name__} and "
                        f"{type(item.label).__name__}")
    probability = item.probability
    if isinstance(probability, bool) or not isinstance(probability, Real) or not 0.0 <= float(probability) <= 1.0:
        raise ValueError(f"{where}: probability must be a number in [0, 1], got {probability!r}")
    check_image(item.image, f"{where}.image")
    for kind in ("cams", "block_maps"):
        maps = getattr(item, kind)
        if not isinstance(maps, Mapping) or not all(isinstance(name, str) for name in maps):
            raise TypeError(f"{where}.{kind} must be a dict from str names to (H, W) maps, got {maps!r:.80}")


def _write_image(path: Path, image: np.ndarray) -> None:
    """Save by the path's suffix: PNG (compress_level 1: a fraction of the default's time at ~10 % larger files),
    JPEG (quality 90) or WebP (quality 90)."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG", compress_level=1))
    elif suffix == ".jpg":
        atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="JPEG", quality=90))
    else:
        atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="WEBP", quality=90))


def _write_thumb(path: Path, image: np.ndarray) -> None:
    picture = Image.fromarray(image)
    picture.thumbnail((_THUMB_SIDE, _THUMB_SIDE), Image.Resampling.LANCZOS)  # only ever shrinks
    atomic_write(path, lambda tmp: picture.save(tmp, format="JPEG", quality=85))


def _write_item(out_dir: Path, item: OverlayItem, folder: str, alpha: float, cmap: str | Colormap,
                ext: str) -> dict[str, Any]:
    _check_item(item)
    where = f"OverlayItem(source={item.source!r})"
    extra = _jsonable(dict(item.extra), f"{where}.extra")  # before any file is written: fail early, not at the end
    item_dir = out_dir / folder
    names = UniqueNames(reserved=("original", "grid", "thumbs"))
    files: dict[str, Any] = {"original": f"{folder}/original{ext}", "grid": f"{folder}/grid{ext}",
                             "cams": {}, "block_maps": {}, "thumbs": {"grid": f"{folder}/thumbs/grid.jpg"}}
    _write_image(item_dir / f"original{ext}", item.image)
    panels = []
    for kind in ("cams", "block_maps"):
        for name, heatmap in getattr(item, kind).items():
            try:
                overlay = blend(item.image, heatmap, alpha=alpha, cmap=cmap)
            except (TypeError, ValueError) as err:
                raise type(err)(f"{where}.{kind}[{name!r}]: {err}") from err
            stem = names.take(name, default="map")
            _write_image(item_dir / f"{stem}{ext}", overlay)
            _write_thumb(item_dir / "thumbs" / f"{stem}.jpg", overlay)
            files[kind][name] = f"{folder}/{stem}{ext}"
            files["thumbs"][name] = f"{folder}/thumbs/{stem}.jpg"
            panels.append((name, overlay))
    title = f"pred: {item.label} ({100.0 * float(item.probability):.1f} %)"
    grid = make_grid(item.image, panels, title=title)
    _write_image(item_dir / f"grid{ext}", grid)
    _write_thumb(item_dir / "thumbs" / "grid.jpg", grid)
    return {"source": item.source, "folder": folder, "label": item.label, "probability": float(item.probability),
            "files": files, "extra": extra}


def _check_errors(errors: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    checked = []
    for i, error in enumerate(errors):
        if not isinstance(error, Mapping) or "source" not in error or "error" not in error:
            raise ValueError(f"errors[{i}] must be a mapping with 'source' and 'error' keys, got {error!r:.80}")
        checked.append({"source": str(error["source"]), "error": str(error["error"])})
    return checked


def _manifest_files(manifest: Any) -> set[str]:
    """Every file path listed in a manifest (``files`` of each image), or none if it is not one of ours."""
    try:
        paths = set()
        for entry in manifest["images"]:
            files = entry["files"]
            paths |= {files["original"], files["grid"], *files["cams"].values(), *files["block_maps"].values(),
                      *files.get("thumbs", {}).values()}
        return {p for p in paths if isinstance(p, str)}
    except (KeyError, TypeError, AttributeError):
        return set()


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """The ``manifest.json`` an earlier run wrote into ``out_dir`` (None if there is none, or it is unreadable)."""
    try:
        manifest = json.loads((Path(out_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT else None


def resumable_entries(out_dir: str | Path, *, run_info: Mapping[str, Any], alpha: float, cmap: str,
                      image_format: str) -> list[dict[str, Any]]:
    """The images an interrupted earlier run into ``out_dir`` finished with these same settings (its manifest says
    ``"complete": false``); an empty list when there is nothing to resume."""
    manifest = read_manifest(out_dir)
    if manifest is None or manifest.get("complete", True):
        return []
    same = (manifest.get("run") == _for_display(_jsonable(dict(run_info), "run_info"))
            and manifest.get("alpha") == float(alpha) and manifest.get("cmap") == cmap
            and manifest.get("image_format", "png") == image_format)
    entries = manifest.get("images") if same else None
    out_dir = Path(out_dir)
    if not isinstance(entries, list):
        return []
    # Only entries whose files are all still there.
    return [e for e in entries if all((out_dir / rel).is_file() for rel in _manifest_files({"images": [e]}))]


def _read_previous_files(manifest_path: Path) -> set[str]:
    manifest = read_manifest(manifest_path.parent)
    return _manifest_files(manifest) if manifest is not None else set()


def listed_overlay_files(out_dir: str | Path) -> set[Path]:
    """The files (resolved) that the ``manifest.json`` in ``out_dir`` lists: what an earlier run wrote there."""
    out_dir = Path(out_dir)
    return {(out_dir / rel).resolve() for rel in _read_previous_files(out_dir / MANIFEST_NAME)}


def _remove_stale(out_dir: Path, stale: set[str]) -> None:
    """Delete PNGs a previous run into ``out_dir`` listed and this run did not rewrite, then their empty folders.

    Only files the old manifest names are touched (never anything else a user keeps in ``out_dir``), and only inside it.
    """
    root = out_dir.resolve()
    for relative in sorted(stale):
        path = (out_dir / relative).resolve()
        if path.suffix.lower() not in (*IMAGE_FORMATS.values(), ".jpg") or not path.is_relative_to(root) \
                or path == root or not path.is_file():
            continue
        path.unlink()
        for folder in (path.parent, path.parent.parent):  # <stem>/thumbs, then <stem>, once they are empty
            if folder != root and folder.is_relative_to(root) and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def write_overlays(out_dir: str | Path, items: Iterable[OverlayItem], *, alpha: float = 0.5,
                   cmap: str | Colormap = "jet", run_info: Mapping[str, Any] | None = None,
                   errors: Sequence[Mapping[str, str]] = (), progress: bool = False, image_format: str = "png",
                   page_size: int = 100, resumed: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Write overlays, grids, thumbnails, ``manifest.json`` and the gallery pages for explained images.

    Every file is written atomically. Writing again into the same ``out_dir`` replaces the previous run: images the
    old manifest listed and this run did not produce are removed; other files in ``out_dir`` are left alone.

    Args:
        out_dir: the output folder (created if missing).
        items: the explained images; consumed once, one at a time (a generator keeps memory flat).
        alpha: weight of the heatmap colour in each overlay, in ``[0, 1]``.
        cmap: matplotlib colormap name or ``Colormap`` for the heatmaps.
        run_info: JSON-able run description for the manifest and page header (model, weights, methods, target
            layers, versions...).
        errors: ``{"source", "error"}`` records of inputs that could not be read. Read after ``items`` is exhausted,
            so a list that the items generator appends to as it meets unreadable files works.
        progress: show a tqdm progress bar on stderr.
        image_format: ``'png'`` (lossless), ``'jpeg'`` or ``'webp'`` (a fraction of the size) for the full-size files.
        page_size: images per gallery page.
        resumed: manifest entries of an interrupted earlier run into ``out_dir`` whose files are kept as they are
            (``overlay_files`` passes them when it resumes).

    Returns:
        The path of ``manifest.json``.

    Raises:
        TypeError: an item is not an ``OverlayItem``, or a field, ``run_info`` or ``extra`` has the wrong type.
        ValueError: ``alpha``/``cmap``/``image_format``/``page_size`` are invalid, a map or probability is out of
            range, an image is not ``(H, W, 3)`` uint8, or an ``errors`` record lacks its keys.

    Example:
        >>> errors = []
        >>> items = (explain(p) for p in paths)  # doctest: +SKIP  (yours; appends {"source", "error"} to errors)
        >>> write_overlays("out/overlays", items, run_info={"model": "resnet18_cbam"}, errors=errors)  # doctest: +SKIP
    """
    # Validate the options on a 1 x 1 dummy: a typo should fail before the first model forward, not after it.
    blend(np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.float32), alpha=alpha, cmap=cmap)
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {list(IMAGE_FORMATS)}, got {image_format!r}")
    render_pages({}, page_size)  # checks page_size
    run = _jsonable(dict(run_info or {}), "run_info")
    _check_errors(errors)  # checked again at the end, when a generator may have appended to it
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST_NAME
    previous = _read_previous_files(manifest_path)
    cmap_name = cmap if isinstance(cmap, str) else cmap.name

    entries = [dict(e) for e in resumed]
    folders = UniqueNames(reserved=(MANIFEST_NAME, "index.html", *(e["folder"] for e in entries)))
    pages: set[str] = set()

    def save(complete: bool) -> dict[str, Any]:
        # Sources, error messages, labels and names may come from file names that are not valid UTF-8.
        manifest = _for_display({
            "format": MANIFEST_FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "complete": complete,
            "run": run,
            "cmap": cmap_name,
            "alpha": float(alpha),
            "image_format": image_format,
            "images": entries,
            "errors": _check_errors(errors),
        })
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        for name, html in render_pages(manifest, page_size).items():
            atomic_write_text(out_dir / name, html)
            pages.add(name)
        return manifest

    saved_at, saved_count, save_seconds = time.monotonic(), len(entries), 0.0
    for item in tqdm(items, desc="overlays", unit="image", disable=not progress):
        folder = folders.take(PurePath(str(getattr(item, "source", ""))).stem)
        entries.append(_write_item(out_dir, item, folder, alpha, cmap, IMAGE_FORMATS[image_format]))
        if _save_due(len(entries) - saved_count, time.monotonic() - saved_at, save_seconds):
            started = time.monotonic()
            save(complete=False)
            saved_at, saved_count = time.monotonic(), len(entries)
            save_seconds = saved_at - started
    manifest = save(complete=True)
    # Pages of an earlier, longer gallery that this one no longer has.
    for number in range(2, 100_000):
        stale_page = out_dir / page_name(number)
        if page_name(number) in pages:
            continue
        if not stale_page.is_file():
            break
        stale_page.unlink()
    # On a case-insensitive file system (macOS, Windows) an old "Cat/x.png" is the new "cat/x.png": keep it. On a
    # case-sensitive one it is a stale file. index.html, just written, tells which kind this folder is on.
    insensitive = (out_dir / "INDEX.HTML").exists()
    fold = str.casefold if insensitive else str
    written = {fold(path) for path in _manifest_files(manifest)}
    _remove_stale(out_dir, {path for path in previous if fold(path) not in written})
    return manifest_path
