"""File and folder names made from user text (input stems, method and block-map names) that are safe everywhere.

Safe means: valid on Linux, macOS and Windows, no path separators, under the 255-byte name limit, and unique within a
folder even on case-insensitive file systems (``Cat.jpg`` and ``cat.jpg`` would share one folder on macOS).

Windows reserves device names (``CON``, ``NUL``, ``COM1``...) with any extension: ``nul.txt`` opens the null device, so
such names get a leading ``_``. See https://learn.microsoft.com/en-us/windows/win32/fileio/naming-a-file.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["safe_name", "UniqueNames"]

# Letters and digits of any script stay (names may be unicode); spaces too, the gallery URL-quotes them. Combining
# marks (categories Mn/Mc/Me: Devanagari vowel signs, decomposed accents) are not ``\w`` and are kept separately.
_UNSAFE = re.compile(r"[^\w.\-+=@,() ]+")
# Windows also reserves COM and LPT with the superscript digits 1, 2 and 3.
_PORT_DIGITS = "123456789\u00b9\u00b2\u00b3"
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{d}" for d in _PORT_DIGITS), *(f"lpt{d}" for d in _PORT_DIGITS)}
_MAX_BYTES = 120  # room for a "-12" suffix and ".png" under the 255-byte limit, with margin for tools that add more


def safe_name(text: str, default: str = "image") -> str:
    """``text`` reduced to a portable file-name stem (no extension added); ``default`` when nothing is left."""
    name = _UNSAFE.sub(_replace_unsafe, unicodedata.normalize("NFC", str(text)))
    name = name.strip(" .")  # Windows drops trailing dots/spaces; a leading dot would hide the file
    if len(name.encode("utf-8")) > _MAX_BYTES:
        name = name.encode("utf-8")[:_MAX_BYTES].decode("utf-8", "ignore").rstrip(" .")
    if not name:
        return default
    # "con.tar", "NUL.txt" and "com1 .png" are all the device: Windows ignores the extension and trailing spaces.
    if name.split(".")[0].rstrip(" ").lower() in _WINDOWS_RESERVED:
        name = f"_{name}"
    return name


def _replace_unsafe(match: re.Match[str]) -> str:
    """``_`` for each stretch of unsafe characters, keeping combining marks (dropping them garbles the word)."""
    return re.sub(r"_+", "_", "".join(ch if unicodedata.category(ch).startswith("M") else "_" for ch in match.group()))


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
