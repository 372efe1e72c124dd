"""``index.html`` for an overlay folder: one self-contained page that opens from the file system, offline.

Inline CSS only (no scripts, fonts or CDN), image paths relative and URL-quoted (file names may hold spaces or
unicode), every piece of user text HTML-escaped. Built from the manifest alone, so the page and ``manifest.json``
cannot disagree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from typing import Any
from urllib.parse import quote

__all__ = ["render_index_html"]

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1a1a1a; background: #fafafa; }
h1 { font-size: 1.4rem; margin: 0 0 .5rem; } h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
table.run td, table.run th { text-align: left; padding: .1rem .8rem .1rem 0; vertical-align: top; }
table.run th { font-weight: 600; white-space: nowrap; }
.cards { display: grid; grid-template-columns: 1fr; gap: 1rem; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .75rem; }
.card img { max-width: 100%; height: auto; display: block; }
.card .source { font-family: ui-monospace, monospace; word-break: break-all; color: #555; }
.card .pred { font-size: 1.05rem; margin: .3rem 0; }
.card .links a { margin-right: .7rem; white-space: nowrap; }
.card dl { margin: .3rem 0 0; display: grid; grid-template-columns: max-content 1fr; gap: 0 .8rem; color: #555; }
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
    counts = f"{len(manifest.get('images', []))} image(s), {len(manifest.get('errors', []))} unreadable"
    return (f"<header><h1>{_title(manifest)}</h1><p>{counts}</p>"
            f"<table class=\"run\">{''.join(rows)}</table></header>")


def _card(entry: Mapping[str, Any]) -> str:
    files = entry["files"]
    links = [("original", files["original"]), *files.get("cams", {}).items(), *files.get("block_maps", {}).items()]
    link_html = " ".join(f"<a href=\"{_url(path)}\">{escape(name)}</a>" for name, path in links)
    extra = entry.get("extra") or {}
    extra_html = "".join(f"<dt>{escape(str(k))}</dt><dd>{_text(v)}</dd>" for k, v in extra.items())
    return (
        "<article class=\"card\">"
        f"<div class=\"source\">{escape(entry['source'])}</div>"
        f"<div class=\"pred\">pred: <b>{escape(entry['label'])}</b> ({_percent(entry['probability'])})</div>"
        f"<a href=\"{_url(files['grid'])}\"><img src=\"{_url(files['grid'])}\" loading=\"lazy\" decoding=\"async\" "
        f"alt=\"{escape(entry['source'], quote=True)}: original and overlays\"></a>"
        f"<div class=\"links\">{link_html}</div>"
        + (f"<dl>{extra_html}</dl>" if extra_html else "")
        + "</article>"
    )


def _errors(errors: list[Mapping[str, str]]) -> str:
    if not errors:
        return ""
    rows = "".join(f"<tr><td>{escape(e['source'])}</td><td>{escape(e['error'])}</td></tr>" for e in errors)
    return (f"<section id=\"errors\"><h2>Unreadable inputs ({len(errors)})</h2>"
            f"<table class=\"errors\"><tr><th>source</th><th>error</th></tr>{rows}</table></section>")


def render_index_html(manifest: Mapping[str, Any]) -> str:
    """The gallery page for a manifest as written by ``write_overlays``.

    Args:
        manifest: the ``manifest.json`` content: ``run``, ``created``, ``cmap``, ``alpha``, ``images`` (each with
            ``source``, ``label``, ``probability``, ``files`` paths relative to the page, optional ``extra``) and
            ``errors`` (each ``{"source", "error"}``).

    Returns:
        The complete HTML document.
    """
    images = manifest.get("images", [])
    cards = "".join(_card(entry) for entry in images) or "<p class=\"empty\">No images were exported.</p>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_title(manifest)}</title>"
        f"<style>{_CSS}</style></head><body>\n"
        f"{_header(manifest)}\n<h2>Images</h2><main class=\"cards\">{cards}</main>\n"
        f"{_errors(list(manifest.get('errors', [])))}\n</body></html>\n"
    )
