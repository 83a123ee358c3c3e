"""The HTTP service: tags, embeddings and taggrams of uploaded audio (FastAPI on uvicorn).

It is a thin layer over :class:`~tagstack.inference.tagger.Tagger`, so an
upload is decoded, windowed and tagged exactly as ``tagstack tag`` and the
Python API do it. What the service adds is what a shared server needs:

- the model is loaded once; analyses run in worker threads (at most
  ``concurrency`` at a time, parallel across requests rather than inside small
  ops), so the event loop keeps answering while files are tagged;
- an upload is streamed to a temporary file (never held in memory) and
  decoded in blocks, so a long file costs bounded memory; the temporary file
  is removed when its request ends, and the folder of a killed server by the
  next one (:mod:`.uploads`);
- every connection is bounded in bytes, stalls, rate and number
  (:mod:`.limits`), and SIGTERM gives the requests under way
  ``shutdown_timeout`` seconds before they are cancelled;
- every bad request gets a 4xx and one line, ``{"error": "..."}``: bad
  parameters 400, a stalled or too slow upload 408, not audio or
  undecodable 422, too large or too long 413, an unsupported file type 415;
  too many uploads at once 503; no room on the disk for an upload 507.
  Nothing a client sends gives a 500, and a
  client that goes away mid-upload is one log line.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import threading
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import anyio
import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..audio.io import AUDIO_EXTENSIONS, duration_seconds
from ..errors import AudioTooLongError, ParameterError, TagstackError
from ..checks import DEFAULT_TOP_K, HOP, check_selection
from ..inference.result import Result
from ..inference.tagger import Tagger
from ..models.file import read_metadata
from ..models.tagging_model import require_tagger
from ..runtime import usable_cpus
from .limits import Problem, RequestGuard, ServiceLimits, header_deadline
from .uploads import MultipartFile, UploadFolder

log = logging.getLogger(__name__)

#: Raw-body uploads: the file type a Content-Type names (anything else is sniffed from the bytes).
CONTENT_TYPES = {
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "audio/ogg": ".ogg",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/mp4": ".m4a",
    "audio/x-m4a": ".m4a",
    "audio/aac": ".aac",
    "audio/opus": ".opus",
    "audio/aiff": ".aiff",
    "audio/x-aiff": ".aiff",
}

#: A taggram asked for with ``hop=auto`` has at most this many windows.
AUTO_WINDOWS = 64
#: No taggram has more windows than this (each is one pass of the networks): a small ``hop`` on a long file is refused.
MAX_WINDOWS = 2000


def _problem_response(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def _names(text: str | None) -> list[str] | None:
    return None if text in (None, "") else [x.strip() for x in text.split(",")]


def _ints(text: str | None, name: str) -> list[int] | None:
    if text in (None, ""):
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise Problem(400, f"{name} must be comma-separated integers, e.g. 27,54; got {text!r}") from None


def _suffix(filename: str | None, content_type: str | None) -> str:
    """The file type of an upload: its name's extension, else its Content-Type's, else none (sniffed by the decoder)."""
    ext = Path(filename or "").suffix.lower()
    if ext:
        if ext not in AUDIO_EXTENSIONS:
            raise Problem(415, f"unsupported file type {ext!r}; this service reads {', '.join(AUDIO_EXTENSIONS)}")
        return ext
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in CONTENT_TYPES:
        return CONTENT_TYPES[ctype]
    raw = ("application/octet-stream", "video/mp4", "application/x-www-form-urlencoded")  # the last is curl --data-binary's default
    if ctype and not (ctype.startswith("audio/") or ctype in raw):
        raise Problem(415, f"unsupported Content-Type {ctype!r}; send audio (audio/*, application/octet-stream) or a multipart form")
    return ""


class Service:
    """The loaded model, the limits and the upload folder shared by every request."""

    def __init__(self, tagger: Tagger, model_path: Path | None, limits: ServiceLimits, upload_parent: str | Path | None = None) -> None:
        self.tagger, self.limits = tagger, limits
        self.meta = read_metadata(model_path) if model_path is not None else None
        card = model_path.with_suffix(".md") if model_path is not None else None
        self.card = card.read_text(encoding="utf-8") if card is not None and card.is_file() else ""
        self.name = model_path.stem if model_path is not None else "model"
        self.limiter = anyio.CapacityLimiter(limits.workers)
        self.uploads = UploadFolder(upload_parent)
        self.upload_dir: Path | None = None

    def model_info(self) -> dict:
        """What ``GET /api/model`` answers: the loaded model's tags, scales, layers, data, scores, card and limits."""
        m = self.tagger.model
        info = (self.meta or {}).get("info", {})
        return {
            "name": self.name,
            "tags": m.tags,
            "task": m.task,
            "scales": list(m.local_scales),
            "layers": {s: sorted(b.layer for b in m.layout if b.scale == s) for s in m.local_scales},
            "classifier_reads": {"scales": list(m.scales), "layers": list(m.layers) if m.layers else "all"},
            "n_features": m.n_features,
            "clip_seconds": self.tagger.cfg.clip_seconds,
            "sample_rate": self.tagger.cfg.sample_rate,
            "dataset": info.get("dataset"),
            "data": info.get("data"),
            "test": info.get("test"),
            "card": self.card,
            "version": __version__,
            "tag_groups": m.groups,
            "limits": {
                "max_upload_mb": self.limits.max_upload_mb,
                "max_seconds": self.limits.max_seconds,
                "upload_timeout": self.limits.upload_timeout,
                "min_upload_kbps": self.limits.min_upload_kbps,
                "header_timeout": self.limits.header_timeout,
            },
        }

    async def save_upload(self, request: Request) -> tuple[Path, str]:
        """The request's audio in a new temporary file, and the name the client gave it.

        A failure to store it (a full disk, a quota) is a 507 and one line, never a 500; an upload folder that
        something else removed (a clean-up of ``/tmp``) is made again.
        """
        ctype = request.headers.get("content-type", "")
        fd, tmp = self._new_upload_file()
        path = Path(tmp)
        name = "upload"
        try:
            with os.fdopen(fd, "wb") as out:
                if ctype.lower().startswith("multipart/form-data"):  # (media types ignore case)
                    try:
                        form = MultipartFile(ctype, out)
                        async for chunk in request.stream():
                            form.write(chunk)
                        form.close()
                    except ValueError as e:
                        raise Problem(400, str(e)) from None
                    name = form.filename or "upload"
                    suffix = _suffix(name, form.content_type)
                else:
                    name = request.query_params.get("filename") or "upload"
                    suffix = _suffix(request.query_params.get("filename"), ctype)
                    async for chunk in request.stream():
                        out.write(chunk)
            if path.stat().st_size == 0:
                raise Problem(400, f"{name}: the upload is empty")
            if suffix:  # the decoders sniff content, but FFmpeg is surer of some containers with their extension
                path = path.rename(path.with_name(path.name + suffix))
            return path, name
        except OSError as e:
            path.unlink(missing_ok=True)
            raise self._cannot_store(e) from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def _new_upload_file(self) -> tuple[int, str]:
        try:
            try:
                return tempfile.mkstemp(dir=self.upload_dir, prefix="upload-")
            except FileNotFoundError:  # the folder was removed under this server: make a new one
                log.warning("%s: the upload folder was removed by something else; making a new one", self.upload_dir)
                self.uploads.close()
                self.upload_dir = self.uploads.open()
                return tempfile.mkstemp(dir=self.upload_dir, prefix="upload-")
        except OSError as e:
            raise self._cannot_store(e) from None

    def _cannot_store(self, e: OSError) -> Problem:
        log.warning("cannot store an upload in %s: %s", self.upload_dir, e.strerror or e)
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return Problem(507, f"this service has no room to store the upload now ({e.strerror}); try again later")
        return Problem(503, f"this service cannot store uploads now ({e.strerror or type(e).__name__}); try again later")

    def analyse(
        self,
        path: Path,
        name: str,
        *,
        top_k: int | None,
        threshold: float | None,
        embed: bool,
        scales: list[str] | None,
        layers: list[int] | None,
        taggram: bool,
        hop: str | None,
        per_group: bool = False,
        stop: threading.Event | None = None,
    ) -> dict:
        """Everything asked about one uploaded file (runs in a worker thread; ``stop`` ends it early)."""
        model = self.tagger.model
        try:
            if not embed:
                require_tagger(model)
            check_selection(top_k, threshold)
            cols = model.columns_of(scales=scales, layers=layers) if embed else None
            seconds = duration_seconds(path)
            if seconds > self.limits.max_seconds:
                raise Problem(
                    413, f"{name}: {seconds:.0f} s of audio; this service takes at most {self.limits.max_seconds:g} s (--max-seconds)"
                )
            hop_s = self._hop(hop, seconds) if taggram else None
            if hop_s is not None and seconds / hop_s > MAX_WINDOWS:
                raise Problem(
                    400,
                    f"hop={hop_s:g} s gives {seconds / hop_s:.3g} taggram windows over {seconds:.0f} s; this "
                    f"service makes at most {MAX_WINDOWS}: use a larger hop, or 'auto'",
                )
            # the header's length may lie: decoding stops at the limit, or where the hop would pass MAX_WINDOWS windows
            limit = self.limits.max_seconds if hop_s is None else min(self.limits.max_seconds, hop_s * MAX_WINDOWS)
            try:
                result: Result = self.tagger.predict(path, taggram=taggram, hop=hop_s, max_seconds=limit, stop=stop)
            except AudioTooLongError:
                raise Problem(
                    413,
                    f"{name}: longer than its header says, and than "
                    + (
                        f"this service takes ({self.limits.max_seconds:g} s, --max-seconds)"
                        if limit == self.limits.max_seconds
                        else f"{MAX_WINDOWS} taggram windows at hop={hop_s:g} s cover; use a larger hop, or 'auto'"
                    ),
                ) from None
        except TagstackError as e:  # AudioError, ParameterError: the client's file or parameters
            reason = str(e).replace(str(path), name)
            status = 400 if isinstance(e, ParameterError) else 413 if isinstance(e, AudioTooLongError) else 422
            raise Problem(status, reason) from None
        out: dict = {"file": name, "seconds": round(result.seconds, 3), "model": self.name}
        if model.can_tag:
            out["tags"] = [
                {"tag": t, "probability": float(p)} | ({"group": result.group_of(t)} if model.groups else {})
                for t, p in result.top(top_k, threshold, per_group=per_group)
            ]
        if embed:
            s, l_ = model.selection(scales=scales, layers=layers)
            out["embedding"] = {"scales": s, "layers": l_, "values": result.embedding[cols].astype(float).tolist()}
        if taggram and result.taggram is not None:
            out["taggram"] = {
                "tags": result.tags,
                "window_seconds": self.tagger.cfg.clip_seconds,
                "hop_seconds": hop_s,
                "starts": [round(float(t), 3) for t in result.window_starts],
                "probabilities": np.round(result.taggram, 5).astype(float).tolist(),
            }
        return out

    def _hop(self, hop: str | None, seconds: float) -> float | None:
        """Seconds between taggram windows: a number, or ``auto`` (about 64 windows over the file, at most 4 per clip)."""
        if hop in (None, "", "clip"):
            return None
        if hop == "auto":
            clip = self.tagger.cfg.clip_seconds
            return max(clip / 4, (seconds - clip) / (AUTO_WINDOWS - 1)) if seconds > clip else None
        try:
            return HOP.parse(hop)
        except ParameterError as e:
            raise Problem(400, f"{e}; or 'clip' or 'auto'") from None


def create_app(
    model: str | Path | None = None, *, device: str = "auto", limits: ServiceLimits | None = None, upload_dir: str | Path | None = None
) -> FastAPI:
    """The service's ASGI application, with ``model`` (a file or a shipped name) loaded once; uploads go to a folder
    of this process's under ``upload_dir`` (default: the system's temporary folder)."""
    from ..models.zoo import resolve_model

    limits = limits or ServiceLimits()
    path = resolve_model(model)
    service = Service(Tagger(path, device=device), path, limits, upload_dir)
    if service.tagger.device.type == "cpu":  # parallel across requests, one thread each (see ServiceLimits.concurrency)
        torch.set_num_threads(max(1, usable_cpus() // limits.workers))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.upload_dir = service.uploads.open()
        log.info(
            "serving %s (%d tags) on %s, %d analyses and %d uploads at once",
            service.name,
            len(service.tagger.tags),
            service.tagger.device,
            limits.workers,
            limits.max_uploads,
        )
        try:
            yield
        finally:
            service.uploads.close()

    assets = {p.name for p in resources.files(__package__).joinpath("page").iterdir()}
    app = FastAPI(
        title="tagstack",
        version=__version__,
        lifespan=lifespan,
        description="Music auto-tagging with multi-level, multi-scale CNN features (Lee & Nam, 2017).",
    )
    app.add_middleware(RequestGuard, limits=limits)
    app.state.service = service

    @app.exception_handler(Problem)
    async def problem(request: Request, exc: Problem) -> JSONResponse:
        return _problem_response(exc.status, str(exc), exc.headers)

    @app.exception_handler(ClientDisconnect)  # the client went away mid-upload: nobody to answer, one line in the log
    async def gone(request: Request, exc: ClientDisconnect) -> Response:
        where = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        log.info("%s disconnected during its upload to %s; the partial upload was removed", where, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(HTTPException)  # what FastAPI and Starlette raise themselves: unknown path, method, bad multipart
    async def http_problem(request: Request, exc: HTTPException) -> JSONResponse:
        response = _problem_response(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})  # a 405 keeps its Allow header
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or "request"
        return _problem_response(400, f"parameter {where}: {first.get('msg', 'invalid')}")

    @app.get("/api/health", summary="Liveness and the loaded model")
    async def health() -> dict:
        return {"status": "ok", "model": service.name, "device": str(service.tagger.device)}

    @app.get("/api/model", summary="The loaded model: tags, scales, layers, training data, scores and model card")
    async def model_info() -> dict:
        return service.model_info()

    @app.post("/api/tag", summary="Tag an audio file (multipart field 'file', or the raw body)")
    async def tag(
        request: Request,
        top_k: int | None = Query(DEFAULT_TOP_K, description="best tags to return (0: all)"),
        threshold: float | None = Query(None, description="return every tag at or above this instead of the top k"),
        per_group: bool = Query(False, description="apply top_k / threshold within each tag group of the model"),
        embed: bool = Query(False, description="also return the multi-level, multi-scale embedding"),
        scales: str | None = Query(None, description="embedding scales (branches), e.g. 27,54 or musicnn-msd/187 (default: all)"),
        layers: str | None = Query(None, description="embedding layers, 1-based, e.g. 1,2 (default: all)"),
        taggram: bool = Query(False, description="also return tag probabilities per window over time"),
        hop: str | None = Query(None, description="seconds between taggram windows, 'clip' (back to back) or 'auto'"),
        filename: str | None = Query(None, description="the file's name, for a raw-body upload (its extension names the format)"),
    ) -> JSONResponse:
        try:
            check_selection(top_k, threshold)  # before the upload is read: a bad request costs no transfer
        except ParameterError as e:
            raise Problem(400, str(e)) from None
        given = {"hop": (hop, taggram, "taggram"), "scales": (scales, embed, "embed"), "layers": (layers, embed, "embed")}
        unused = [f"{k} needs {flag}=true" for k, (value, on, flag) in given.items() if value and not on]
        if unused:  # as the CLI does: an option that would be ignored is a mistake worth hearing about
            raise Problem(400, "; ".join(unused))
        s, l_ = _names(scales), _ints(layers, "layers")
        path, name = await service.save_upload(request)
        stop = threading.Event()  # set when the client goes away: its analysis ends at the next window
        refused: Problem | None = None  # (raised out of the task group only as an ExceptionGroup)
        try:
            async with anyio.create_task_group() as watching:
                watching.start_soon(_set_when_gone, request, stop)
                try:
                    out = await anyio.to_thread.run_sync(
                        lambda: service.analyse(
                            path,
                            name,
                            top_k=top_k,
                            threshold=threshold,
                            embed=embed,
                            scales=s,
                            layers=l_,
                            taggram=taggram,
                            hop=hop,
                            per_group=per_group,
                            stop=stop,
                        ),
                        limiter=service.limiter,
                        abandon_on_cancel=True,
                    )  # a shutdown past its deadline does not wait for it
                except Problem as e:
                    refused = e
                finally:
                    watching.cancel_scope.cancel()
        finally:
            path.unlink(missing_ok=True)
        if refused is not None and stop.is_set():  # nobody to answer
            log.info("%s: its client went away; its analysis was stopped", name)
            return Response(status_code=400)
        if refused is not None:
            raise refused
        return JSONResponse(out)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_asset("index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
        if Path(name).suffix not in types or name not in assets:  # (a client's name never reaches the filesystem)
            return _problem_response(404, f"no such file: {name[:100]}")
        return Response(_asset(name), media_type=types[Path(name).suffix])

    return app


async def _set_when_gone(request: Request, stop: threading.Event) -> None:
    """Set ``stop`` once the client of ``request`` has disconnected (looked at twice a second)."""
    while not await request.is_disconnected():
        await anyio.sleep(0.5)
    stop.set()


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("page", name).read_text(encoding="utf-8")


def serve(
    model: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    limits: ServiceLimits | None = None,
    upload_dir: str | Path | None = None,
) -> None:
    """Run the service until interrupted (``tagstack serve``); SIGTERM or Ctrl-C stop it gracefully: no new
    connections, and the requests under way get ``limits.shutdown_timeout`` seconds before they are cancelled."""
    import uvicorn

    limits = limits or ServiceLimits()
    app = create_app(model, device=device, limits=limits, upload_dir=upload_dir)
    from uvicorn.protocols.http.auto import AutoHTTPProtocol  # httptools' protocol when it is installed, else h11's

    uvicorn.run(
        app,
        host=host,
        port=port,
        http=header_deadline(AutoHTTPProtocol, limits),
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=limits.shutdown_timeout,
    )


__all__ = ["Problem", "ServiceLimits", "create_app", "serve"]
