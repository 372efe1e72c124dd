"""One summary picture per image: the original and every overlay side by side, labelled, under a title line.

Drawn with PIL rather than matplotlib: a grid is a few pastes and text lines, and PIL does that in about a millisecond
where a matplotlib figure costs tens (the overlay command writes one grid per input image).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .render import check_image

__all__ = ["make_grid"]

_LABEL_SIZE, _TITLE_SIZE = 14, 18
_GAP = 8  # pixels between panels and around the edge
_BACKGROUND, _INK = (255, 255, 255), (20, 20, 20)

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@functools.lru_cache(maxsize=4)
def _font(size: int) -> _Font:
    # matplotlib's bundled DejaVu Sans covers Latin, Greek and Cyrillic class names; PIL's own default font draws
    # boxes for anything past ASCII. Without FreeType, load_default gives PIL's small bitmap font.
    try:
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except OSError:
        return ImageFont.load_default(size=size)


def _drawable(text: str, font: _Font) -> str:
    # PIL's bitmap fallback font encodes text as Latin-1 and raises on anything else (a class name in Cyrillic, say).
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


def _fit_text(text: str, font: _Font, width: int) -> str:
    """``text`` shortened with an ellipsis in the middle until it fits ``width`` pixels (both ends stay readable)."""
    text = _drawable(text, font)
    if font.getlength(text) <= width:
        return text
    ellipsis = "..." if not isinstance(font, ImageFont.FreeTypeFont) else "\u2026"
    keep = len(text)
    while keep > 1:
        keep -= 1
        short = text[:(keep + 1) // 2] + ellipsis + text[len(text) - keep // 2:]
        if font.getlength(short) <= width:
            return short
    return ellipsis


def _fit_panel(image: np.ndarray, size: int) -> Image.Image:
    """Scale ``image`` to fit a ``size`` square, keeping its aspect ratio."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Nearest when enlarging keeps a 32 x 32 input's pixels crisp (they are what the model saw); box when shrinking
    # averages instead of aliasing.
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX
    return Image.fromarray(image).resize(new_size, resample)


def make_grid(image: np.ndarray, panels: Sequence[tuple[str, np.ndarray]], *, title: str, panel_size: int = 192,
              max_columns: int = 6, original_label: str = "original") -> np.ndarray:
    """Lay out the original image and labelled panels in rows under a title.

    Every picture is scaled (nearest when enlarging, so small inputs stay crisp) to fit a ``panel_size`` square and
    labelled underneath; rows wrap after ``max_columns`` pictures.

    Args:
        image: the original, ``(H, W, 3)`` uint8 RGB; shown first.
        panels: ``(label, picture)`` pairs, each picture ``(h, w, 3)`` uint8 RGB (any size), e.g. overlays.
        title: the line drawn above the grid, e.g. ``"pred: circle (97.3 %)"``.
        panel_size: side of the square each picture is fitted into, in pixels (at least 16).
        max_columns: pictures per row before wrapping (at least 1).
        original_label: the label under the original image.

    Returns:
        The grid, ``(H, W, 3)`` uint8 RGB.

    Raises:
        TypeError: a picture is not a uint8 numpy array, a label not a string, or a size not an int.
        ValueError: a picture is not ``(h, w, 3)``, or ``panel_size`` / ``max_columns`` is too small.

    Example:
        >>> grid = make_grid(image, [("gradcam", blend(image, cam))], title="pred: cat (91.0 %)")  # doctest: +SKIP
    """
    for name, value, minimum in (("panel_size", panel_size, 16), ("max_columns", max_columns, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if not isinstance(title, str):
        raise TypeError(f"title must be a str, got {type(title).__name__}")
    cells = [(original_label, check_image(image))]
    for i, panel in enumerate(panels):
        if not isinstance(panel, tuple) or len(panel) != 2 or not isinstance(panel[0], str):
            raise TypeError(f"panels[{i}] must be a (label: str, image: ndarray) pair, got {type(panel).__name__}")
        cells.append((panel[0], check_image(panel[1], f"panels[{i}] ({panel[0]!r}) image")))

    label_font, title_font = _font(_LABEL_SIZE), _font(_TITLE_SIZE)
    label_height, title_height = _LABEL_SIZE + 8, _TITLE_SIZE + 12
    columns = min(max_columns, len(cells))
    rows = -(-len(cells) // columns)
    cell_w, cell_h = panel_size + _GAP, panel_size + label_height
    title_text = _drawable(title, title_font)
    width = max(_GAP + columns * cell_w, 2 * _GAP + int(title_font.getlength(title_text)) + 1)
    height = _GAP + title_height + rows * cell_h + _GAP
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((_GAP, _GAP), title_text, fill=_INK, font=title_font)
    for index, (label, picture) in enumerate(cells):
        row, column = divmod(index, columns)
        x, y = _GAP + column * cell_w, _GAP + title_height + row * cell_h
        fitted = _fit_panel(picture, panel_size)
        canvas.paste(fitted, (x + (panel_size - fitted.width) // 2, y + (panel_size - fitted.height) // 2))
        text = _fit_text(label, label_font, panel_size)
        text_x = x + (panel_size - int(label_font.getlength(text))) // 2
        draw.text((text_x, y + panel_size + 3), text, fill=_INK, font=label_font)
    return np.asarray(canvas)
