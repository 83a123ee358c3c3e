"""Atomic file writes: nothing tagstack writes is ever seen half-written.

Everything goes to a temporary file in the destination's folder first and is
then renamed over the destination, which POSIX makes atomic.

Under ``torchrun`` every process runs the same experiment, and only the
first (``RANK`` 0) writes: in the others these functions do nothing, so the
run directory has exactly one writer and every process reads the same
checkpoints (the trainer waits for all processes after each epoch's writes).
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import stat
import tempfile
from glob import escape as glob_escape
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np

from .errors import OutputError


#: Name prefix of the temporary files of :func:`atomic_write`; what a killed process leaves is found by it.
TEMP_PREFIX = ".tagstack-tmp-"


def writes_here() -> bool:
    """Whether this process writes files: always, except the processes of a ``torchrun`` job other than rank 0."""
    return os.environ.get("RANK", "0") == "0"


def remove_leftovers(folder: Path) -> int:
    """Delete the temporary files that killed atomic writes left anywhere under ``folder``; returns how many."""
    return _unlink_all(Path(folder).rglob(f"{TEMP_PREFIX}*"))


def remove_leftovers_of(path: Path, *, pattern: bool = False) -> int:
    """Delete the temporary files that killed atomic writes of ``path`` (a glob pattern of names in its folder, with
    ``pattern``) left beside it (beside the file a link names, where :func:`atomic_write` writes); returns how many."""
    path = Path(path) if pattern else destination(Path(path))
    name = path.name if pattern else glob_escape(path.name[:100])
    return _unlink_all(path.parent.glob(f"{TEMP_PREFIX}{name}.*"))


def _unlink_all(paths) -> int:
    if not writes_here():
        return 0
    n = 0
    for p in paths:
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n


def atomic_write(path: Path, writer: Callable[[str], None], *, suffix: str = "") -> None:
    """Call ``writer(tmp_path)`` and rename the result to ``path`` (nothing in a torchrun process other than rank 0).

    This is the one place where an output write meets the operating system:
    any :class:`OSError` on the way (a full disk, a quota, a read-only or
    vanished folder, a name the filesystem refuses) becomes one
    :class:`~tagstack.errors.OutputError` naming the file and the reason, the
    temporary file is removed, and what ``path`` held before is untouched.
    """
    if not writes_here():
        return
    path = destination(Path(path))
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the name is cut so that a long destination name (up to the usual 255 bytes) still leaves room for the temporary's
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name[:100]}.", suffix=suffix or ".tmp", dir=path.parent)
        os.close(fd)
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            reason = e.strerror or _first_line(e)  # pyarrow's own OSErrors have no strerror, only a message
            if e.errno is None and _free(path.parent) == 0:  # numpy's short write says only "N requested and M written"
                reason += ": no space left on device"
            raise OutputError(f"{shown(path)}: cannot write this file ({reason}); what it held before is unchanged") from None
        raise


def reserve(path: Path, size: int) -> None:
    """Have the filesystem allocate the blocks of ``path``, a file of ``size`` bytes written through a memory map.

    A write through a memory map that finds the disk full is not an error Python can catch: the kernel kills the
    process with SIGBUS ("Bus error"), with no message and nothing saved. Asking for the blocks before the work
    turns that into one :class:`~tagstack.errors.OutputError` naming the file, what it needs and what is free.
    Blocks already there (a resumed file) are kept; a filesystem that cannot allocate ahead is left as it is.
    """
    if not writes_here() or not hasattr(os, "posix_fallocate"):  # (macOS and Windows have no posix_fallocate)
        return
    free = _free(path.parent)  # before: a failed allocation may keep some blocks
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return
        room = "" if free is None else f"; {_amount(free)} free there"
        raise OutputError(
            f"{shown(path)}: cannot reserve the {_amount(size)} it needs ({e.strerror}{room}); make room, or put it on another disk"
        ) from None


def _amount(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _free(folder: Path) -> int | None:
    """Bytes free in ``folder``'s filesystem, or None where the system will not say (the folder is gone ...)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def destination(path: Path) -> Path:
    """The file a write of ``path`` replaces: ``path``, or the target of the symbolic link ``path`` (the link stays a
    link, as with ``cp``), or an :class:`~tagstack.errors.OutputError` when that is a device, pipe or socket.

    Replacing those by renaming a file over them (as :func:`atomic_write` does) would put a regular file where
    ``/dev/null`` or a named pipe was, and a write into them cannot be whole or nothing: they are refused.
    """
    path = Path(path)
    real = path
    if os.path.islink(path):
        _check_link_owner(path)
        real = Path(os.path.realpath(path))
    try:
        mode = os.stat(real).st_mode
    except OSError:  # not there yet (or not reachable: the write says why)
        return real
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise OutputError(
            f"{shown(path)}: is a device, pipe or socket, not a file; tagstack writes its outputs whole, as files (choose a file name)"
        )
    return real


def _check_link_owner(link: Path) -> None:
    """Refuse a link another user planted in a shared folder (sticky and writable by all, as ``/tmp``): writing
    through it would overwrite whatever file of ours it names. The kernel's ``protected_symlinks`` rule, which a
    path resolved here, not by the kernel, would escape."""
    try:
        folder, owner = os.stat(link.parent), os.lstat(link).st_uid
    except OSError:
        return  # the write itself says why
    shared = folder.st_mode & stat.S_ISVTX and folder.st_mode & stat.S_IWOTH
    if shared and owner not in (os.geteuid(), folder.st_uid):
        raise OutputError(
            f"{shown(link)}: a symbolic link of another user in a folder all users write to; tagstack will not "
            "write through it (choose another name)"
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def shown(path: str | Path | bytes) -> str:
    """A file name as text that every output format can hold: the name itself, or, where it is not valid Unicode (a
    latin-1 name on a UTF-8 system, kept by Python as surrogates), its undecodable bytes written as ``\\xNN``."""
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return os.fsencode(text).decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # surrogates that did not come from the filesystem
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8, atomically (:func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None, so strict JSON parsers read it (as ``null``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.floating, np.integer)):
        return finite_json(obj.item())
    if isinstance(obj, np.ndarray):
        return finite_json(obj.tolist())
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (NaN and infinity as ``null``), atomically."""
    atomic_write_text(path, json.dumps(finite_json(obj), indent=2, allow_nan=False) + "\n")


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` at ``path``, atomically (:func:`atomic_write`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write, suffix=".npy")
