"""The gallery of an overlay folder: ``index.html`` and its further pages, self-contained, offline.

Inline CSS only (no scripts, fonts or CDN), image paths relative and URL-quoted (file names may hold spaces or
unicode), every piece of user text HTML-escaped. Built from the manifest alone, so the pages and ``manifest.json``
cannot disagree.

A page holds ``page_size`` images (``index.html`` the first, ``page-2.html`` ... the rest) as cards of thumbnails that
link to the full-size files. A row of radio buttons switches every card between its grid and one method's overlay,
in CSS alone; a browser fetches only the thumbnails it shows (``loading="lazy"``), so a page of a 1,000-image run
opens as fast as one of ten.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote

__all__ = ["render_index_html", "render_pages", "page_name"]

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1a1a1a; background: #fafafa; }
h1 { font-size: 1.4rem; margin: 0 0 .5rem; } h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
table.run td, table.run th { text-align: left; padding: .1rem .8rem .1rem 0; vertical-align: top; }
table.run th { font-weight: 600; white-space: nowrap; }
nav.pages { margin: .8rem 0; } nav.pages a, nav.pages b { margin-right: .5rem; }
.switch { margin: .8rem 0; } .switch label { margin-right: .9rem; cursor: pointer; white-space: nowrap; }
.switch-input { position: absolute; opacity: 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 1rem; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6rem; }
.card img { width: 100%; height: auto; display: none; image-rendering: pixelated; }
.card .source { font-family: ui-monospace, monospace; word-break: break-all; color: #555; font-size: .85rem; }
.card .pred { font-size: 1.05rem; margin: .3rem 0; }
.card .top5 { color: #333; margin: .2rem 0; } .card .links { font-size: .85rem; }
.card .links a { margin-right: .6rem; white-space: nowrap; }
.card dl { margin: .3rem 0 0; display: grid; grid-template-columns: max-content 1fr; gap: 0 .8rem; color: #555;
           font-size: .85rem; }
.card dd { margin: 0; }
table.errors { border-collapse: collapse; } table.errors td, table.errors th { border: 1px solid #ddd; padding: .3rem; }
table.errors td:first-child { font-family: ui-monospace, monospace; word-break: break-all; }
.empty { color: #555; font-style: italic; }
"""

_HEADLINE_KEYS = ("model", "weights", "methods", "target_layers")


def _text(value: Any) -> str:
    """A manifest value as escaped display text: strings as they are, anything else as compact JSON."""
    return escape(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def _url(relative_path: str) -> str:
    # quote() leaves "/" alone and percent-encodes spaces, "#", "?" and UTF-8 bytes, which file:// URLs resolve.
    return escape(quote(relative_path), quote=True)


def _percent(probability: float) -> str:
    return f"{100.0 * probability:.1f} %"


def page_name(number: int) -> str:
    """The file of gallery page ``number`` (1-based): ``index.html``, then ``page-2.html``, ..."""
    return "index.html" if number == 1 else f"page-{number}.html"


def _title(manifest: Mapping[str, Any]) -> str:
    model = manifest.get("run", {}).get("model")
    return "visattn overlays" + (f": {_text(model)}" if model else "")


def _header(manifest: Mapping[str, Any]) -> str:
    run = dict(manifest.get("run", {}))
    ordered = [k for k in _HEADLINE_KEYS if k in run] + sorted(k for k in run if k not in _HEADLINE_KEYS)
    rows = [f"<tr><th>{escape(str(k))}</th><td>{_text(run[k])}</td></tr>" for k in ordered]
    rows.append(f"<tr><th>created</th><td>{_text(manifest.get('created', ''))}</td></tr>")
    rows.append(f"<tr><th>overlay</th><td>cmap {_text(manifest.get('cmap', ''))}, "
                f"alpha {_text(manifest.get('alpha', ''))}</td></tr>")
    unfinished = "" if manifest.get("complete", True) else " (unfinished: the run stopped before the end)"
    counts = f"{len(manifest.get('images', []))} image(s), {len(manifest.get('errors', []))} unreadable{unfinished}"
    return (f"<header><h1>{_title(manifest)}</h1><p>{counts}</p>"
            f"<table class=\"run\">{''.join(rows)}</table></header>")


def _views(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The views a page offers: the grid, then every method and block map that some image on it has."""
    names: dict[str, None] = {"grid": None}
    for entry in entries:
        files = entry["files"]
        names.update(dict.fromkeys([*files.get("cams", {}), *files.get("block_maps", {})]))
    return list(names)


def _full(files: Mapping[str, Any], view: str) -> str | None:
    if view == "grid":
        return files["grid"]
    return files.get("cams", {}).get(view) or files.get("block_maps", {}).get(view)


def _top5(extra: Mapping[str, Any]) -> str:
    top5 = extra.get("top5")
    if not isinstance(top5, list) or not all(isinstance(t, Mapping) and "class" in t for t in top5):
        return ""
    items = ", ".join(f"{escape(str(t['class']))} {_percent(float(t.get('probability', 0.0)))}" for t in top5)
    return f"<div class=\"top5\">top-5: {items}</div>"


def _extra(extra: Mapping[str, Any]) -> str:
    rows = []
    for key, value in extra.items():
        if key in ("top5", "class_index"):
            continue
        if key == "channel_gates_top5" and isinstance(value, Mapping):
            text = "; ".join(f"{escape(str(block))}: {', '.join(str(c) for c in channels)}"
                             for block, channels in value.items())
            rows.append(f"<dt>most excited channels</dt><dd>{text}</dd>")
        else:
            rows.append(f"<dt>{escape(str(key))}</dt><dd>{_text(value)}</dd>")
    return f"<dl>{''.join(rows)}</dl>" if rows else ""


def _card(entry: Mapping[str, Any], views: Sequence[str]) -> str:
    files = entry["files"]
    thumbs = files.get("thumbs", {})
    pictures = []
    for index, view in enumerate(views):
        full = _full(files, view)
        if full is None:
            continue
        shown = thumbs.get(view, full)
        pictures.append(f"<a href=\"{_url(full)}\"><img class=\"view-{index}\" src=\"{_url(shown)}\" loading=\"lazy\" "
                        f"decoding=\"async\" alt=\"{escape(entry['source'], quote=True)}: {escape(view, quote=True)}\">"
                        f"</a>")
    links = [("original", files["original"]), *files.get("cams", {}).items(), *files.get("block_maps", {}).items()]
    link_html = " ".join(f"<a href=\"{_url(path)}\">{escape(name)}</a>" for name, path in links)
    extra = entry.get("extra") or {}
    return (
        "<article class=\"card\">"
        f"<div class=\"source\">{escape(entry['source'])}</div>"
        f"<div class=\"pred\">pred: <b>{escape(entry['label'])}</b> ({_percent(entry['probability'])})</div>"
        f"{''.join(pictures)}{_top5(extra)}"
        f"<div class=\"links\">full size: {link_html}</div>{_extra(extra)}"
        "</article>"
    )


def _switch(views: Sequence[str]) -> tuple[str, str]:
    """The view radio buttons (which must precede the cards as siblings) and the CSS rules that they drive."""
    inputs = "".join(f"<input class=\"switch-input\" type=\"radio\" name=\"view\" id=\"view-{i}\""
                     f"{' checked' if i == 0 else ''}>" for i in range(len(views)))
    labels = "".join(f"<label for=\"view-{i}\">{escape(view)}</label>" for i, view in enumerate(views))
    rules = "\n".join(f"#view-{i}:checked ~ main .view-{i} {{ display: block; }}\n"
                      f"#view-{i}:checked ~ .switch label[for=view-{i}] {{ font-weight: 700; text-decoration: "
                      f"underline; }}" for i in range(len(views)))
    return inputs + f"<div class=\"switch\">show: {labels}</div>", rules


def _nav(number: int, pages: int) -> str:
    if pages <= 1:
        return ""
    links = [f"<b>{n}</b>" if n == number else f"<a href=\"{page_name(n)}\">{n}</a>" for n in range(1, pages + 1)]
    return f"<nav class=\"pages\">pages: {' '.join(links)}</nav>"


def _errors(errors: list[Mapping[str, str]]) -> str:
    if not errors:
        return ""
    rows = "".join(f"<tr><td>{escape(e['source'])}</td><td>{escape(e['error'])}</td></tr>" for e in errors)
    return (f"<section id=\"errors\"><h2>Unreadable inputs ({len(errors)})</h2>"
            f"<table class=\"errors\"><tr><th>source</th><th>error</th></tr>{rows}</table></section>")


def render_pages(manifest: Mapping[str, Any], page_size: int = 100) -> dict[str, str]:
    """Every gallery page of a manifest as written by ``write_overlays``: file name -> complete HTML document.

    Args:
        manifest: the ``manifest.json`` content: ``run``, ``created``, ``cmap``, ``alpha``, ``images`` (each with
            ``source``, ``label``, ``probability``, ``files`` paths relative to the pages, optional ``extra``) and
            ``errors`` (each ``{"source", "error"}``).
        page_size: images per page.

    Raises:
        ValueError: ``page_size`` is not a positive int.
    """
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"page_size must be a positive int, got {page_size!r}")
    images = list(manifest.get("images", []))
    pages = max(1, -(-len(images) // page_size))
    out = {}
    for number in range(1, pages + 1):
        entries = images[(number - 1) * page_size: number * page_size]
        views = _views(entries)
        switch, rules = _switch(views)
        cards = "".join(_card(e, views) for e in entries) or "<p class=\"empty\">No images were exported.</p>"
        first = (number - 1) * page_size + 1
        where = f"<h2>Images {first}-{first + len(entries) - 1} of {len(images)}</h2>" if entries else "<h2>Images</h2>"
        out[page_name(number)] = (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_title(manifest)}</title><style>{_CSS}{rules}</style></head><body>\n"
            f"{_header(manifest)}\n{where}{_nav(number, pages)}\n{switch}\n<main class=\"cards\">{cards}</main>\n"
            f"{_nav(number, pages)}{_errors(list(manifest.get('errors', []))) if number == 1 else ''}\n"
            "</body></html>\n"
        )
    return out


def render_index_html(manifest: Mapping[str, Any], page_size: int = 100) -> str:
    """The first gallery page (``index.html``) of a manifest; see :func:`render_pages`."""
    return render_pages(manifest, page_size)["index.html"]
