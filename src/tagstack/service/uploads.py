"""The service's upload folder: one per server process, removed when it stops, and by the next server if it was killed.

Each upload is streamed to a file in this folder while it is received and
analysed, and removed when its request ends. A process killed with SIGKILL
(or by the kernel's OOM killer) cannot remove anything, so every folder holds
a lock file that its process keeps locked (``flock``) while it lives: the
kernel drops the lock when the process dies, however it dies. A starting
server removes every folder whose lock it can take, that is, every folder of
a server that is gone, and leaves those of servers still running.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ParameterError

log = logging.getLogger(__name__)

PREFIX = "tagstack-serve-"
LOCK = ".lock"


def remove_abandoned(parent: Path) -> int:
    """Remove the upload folders under ``parent`` whose server process is gone; returns how many uploads they held."""
    removed = 0
    for folder in sorted(Path(parent).glob(f"{PREFIX}*")):
        try:
            fd = os.open(folder / LOCK, os.O_RDWR)
        except OSError:  # no lock file: not a folder of this version, or one being created this instant
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its server is alive
            os.close(fd)
            continue
        try:
            removed += sum(1 for p in folder.iterdir() if p.name != LOCK)
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)
    return removed


class UploadFolder:
    """This process's upload folder under ``parent`` (default: the system's temporary folder), locked while it lives."""

    def __init__(self, parent: str | Path | None = None) -> None:
        self.parent = Path(parent) if parent else Path(tempfile.gettempdir())
        if not os.path.isdir(self.parent) or not os.access(self.parent, os.W_OK | os.X_OK):
            raise ParameterError(f"{self.parent}: the upload folder's place must be a writable folder (--upload-dir)")
        self.path: Path | None = None
        self._lock: int | None = None

    def open(self) -> Path:
        """Remove what killed servers left, then make and lock this process's folder."""
        gone = remove_abandoned(self.parent)
        if gone:
            log.info("removed %d uploads that a stopped server left in %s", gone, self.parent)
        # made under a name no sweep looks at, locked, then renamed: another server starting now never sees it unlocked
        hidden = Path(tempfile.mkdtemp(prefix=f".{PREFIX}new-", dir=self.parent))
        self._lock = os.open(hidden / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.path = hidden.with_name(f"{PREFIX}{os.getpid()}-{hidden.name.rsplit('-', 1)[1]}")
        os.rename(hidden, self.path)
        return self.path

    def close(self) -> None:
        """Remove the folder and everything in it."""
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
        self.path, self._lock = None, None


__all__ = ["UploadFolder", "remove_abandoned"]
