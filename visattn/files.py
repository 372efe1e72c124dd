"""Writing files so that a crash never leaves a torn one: temporary file, fsync, atomic rename."""

from __future__ import annotations

import glob
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json"]

_STALE_SECONDS = 3600.0


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync the result, atomically rename it to ``path``, and fsync the folder.

    A process killed mid-write (SIGKILL runs no cleanup) leaves its temporary file behind; a later successful write
    to the same ``path`` removes such leftovers once they are an hour old (a younger one may be a concurrent writer's).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the result the mode a plain open() would (or the file's current one).
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power loss only once the folder is on disk
    # Exactly mkstemp's names for this path (".a.XXXXXXXX.tmp"), not those of "a.b", whose prefix starts alike.
    pattern = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}\.tmp")
    for stale in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        try:
            if pattern.fullmatch(stale.name) and time.time() - stale.stat().st_mtime > _STALE_SECONDS:
                stale.unlink()
        except OSError:
            pass  # gone already, or not ours to remove


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its rename is durable enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def atomic_write_json(path: str | Path, value: Any, indent: int = 1) -> None:
    """Write ``value`` as strict JSON to ``path`` atomically: NaN and infinite floats (a one-run std, an interval
    over one pair) become null, which every JSON reader accepts."""
    atomic_write_text(path, json.dumps(_finite(value), indent=indent, allow_nan=False) + "\n")
