"""Export layer: image inputs, heatmap overlays, summary grids and an offline HTML gallery (no model code here).

Example:
    >>> from visattn.export import OverlayItem, write_overlays
    >>> item = OverlayItem("cat.jpg", image, {"gradcam": cam}, {}, label="cat", probability=0.91)  # doctest: +SKIP
    >>> write_overlays("out/overlays", [item], run_info={"model": "resnet18_cbam"})  # doctest: +SKIP
"""

from .gallery import render_index_html, render_pages
from .grid import make_grid
from .images import IMAGE_EXTENSIONS, expand_image_sources, load_image
from .render import blend, colorize
from .writer import IMAGE_FORMATS, OverlayItem, read_manifest, resumable_entries, write_overlays

__all__ = [
    "OverlayItem",
    "write_overlays",
    "expand_image_sources",
    "load_image",
    "IMAGE_EXTENSIONS",
    "colorize",
    "blend",
    "make_grid",
    "render_index_html",
    "render_pages",
    "read_manifest",
    "resumable_entries",
    "IMAGE_FORMATS",
]
