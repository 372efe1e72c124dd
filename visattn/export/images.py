"""Input side of the export: which image files a user meant, and decoding each to RGB uint8.

Decoding reuses ``visattn.data.folder.read_rgb`` so an exported image goes through exactly the conversion the training
data did (greyscale, RGBA, palette and 16-bit handled there). EXIF orientation is not applied, for the same reason.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.folder import DECODE_ERRORS, read_rgb
from ..data.folder import IMAGE_EXTENSIONS as _TRAINING_EXTENSIONS

__all__ = ["IMAGE_EXTENSIONS", "MAX_PIXELS", "expand_image_sources", "load_image"]

# The training scanner's list plus what else turns up in a folder of photos: GIFs, JPEG's other suffixes, netpbm, and
# AVIF where this Pillow reads it.
IMAGE_EXTENSIONS: tuple[str, ...] = (*_TRAINING_EXTENSIONS, ".gif", ".jpe", ".jfif", ".ppm", ".pgm", ".pbm", ".pnm",
                                     *((".avif",) if ".avif" in Image.registered_extensions() else ()))

# PIL refuses images above 2 x 89.5 M pixels as possible decompression bombs; a 200-megapixel phone photo is not one.
# Images the user names are read up to 2**30 pixels (3 GiB as RGB), larger ones are reported as unreadable.
MAX_PIXELS = 2**30


def _is_image_file(path: Path) -> bool:
    # Not is_file(): a broken link named like an image is an image the user cannot read, to report, not to skip.
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir()


def _expand_one(source: str | Path) -> list[Path]:
    path = Path(source)
    if path.is_file() or (path.is_symlink() and not path.exists()):
        # An explicitly named file is taken whatever its extension (the user asked for it); so is a broken link,
        # which load_image then reports as unreadable.
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if _is_image_file(p))
    if any(char in str(source) for char in "*?["):  # glob's own wildcard characters
        found: list[Path] = []
        for match in sorted(glob.glob(str(source), recursive=True)):
            p = Path(match)
            if p.is_dir():
                found += sorted(q for q in p.rglob("*") if _is_image_file(q))
            elif _is_image_file(p):
                found.append(p)
        return found
    return []


def expand_image_sources(sources: Sequence[str | Path]) -> list[Path]:
    """Turn files, folders and glob patterns into a list of image files.

    A file is kept as given. A folder is searched recursively for files whose extension (any case) is one of
    ``IMAGE_EXTENSIONS``, in sorted order. Anything else is treated as a ``glob.glob(recursive=True)`` pattern whose
    matches are filtered the same way (a matched folder is searched like a folder). Order follows ``sources``; a file
    reached twice is listed once, where first reached.

    Args:
        sources: file paths, folder paths or glob patterns such as ``"photos/**/*.jpg"``.

    Returns:
        The image paths, in order, without duplicates.

    Raises:
        TypeError: ``sources`` is a single string or path instead of a sequence of them.
        FileNotFoundError: one or more sources match no image file; the message names every such source.

    Example:
        >>> expand_image_sources(["cat.jpg", "more_images/", "shots/**/*.png"])  # doctest: +SKIP
    """
    if isinstance(sources, (str, os.PathLike)):
        raise TypeError(f"sources must be a sequence of paths or patterns, got the single value {str(sources)!r}; "
                        f"wrap it in a list")
    result: list[Path] = []
    seen: set[Path] = set()
    empty: list[str] = []
    for source in sources:
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"sources must hold str or Path values, got {type(source).__name__}: {source!r}")
        matches = _expand_one(source)
        if not matches:
            empty.append(str(source))
        for path in matches:
            key = path.resolve()  # "a/../a/x.png" and "a/x.png" are one file
            if key not in seen:
                seen.add(key)
                result.append(path)
    if empty:
        raise FileNotFoundError(f"no image file found for source(s) {empty}: each must be an existing file, a folder "
                                f"holding {'/'.join(IMAGE_EXTENSIONS)} files, or a glob pattern matching some")
    return result


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image file to ``(H, W, 3)`` uint8 RGB.

    Greyscale, RGBA (alpha dropped), palette and 16-bit images are converted by ``visattn.data.folder.read_rgb``;
    an animated image gives its first frame. Images of up to ``MAX_PIXELS`` pixels are read, above PIL's
    decompression-bomb limit.

    Args:
        path: the image file.

    Returns:
        The decoded image, ``(H, W, 3)`` uint8.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        OSError: the file cannot be decoded as an image (corrupt, truncated, not an image, over ``MAX_PIXELS``);
            the message names the file and PIL's reason.
    """
    path = Path(path)
    if not path.is_file():
        broken = " (a broken symbolic link)" if path.is_symlink() else ""
        raise FileNotFoundError(f"image file {str(path)!r} does not exist{broken}")
    try:
        with _pixel_limit(MAX_PIXELS):
            image = read_rgb(path)
    except DECODE_ERRORS as err:
        raise OSError(f"cannot read image {str(path)!r}: {type(err).__name__}: {err}") from err
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:  # a mode read_rgb did not anticipate
        raise OSError(f"cannot read image {str(path)!r}: decoded to {image.dtype} {image.shape}, not (H, W, 3) uint8")
    return image


@contextmanager
def _pixel_limit(pixels: int) -> Iterator[None]:
    """Let PIL open images of up to ``pixels`` pixels, without its DecompressionBombWarning, then restore its limit.

    PIL keeps the limit in a module global and raises above twice its value; the overlay reads files one at a time,
    so swapping it around one read is safe there.
    """
    previous = Image.MAX_IMAGE_PIXELS
    if previous is not None:  # None: the user switched PIL's guard off; leave it off
        Image.MAX_IMAGE_PIXELS = max(previous, pixels // 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous
