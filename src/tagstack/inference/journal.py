"""What a ``tag`` or ``embed`` job has done so far, kept beside its output, so that the same command resumes it.

The output file is written whole at the end (:func:`~tagstack.fileio.atomic_write`), so without this a job
killed after hours of a catalogue would leave nothing. Each file done is appended to ``OUTPUT.partial`` as one
JSON line: its path, its size and modification time (a file changed since is done again), and what the output
will hold for it (its formatted text, or its embedding). A line goes to the operating system as soon as the
file is done, so killing the process loses at most the line being written, which the next run recognises (no
newline, or not JSON) and cuts off. Files that could not be used are not recorded: a rerun tries them again,
and names them again if they still fail.

The first line holds the job's settings (the model's weights, the format, the selection ...). A run with other
settings is refused, naming what differs, rather than mixing two jobs' results in one output; a second job on
the same output at the same time is refused too (the file is locked). The journal is removed once the output
is written.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import OutputError, ParameterError
from ..fileio import destination, shown
from ..provenance import differences, plain

try:
    import fcntl
except ImportError:  # not on POSIX: two jobs on one output are not detected there
    fcntl = None

log = logging.getLogger(__name__)

SUFFIX = ".partial"
VERSION = 1
NAME_MAX = 255  #: the usual limit on a file name, in bytes


def journal_path(output: str | Path) -> Path:
    """Where the job writing ``output`` keeps its progress: beside the file it writes (a link's target)."""
    dest = destination(Path(output))
    name, suffix = dest.name, SUFFIX
    if len(os.fsencode(name + suffix)) > NAME_MAX:  # a long name is cut to leave room for the suffix, and told apart
        suffix = f"-{hashlib.sha1(os.fsencode(name)).hexdigest()[:8]}{SUFFIX}"  # from others cut the same by its digest
        while len(os.fsencode(name + suffix)) > NAME_MAX:
            name = name[:-1]
    return dest.with_name(name + suffix)


def encode_vector(x: np.ndarray) -> str:
    """A float32 vector as JSON can hold it exactly (base64 of its little-endian bytes)."""
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(text: str, size: int) -> np.ndarray | None:
    """The vector :func:`encode_vector` wrote, or None when the text is not one of ``size`` values."""
    try:
        x = np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4")
    except (ValueError, TypeError):
        return None
    return x.astype(np.float32) if x.size == size else None


class Journal:
    """The progress of one job on one output: :attr:`done` (path -> record) from earlier runs, :meth:`add` for each
    file done now (written, not kept: a catalogue's embeddings would take as much memory again), :meth:`finish` once
    the output is written. Use :meth:`open`."""

    def __init__(self, path: Path, fh: IO[bytes], done: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self.done = done
        self._fh = fh

    @classmethod
    def open(cls, output: str | Path, settings: dict[str, Any]) -> Journal:
        """The journal of the job writing ``output`` with ``settings`` (plain JSON data), created when absent.

        Raises ParameterError when an interrupted run with other settings left it, or another job holds it;
        OutputError when it cannot be created or read (a full disk: then nothing is left behind).
        """
        path = journal_path(output)
        key = plain({"journal": VERSION, "settings": settings})
        foreign = ParameterError(
            f"{shown(path)}: not a tagstack progress file, and the job keeps its progress under this name; "
            "move it, or choose another output"
        )
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        except OSError as e:
            raise OutputError(f"{shown(path)}: cannot keep the job's progress here ({e.strerror})") from None
        if mode is not None and not stat.S_ISREG(mode):  # a folder, a link, a pipe (which reading would wait on for ever) ...
            raise foreign
        created = mode is None
        try:  # unbuffered: a line is the operating system's once written
            fh = open(os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o666), "a+b", buffering=0)
        except OSError as e:
            raise OutputError(f"{shown(path)}: cannot keep the job's progress here ({e.strerror})") from None
        locked = False
        try:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise foreign
            _lock(fh, path, output)
            locked = True
            records, good, size = _read(fh)
            if size and not records:  # not ours: never cut a file tagstack did not write
                raise foreign
            if records and records[0] != key:
                old = records[0].get("settings")
                what = ", ".join(differences(old if isinstance(old, dict) else {}, key["settings"])) or "another version"
                raise ParameterError(
                    f"{shown(path)}: holds the work of an interrupted run with other settings ({what}); "
                    f"run that command again to resume it, or delete this file to start afresh"
                )
            if good < size:
                log.warning("%s: its last line was cut short when the run stopped; that file is done again", shown(path))
                fh.truncate(good)
            if not records:
                _write_all(fh, _line(key))
        except BaseException as e:
            if created and locked:  # (a job that found it locked did not create it, whatever it saw before: the other did)
                _unlink(path)
            fh.close()
            if isinstance(e, OSError):
                raise OutputError(f"{shown(path)}: cannot keep the job's progress here ({e.strerror})") from None
            raise
        done = {r["path"]: r for r in records[1:]}
        if done:
            log.info("resuming: %d files were done by an earlier run (%s)", len(done), shown(path))
        return cls(path, fh, done)

    def add(self, path: str, **record: Any) -> None:
        """Record ``path`` as done, with what the output holds for it (JSON data); written through at once."""
        entry = {"path": path, **record}
        try:
            _write_all(self._fh, _line(entry))
        except OSError as e:
            raise OutputError(
                f"{shown(self.path)}: cannot record the job's progress ({e.strerror}); the files done so far are kept "
                "there, and the same command resumes once this is fixed"
            ) from None

    def close(self) -> None:
        """Stop recording (the journal stays, for a rerun to resume)."""
        self._fh.close()

    def finish(self) -> None:
        """The output is written: remove the journal (still locked, so that no job starting now reads it)."""
        _unlink(self.path)
        self._fh.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._fh.closed:
            self.close()


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, allow_nan=False) + "\n").encode("ascii")  # non-UTF-8 names stay exact as \\udcNN escapes


def _lock(fh: IO[bytes], path: Path, output: str | Path) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ParameterError(
            f"{shown(output)}: another tagstack job is writing this output now ({shown(path)} is locked); "
            "wait for it to end, or choose another output"
        ) from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        # a filesystem without working locks (an NFS mount whose lock service is down): the job still runs and resumes
        log.warning("%s: this filesystem cannot lock files (%s); a second job on this output would not be noticed", shown(path), e.strerror)


def _read(fh: IO[bytes]) -> tuple[list[dict[str, Any]], int, int]:
    """The header and records of a journal (the file this job holds, not whatever has its name now), the length in
    bytes of its whole lines, and its size.

    Reading stops at the first line that is not a whole JSON object of the right kind: what a killed write left.
    """
    records: list[dict[str, Any]] = []
    good = 0
    fh.seek(0)
    with open(os.dup(fh.fileno()), "rb") as lines:  # buffered, for reading line by line
        for line in lines:
            try:
                obj = json.loads(line) if line.endswith(b"\n") else None
            except ValueError:
                obj = None
            if not isinstance(obj, dict) or not (isinstance(obj.get("path"), str) if records else "journal" in obj):
                break
            records.append(obj)
            good += len(line)
        size = lines.seek(0, os.SEEK_END)
    return records, good, size


def _write_all(fh: IO[bytes], data: bytes) -> None:
    view = memoryview(data)
    while view:  # an unbuffered write may take part of it
        view = view[fh.write(view) :]


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


__all__ = ["Journal", "decode_vector", "encode_vector", "journal_path"]
