"""One process per run folder: an advisory lock that the kernel drops when its holder dies, even by ``kill -9``.

``run_dir/.lock`` is held with ``fcntl.flock`` for the life of a training run and holds the holder's PID, so a second
``visattn train --resume`` of a live run, or a second study process reaching the same run, is told who has it instead
of appending the same epochs twice. A stale file left by a killed process is no obstacle: the lock died with it.
Within one process the lock is re-entrant (a study holds a run's lock while ``train`` takes it again). Where ``fcntl``
does not exist (Windows) the lock is a no-op.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # Windows: no advisory locks of this kind
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunInUse", "RunLock"]

LOCK_NAME = ".lock"
_HELD: dict[Path, list[int]] = {}  # lock file -> [its descriptor, how many RunLock objects of this process hold it]


class RunInUse(OSError):
    """Another live process holds the run folder."""


class RunLock:
    """Hold ``folder/.lock`` (created with the folder if needed) until ``release()`` or the end of a ``with``.

    Example:
        >>> with RunLock("runs/cifar10"):
        ...     pass  # train; a second process now gets RunInUse naming this one's PID
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder).absolute() / LOCK_NAME
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock without waiting (at once, if this process holds it already).

        Raises:
            RunInUse: another process holds it; the message names its PID.
        """
        if self.held or fcntl is None:
            return self
        if self.path in _HELD:
            _HELD[self.path][1] += 1
            self.held = True
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunInUse(f"{self.path.parent} is in use by another process (PID {holder}); wait for it to finish "
                           f"or stop it first") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[self.path] = [fd, 1]
        self.held = True
        return self

    def release(self) -> None:
        """Drop this hold (idempotent); the last one in the process unlocks. The file stays: removing it would race
        with a process about to lock it."""
        if not self.held:
            return
        self.held = False
        entry = _HELD[self.path]
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[self.path]
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
