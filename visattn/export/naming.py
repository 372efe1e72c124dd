"""File and folder names made from user text (input stems, method and block-map names) that are safe everywhere.

Safe means: valid on Linux, macOS and Windows, no path separators, under the 255-byte name limit, and unique within a
folder even on case-insensitive file systems (``Cat.jpg`` and ``cat.jpg`` would share one folder on macOS).
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["safe_name", "UniqueNames"]

# Letters and digits of any script stay (names may be unicode); spaces too, the gallery URL-quotes them.
_UNSAFE = re.compile(r"[^\w.\-+=@,() ]+")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
_MAX_BYTES = 120  # room for a "-12" suffix and ".png" under the 255-byte limit, with margin for tools that add more


def safe_name(text: str, default: str = "image") -> str:
    """``text`` reduced to a portable file-name stem (no extension added); ``default`` when nothing is left."""
    name = _UNSAFE.sub("_", unicodedata.normalize("NFC", str(text)))
    name = name.strip(" .")  # Windows drops trailing dots/spaces; a leading dot would hide the file
    if len(name.encode("utf-8")) > _MAX_BYTES:
        name = name.encode("utf-8")[:_MAX_BYTES].decode("utf-8", "ignore").rstrip(" .")
    if not name:
        return default
    if name.split(".")[0].lower() in _WINDOWS_RESERVED:
        name = f"{name}_"
    return name


class UniqueNames:
    """Hands out safe names that differ, ignoring case, from each other and from ``reserved``.

    A repeat gets ``-2``, ``-3``, ... in the order asked, so the same inputs always get the same names.
    """

    def __init__(self, reserved: tuple[str, ...] = ()) -> None:
        self._used = {name.casefold() for name in reserved}

    def take(self, text: str, default: str = "image") -> str:
        base = safe_name(text, default)
        name, counter = base, 1
        while name.casefold() in self._used:
            counter += 1
            name = f"{base}-{counter}"
        self._used.add(name.casefold())
        return name
