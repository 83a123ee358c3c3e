"""How uploads reach the disk: one folder per server process, removed when it stops, and by the next server if it was killed.

Each upload is streamed to a file in this folder while it is received and
analysed, and removed when its request ends; a multipart body too
(:class:`MultipartFile` writes its ``file`` part straight there, where a
form parser would first spool it to the system's temporary folder: twice the
disk, and not where ``--upload-dir`` says). A process killed with SIGKILL
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
import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote

from python_multipart.multipart import MultipartParser, parse_options_header
from python_multipart.exceptions import MultipartParseError

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


class MultipartFile:
    """The part named ``file`` of a ``multipart/form-data`` body, written to ``out`` as the body arrives.

    Feed it the body's chunks (:meth:`write`), then :meth:`close`. Other
    fields are read and dropped. A body that is not multipart as its header
    says, a second file, or too many parts, is a :class:`ValueError` whose
    message is meant for the client.
    """

    #: Parts a body may have (the file and a few form fields a browser adds), headers a part may have, and bytes a
    #: header's name or value may have: what a browser sends is far below, and nothing a client sends is held beyond.
    MAX_PARTS, MAX_HEADERS, MAX_HEADER_BYTES = 20, 16, 8192

    def __init__(self, content_type: str, out) -> None:
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise ValueError("a multipart upload needs a boundary in its Content-Type")
        self.out = out
        self.filename: str | None = None  # the client's name for the file, once its part has begun
        self.content_type: str | None = None
        self.found = False
        self._parts, self._in_file, self._field, self._value, self._headers = 0, False, b"", b"", {}
        self._ended = False
        callbacks = {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }
        self.parser = MultipartParser(boundary, callbacks)

    def write(self, chunk: bytes) -> None:
        """Parse the next ``chunk`` of the body (what follows its closing boundary is dropped unread)."""
        if self._ended:
            return
        try:
            self.parser.write(chunk)
        except MultipartParseError as e:
            raise ValueError(f"the multipart body is malformed ({e})") from None

    def close(self) -> None:
        """The body has ended: a :class:`ValueError` when it held no ``file`` field."""
        try:
            self.parser.finalize()
        except MultipartParseError as e:
            raise ValueError(f"the multipart body is malformed ({e})") from None
        if not self.found:
            raise ValueError("a multipart upload needs its audio in a field named 'file'")
        if not self._ended:  # (the parser's own finalize checks nothing)
            raise ValueError("the multipart body ends before its closing boundary: the upload is incomplete")

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > self.MAX_PARTS:
            raise ValueError(f"a multipart upload of more than {self.MAX_PARTS} parts")
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field = self._bounded(self._field + data[start:end])

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value = self._bounded(self._value + data[start:end])

    def _bounded(self, text: bytes) -> bytes:
        if len(text) > self.MAX_HEADER_BYTES:
            raise ValueError(f"a multipart part's header is longer than {self.MAX_HEADER_BYTES} bytes")
        return text

    def _header_end(self) -> None:
        if len(self._headers) >= self.MAX_HEADERS:
            raise ValueError(f"a multipart part has more than {self.MAX_HEADERS} headers")
        self._headers[self._field.decode("latin-1").lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        self._in_file = options.get(b"name") == b"file"
        if self._in_file:
            if self.found:
                raise ValueError("a multipart upload takes one file")
            self.found = True
            self.filename = _filename(options, self._headers.get("content-disposition", b""))
            self.content_type = self._headers.get("content-type", b"").decode("latin-1") or None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.out.write(data[start:end])

    def _part_end(self) -> None:
        self._in_file = False

    def _end(self) -> None:
        self._ended = True


def _filename(options: dict[bytes, bytes], disposition: bytes) -> str:
    """A part's file name: ``filename``, or RFC 5987's ``filename*=UTF-8''na%C3%AFve.mp3`` when only that is given
    (read from the raw header: the options parser leaves it out)."""
    if b"filename" in options:
        return options[b"filename"].decode("utf-8", "replace")
    star = re.search(rb";\s*filename\*\s*=\s*([^;]*)", disposition, re.IGNORECASE)
    charset, _, encoded = (star.group(1).strip().decode("latin-1") if star else "").partition("'")
    encoded = encoded.partition("'")[2]  # after the language tag, usually empty
    try:
        return unquote(encoded, encoding=charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return unquote(encoded, errors="replace")


__all__ = ["MultipartFile", "UploadFolder", "remove_abandoned"]
