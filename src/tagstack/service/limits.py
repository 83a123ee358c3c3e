"""What one client may cost the service, and the ASGI middleware that holds every request to it.

A service that strangers upload files to must bound what each connection
holds: its bytes (``max_upload_mb``), its time on the wire (a client that
stops sending, or trickles, is cut off: ``upload_timeout``,
``min_upload_kbps``), how many uploads are held at once (``max_uploads``:
each is a temporary file and a descriptor) besides how many are analysed at
once (``concurrency``), and how long a shutdown waits for them
(``shutdown_timeout``). uvicorn bounds none of the first three by itself,
nor the time a client takes over its request line and headers
(``header_timeout``, held by :func:`header_deadline` in uvicorn's own
protocol, since no ASGI middleware sees a request before its headers end).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass

from ..checks import (
    CONCURRENCY,
    HEADER_TIMEOUT,
    MAX_SECONDS,
    MAX_UPLOAD_MB,
    MAX_UPLOADS,
    MIN_UPLOAD_RATE,
    SHUTDOWN_TIMEOUT,
    UPLOAD_TIMEOUT,
)
from ..runtime import usable_cpus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceLimits:
    """What one request may cost; validated when built (``tagstack serve`` options, :mod:`tagstack.checks`)."""

    max_upload_mb: float = 200.0
    max_seconds: float = 3 * 3600.0
    concurrency: int = 0  # analyses at once; 0: one per usable CPU
    max_uploads: int = 32  # requests holding an upload at once (being received, waiting for or in analysis)
    upload_timeout: float = 30.0  # seconds an upload may go without a byte
    min_upload_kbps: float = 16.0  # slower on average than this after the first upload_timeout seconds: cut off; 0: never
    header_timeout: float = 10.0  # seconds from a request's first byte (a new connection: from its opening) to its headers' end
    shutdown_timeout: float = 30.0  # on SIGTERM, seconds the requests under way get to finish

    def __post_init__(self) -> None:
        MAX_UPLOAD_MB.check(self.max_upload_mb)
        MAX_SECONDS.check(self.max_seconds)
        CONCURRENCY.check(self.concurrency)
        MAX_UPLOADS.check(self.max_uploads)
        UPLOAD_TIMEOUT.check(self.upload_timeout)
        MIN_UPLOAD_RATE.check(self.min_upload_kbps)
        HEADER_TIMEOUT.check(self.header_timeout)
        SHUTDOWN_TIMEOUT.check(self.shutdown_timeout)

    @property
    def max_bytes(self) -> int:
        """``max_upload_mb`` in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def workers(self) -> int:
        """Analyses at once: ``concurrency``, or one per usable CPU when it is 0."""
        return self.concurrency or usable_cpus()


class Problem(Exception):
    """A request the service refuses: an HTTP status and one line for the client."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.headers = headers or {}


async def send_problem(send, status: int, *, reason: str, headers: dict[str, str] | None = None) -> None:
    """A ``{"error": reason}`` response written straight to ASGI ``send`` (before the application has the request)."""
    body = json.dumps({"error": reason}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


#: A refusal in the middle of a body ends its connection: the rest of the body is never read.
CLOSE = {"Connection": "close"}

#: A refused body is still read for this long, or this many bytes, before the answer and the close ("lingering
#: close"): a client that writes its whole body before it reads gets the answer, not a connection reset.
DRAIN_SECONDS, DRAIN_BYTES = 2.0, 16 << 20


async def drain(receive) -> None:
    """Read and drop what the client is still sending, up to ``DRAIN_BYTES`` or ``DRAIN_SECONDS``."""
    import anyio

    got = 0
    with anyio.move_on_after(DRAIN_SECONDS):
        while got < DRAIN_BYTES:
            message = await receive()
            got += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                return


#: Methods whose requests carry an upload.
UPLOAD_METHODS = {"POST", "PUT", "PATCH"}


class RequestGuard:
    """ASGI middleware: every request body bounded in size, in stalls and in rate, and uploads bounded in number.

    A body over ``max_bytes`` (declared or streamed), a body that goes
    ``upload_timeout`` seconds without a byte, or one slower on average than
    ``min_upload_kbps`` once ``upload_timeout`` seconds have passed, ends in a
    :class:`Problem` (413, 408) raised where the application reads it, so the
    application's handler answers and removes its temporary file; the
    connection is then closed. A request with a body beyond ``max_uploads``
    held at once gets a 503 at once, before a byte of it is read.
    """

    def __init__(self, app, limits: ServiceLimits) -> None:
        self.app, self.limits = app, limits
        self.uploads = 0

    async def __call__(self, scope, receive, send):
        import anyio  # the web stack's (this module imports without it: the CLI reads ServiceLimits' defaults)

        if scope["type"] != "http" or scope.get("method") not in UPLOAD_METHODS:
            return await self.app(scope, receive, send)
        lim = self.limits
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > lim.max_bytes:
            await drain(receive)
            return await send_problem(send, 413, reason=self._too_large())
        if self.uploads >= lim.max_uploads:
            await drain(receive)
            return await send_problem(
                send,
                503,
                reason=f"this service holds {lim.max_uploads} uploads at once (--max-uploads); try again shortly",
                headers={"Retry-After": "5"},
            )
        seen, started, done = 0, time.monotonic(), False

        async def guarded_receive():
            nonlocal seen, done
            if done:  # the body is whole: what is left to hear is a disconnect, whenever it comes
                return await receive()
            with anyio.move_on_after(lim.upload_timeout) as scope_:
                message = await receive()
            if scope_.cancelled_caught:
                raise Problem(408, f"the upload stalled: no data for {lim.upload_timeout:g} s after {seen} bytes (--upload-timeout)", CLOSE)
            seen += len(message.get("body", b""))
            done = message["type"] != "http.request" or not message.get("more_body", False)
            if seen > lim.max_bytes:
                if not done:
                    await drain(receive)
                raise Problem(413, self._too_large(), CLOSE)
            elapsed = time.monotonic() - started
            if not done and lim.min_upload_kbps and elapsed > lim.upload_timeout and seen < lim.min_upload_kbps * 1000 * elapsed:
                raise Problem(
                    408,
                    f"the upload is too slow: {seen} bytes in {elapsed:.0f} s, under this service's minimum "
                    f"of {lim.min_upload_kbps:g} kB/s (--min-upload-kbps)",
                    CLOSE,
                )
            return message

        answered = False

        async def tracked_send(message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        self.uploads += 1
        try:
            return await self.app(scope, guarded_receive, tracked_send)
        except asyncio.CancelledError:  # uvicorn ends what is still under way at the shutdown deadline: one line, not a traceback
            log.warning("%s %s: still under way at the shutdown deadline (--shutdown-timeout), cancelled", scope["method"], scope["path"])
            if not answered:
                with contextlib.suppress(Exception):
                    await send_problem(send, 503, reason="the service is shutting down; try again shortly", headers={"Retry-After": "5"})
        finally:
            self.uploads -= 1

    def _too_large(self) -> str:
        return f"upload larger than this service's limit of {self.limits.max_upload_mb:g} MB (--max-upload-mb)"


#: Seconds a connection cut off by the header deadline is still read (and its bytes dropped) after its 408.
LINGER = 1.0


def header_deadline(base: type[asyncio.Protocol], limits: ServiceLimits) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class ``base`` with a deadline on every request's line and headers, and the upload
    limits on a body that arrives after its request was answered.

    uvicorn bounds nothing before a request's headers end: its keep-alive
    timer is reset by every byte, so a client that sends its headers a byte
    at a time (slowloris) holds a connection for ever, and a few hundred such
    clients every descriptor the server has. Here a new connection must
    complete its first request's headers within ``limits.header_timeout``
    seconds of opening, and on a kept-alive connection each later request
    within that long of its first byte (the idle time between requests stays
    uvicorn's ``timeout_keep_alive``). A client cut off mid-headers gets a 408
    and one JSON line; one that sent nothing is closed quietly. A request
    uvicorn cannot parse gets a 400 and one JSON line too, not uvicorn's text.

    A request answered before its body was read (bad parameters, a GET with a
    body) leaves the body arriving, which neither uvicorn nor
    :class:`RequestGuard` bounds: a client sending it a byte a second would
    hold the connection for ever. It is held to the upload limits instead
    (nothing for ``upload_timeout`` seconds, under ``min_upload_kbps`` after
    that long, or over ``max_upload_mb``: closed quietly, the client has its
    answer), so a large upload refused at once still finishes and reads its
    answer, and the connection then serves the next request. Reads uvicorn's protocol attributes ``loop``, ``transport``,
    ``cycle`` (the request under way: its ``response_complete`` and
    ``more_body``) and ``client``, common to its h11 and httptools protocols.
    """
    seconds = limits.header_timeout
    timed_out = _raw_answer(408, "Request Timeout", f"the request's headers did not arrive within {seconds:g} s (--header-timeout)")

    class HeaderDeadline(base):  # type: ignore[misc, valid-type]
        _deadline: asyncio.TimerHandle | None = None
        _partial = False  # bytes of the awaited request have arrived
        _lingering = False  # answered with a 408 or 400: what still arrives is read and dropped until the close
        _drain: tuple[float, int] | None = None  # an answered request's leftover body: when it began, bytes so far

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._deadline = self.loop.call_later(seconds, self._expired)

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                return
            if self._answered_body_arriving():
                if self._leftover_too_slow(len(data)):
                    return
                super().data_received(data)  # uvicorn drops an answered request's body, and reads the next request
                if not self._answered_body_arriving():  # after it
                    self._cancel()
                return
            waiting = self._awaiting_headers()
            if waiting:
                self._partial = True
                if self._deadline is None:  # the first byte of a request on a kept-alive connection
                    self._deadline = self.loop.call_later(seconds, self._expired)
            super().data_received(data)
            if waiting and not self._awaiting_headers():  # its headers are complete: uvicorn has begun the request
                self._cancel()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            super().connection_lost(exc)

        def _awaiting_headers(self) -> bool:
            """Between requests: none yet, or the last one answered and its body all read."""
            return self.cycle is None or (self.cycle.response_complete and not self.cycle.more_body)

        def _answered_body_arriving(self) -> bool:
            """The request under way was answered while its body still arrives."""
            return self.cycle is not None and self.cycle.response_complete and self.cycle.more_body

        def _leftover_too_slow(self, n: int) -> bool:
            """Count ``n`` more bytes of an answered request's body; close the connection when the upload limits are
            passed, else wait at most ``upload_timeout`` for the next byte. (uvicorn leaves the answered request's
            ``more_body`` set until the next request's headers are complete, so these count too.)"""
            now = self.loop.time()
            began, got = self._drain or (now, 0)
            self._drain, got, elapsed = (began, got + n), got + n, now - began
            slow = limits.min_upload_kbps and elapsed > limits.upload_timeout and got < limits.min_upload_kbps * 1000 * elapsed
            if slow or got > limits.max_bytes:
                log.info("%s: the body of an answered request arrived too slowly or was too large; closed", _peer(self.client))
                self._cancel()
                self.transport.close()
                return True
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(limits.upload_timeout, self._expired)  # (quiet: _partial is False)
            return False

        def _cancel(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline, self._partial, self._drain = None, False, None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if not self._partial:
                self.transport.close()
                return
            log.warning("%s: no complete request headers within %g s (--header-timeout); closed", _peer(self.client), seconds)
            self._answer_and_close(timed_out)

        def send_400_response(self, msg: str) -> None:
            """uvicorn's answer to a request it cannot parse (a bad request line, header or ``Content-Length``),
            which it writes as plain text: one JSON line instead, as every other error of this service."""
            self._cancel()
            log.info("%s: not a valid HTTP request (%s); answered 400 and closed", _peer(self.client), msg)
            self._answer_and_close(_raw_answer(400, "Bad Request", f"not a valid HTTP request ({msg.rstrip('.')})"))

        def _answer_and_close(self, raw: bytes) -> None:
            # Closing a socket with unread input makes the kernel answer with a reset, which can destroy the answer
            # before the client reads it (the client is still sending). So: the answer, then our side's end of
            # stream, then LINGER seconds of reading and dropping what the client still sends, then the close.
            self._lingering = True
            self.transport.write(raw)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER, self.transport.close)

    HeaderDeadline.__name__ = HeaderDeadline.__qualname__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadline


def _raw_answer(status: int, phrase: str, error: str) -> bytes:
    """A whole HTTP response carrying ``{"error": error}``, for the protocol level, where no ASGI response exists."""
    body = json.dumps({"error": error}).encode()
    head = f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


__all__ = ["Problem", "RequestGuard", "ServiceLimits", "header_deadline", "send_problem"]
