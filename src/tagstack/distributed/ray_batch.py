"""Tagging and embedding a catalogue on a Ray cluster (Ray Data), resumable, into Parquet shards.

The work is the single-machine path's, run elsewhere: each worker is a Ray
actor that loads the model once into a :class:`~tagstack.inference.tagger.Tagger`
and tags the files of its batches through the same decoder and model code
(``tests/test_distributed.py`` checks the results equal ``Tagger.predict``'s).
When the workers hold GPUs, decoding moves out of them into a stage of CPU
tasks (the same decoder, at the model's rate) that feeds them decoded audio:
a GPU actor that decoded its own files would wait on one CPU while the
cluster's other cores sat idle.

The output is a folder of Parquet shards. A worker writes one shard per batch
of files, to a temporary name renamed when whole, so every shard is complete
or absent; its name is a hash of the batch's paths, so a batch that Ray
retries after a killed worker rewrites the same shard instead of adding a
duplicate. Results go to ``tags-*.parquet`` (path, seconds, one
probability column per tag, optional embedding and taggram); files that could
not be used go to ``failures-*.parquet`` (path, reason). A rerun of the same
command reads the paths already in the folder and does only the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable

import numpy as np

from ..checks import BATCH_FILES, WORKERS, check_taggram_hop
from ..errors import AudioError, ParameterError, TagstackError
from ..fileio import TEMP_PREFIX, atomic_write, remove_leftovers, shown
from ..inference.outputs import check_destination, unique_stems
from ..progress import progress

log = logging.getLogger(__name__)


@dataclass
class RayJobReport:
    """What a Ray job did: files done this run, files already done before, and each failure with its reason."""

    done: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """The command's exit status: 1 when any file failed, else 0."""
        return 1 if self.failed else 0


#: A shard that cannot be read is renamed with this suffix: kept for a look, out of every scan, and its files done again.
DAMAGED = ".damaged"


def _read_shard(shard: Path):
    """A whole shard as a ``pyarrow.Table``; None for one that cannot be read (cut short, overwritten, not Parquet),
    which is moved aside (``DAMAGED``) with one warning naming it, so that its files count as not done."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(shard)
        if "path" not in table.column_names:
            raise pa.ArrowInvalid("no 'path' column")
        return table
    except (OSError, pa.ArrowException) as e:
        aside = shard.with_name(shard.name + DAMAGED)
        shard.replace(aside)
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.warning("%s: damaged shard (%s); moved aside as %s, its files will be done again", shard, text, aside.name)
        return None


def done_paths(out: Path) -> set[str]:
    """Paths that already have a result or a failure in the readable shards of ``out`` (damaged ones are moved aside)."""
    seen: set[str] = set()
    for shard in sorted(out.glob("*.parquet")):
        if not shard.name.startswith(TEMP_PREFIX) and (table := _read_shard(shard)) is not None:
            seen.update(table.column("path").to_pylist())
    return seen


def read_results(out: str | Path) -> tuple:
    """The results and the failures of a Ray job's folder as two ``pyarrow.Table`` (None where the folder has none)."""
    import pyarrow as pa

    out = Path(out)

    def concat(prefix: str):
        parts = [t for p in sorted(out.glob(f"{prefix}-*.parquet")) if (t := _read_shard(p)) is not None]
        return pa.concat_tables(parts) if parts else None

    return concat("tags"), concat("failures")


#: Files longer than this (seconds) are not decoded whole by the CPU stage but streamed by their worker.
DECODE_MAX_SECONDS = 600.0

#: Columns of a result shard besides the tags' (a tag of the same name gets a ``tag_`` prefix).
RESERVED = {"path", "seconds", "embedding", "taggram", "taggram_windows", "window_starts"}


def _column(tag: str) -> str:
    return f"tag_{tag}" if tag in RESERVED else tag


class _Worker:
    """A Ray actor: the model loaded once, each batch of paths tagged together and written as a shard.

    The files of a batch share network passes (:meth:`Tagger.predict_batch`),
    which is what fills a GPU when files are short.
    """

    def __init__(self, model: str, device: str, out: str, embed: bool, taggram: bool, hop: float | None, taggram_dir: str | None) -> None:
        import torch

        from ..inference.tagger import Tagger

        self.tagger = Tagger(model, device=device)
        if self.tagger.device.type == "cpu":
            torch.set_num_threads(1)  # one worker per CPU: parallel across files, not inside small ops
        self.out, self.embed, self.taggram, self.hop = Path(out), embed, taggram, hop
        self.taggram_dir = Path(taggram_dir) if taggram_dir else None

    def __call__(self, batch: dict) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..report import write_taggram

        paths = [str(p) for p in batch["path"]]  # as the outputs write them (fileio.shown)
        files = [os.fsdecode(bytes(f)) for f in batch["file"]]  # as the OS gives them
        rows, failures = [], []
        if "audio" in batch:  # decoded by the CPU stage (:func:`_decode`)
            results = self._predict_decoded(
                files,
                paths,
                batch["audio"],
                [int(r) for r in batch["rate"]],
                [str(x) for x in batch["status"]],
                [str(x) for x in batch["reason"]],
            )
        else:
            results = self.tagger.predict_batch(files, taggram=self.taggram, hop=self.hop, names=paths)
        for path, stem, r in zip(paths, batch["stem"], results):
            if isinstance(r, TagstackError):
                failures.append((path, shown(str(r))))
                continue
            row = {"path": path, "seconds": float(r.seconds), **{_column(t): float(p) for t, p in zip(r.tags, r.probs)}}
            if self.embed:
                row["embedding"] = r.embedding.astype(np.float32).tolist()
            if self.taggram and r.taggram is not None:
                row["taggram"] = r.taggram.astype(np.float32).ravel().tolist()
                row["taggram_windows"] = int(r.taggram.shape[0])
                row["window_starts"] = r.window_starts.astype(np.float32).tolist()
                if self.taggram_dir is not None:  # before the shard: a file in a shard has its taggram files
                    try:
                        write_taggram(r, self.taggram_dir, stem=os.fsdecode(bytes(stem)), clip_seconds=self.tagger.cfg.clip_seconds)
                    except TagstackError as e:  # OutputError: a full disk ...
                        failures.append((path, f"{path}: cannot write its taggram ({e})"))
                        continue
            rows.append(row)
        key = hashlib.sha1("\n".join(sorted(paths)).encode()).hexdigest()[:16]
        if rows:
            table = pa.Table.from_pylist(rows)
            atomic_write(self.out / f"tags-{key}.parquet", lambda tmp: pq.write_table(table, tmp))
        if failures:
            table = pa.table({"path": [p for p, _ in failures], "reason": [r for _, r in failures]})
            atomic_write(self.out / f"failures-{key}.parquet", lambda tmp: pq.write_table(table, tmp))
        failed = dict(failures)
        return {"path": paths, "reason": [failed.get(p, "") for p in paths]}

    def _predict_decoded(self, files: list[str], paths: list[str], audio, rates: list[int], status: list[str], reasons: list[str]) -> list:
        """:meth:`Tagger.predict_batch` on what the CPU stage sent: decoded audio at its own rate, a file it left to
        this worker (a long one, streamed here in bounded memory), or the decoder's reason for failing."""
        ok = [i for i, s in enumerate(status) if s != FAILED]
        sources = [files[i] if status[i] == STREAM_HERE else np.asarray(audio[i], np.float32) for i in ok]
        got = self.tagger.predict_batch(
            sources,
            sr=[None if status[i] == STREAM_HERE else rates[i] for i in ok],
            taggram=self.taggram,
            hop=self.hop,
            names=[paths[i] for i in ok],
        )
        results: list = [AudioError(r) if s == FAILED else None for s, r in zip(status, reasons)]
        for i, r in zip(ok, got):
            results[i] = r
        return results


#: The decode stage's ``status`` of a file besides "" (decoded): left to the worker to stream, or failed.
STREAM_HERE, FAILED = "stream", "failed"


def _decode(batch: dict, max_seconds: float) -> dict:
    """The CPU stage: each file of ``batch`` as mono float32 at its own rate, through the decoding the
    :class:`Tagger` itself uses (:func:`~tagstack.audio.io.native_stream`; the worker resamples it exactly as
    decoding the file there would, so results equal the single-machine path's), or why it cannot be read.

    A file longer than ``max_seconds`` is left to the worker, which streams it
    in bounded memory: decoded whole it would sit in the object store (an hour
    is 318 MB at 22,050 Hz), once per file of a worker's batch.
    """
    from ..audio.io import native_stream

    audio, rates, status, reasons = [], [], [], []
    for raw, path in zip(batch["file"], batch["path"]):
        blocks, got, state, reason, rate = [], 0, "", "", 0
        try:
            _, rate, stream = native_stream(os.fsdecode(bytes(raw)))
            for block, _ in stream:
                blocks.append(block)
                got += block.size
                if got > max_seconds * rate:
                    blocks, state = [], STREAM_HERE
                    break
            if state == "" and not got:
                raise AudioError(f"{path}: no audio samples decoded")
        except TagstackError as e:
            blocks, state, reason = [], FAILED, shown(str(e))
        audio.append(np.concatenate(blocks) if blocks else np.zeros(1, np.float32))  # a placeholder is never read
        rates.append(rate)
        status.append(state)
        reasons.append(reason)
    return {
        "path": batch["path"],
        "file": batch["file"],
        "stem": batch["stem"],
        "audio": audio,
        "rate": np.array(rates, dtype=np.int64),
        "status": np.array(status, dtype=object),
        "reason": np.array(reasons, dtype=object),
    }


def run_on_ray(
    files: Iterable[str | Path],
    out: str | Path,
    *,
    model: str | Path | None = None,
    address: str | None = None,
    workers: int | None = None,
    device: str = "auto",
    embed: bool = False,
    taggram: bool = False,
    hop: float | None = None,
    taggram_dir: str | Path | None = None,
    batch_files: int | None = None,
    decode_tasks: bool | None = None,
) -> RayJobReport:
    """Tag (and embed) ``files`` on Ray into the Parquet folder ``out``, skipping files already there.

    ``address`` is an existing cluster (``"auto"`` or ``"ray://host:10001"``,
    ``"host:6379"``); ``None`` starts a local Ray in this process. ``workers``
    actors each load the model once (default: one per CPU of the cluster, or
    one per GPU when it has GPUs, each then using its GPU). Each worker tags
    ``batch_files`` files at a time (default 8, or 64 on GPUs), their windows
    sharing network passes. With ``taggram_dir`` (which implies ``taggram``)
    the workers also write each file's taggram there as the local
    ``tagstack tag --taggram`` does (.npy, .csv, .png, named by file stem,
    numbered where stems repeat). ``decode_tasks`` decodes the files in CPU
    tasks of their own that feed the workers decoded audio (default: when the
    workers use GPUs; ``True`` also on CPUs, ``False`` never); files longer
    than ``DECODE_MAX_SECONDS`` are still streamed by their worker.
    """
    try:
        import ray
    except ImportError:
        raise ParameterError("the Ray engine needs Ray: pip install 'tagstack[ray]'") from None
    from ..models.zoo import resolve_model
    from ..models.file import read_metadata

    model_path = resolve_model(model)
    read_metadata(model_path)  # a bad model is one line here, not an error in every worker
    if batch_files is not None:
        BATCH_FILES.check(batch_files)
    if workers is not None:
        WORKERS.check(workers)
    taggram = taggram or taggram_dir is not None
    check_taggram_hop(hop, taggram)
    out = Path(out).resolve()  # workers elsewhere in the cluster must not resolve it against their own folders
    check_destination(out, folder=True)
    out.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    files = [str(f) for f in files]
    if taggram_dir is not None:
        taggram_dir = Path(taggram_dir).resolve()
        check_destination(taggram_dir, folder=True)
        taggram_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(taggram_dir)
    job = {
        "model": str(model_path),
        "embed": embed,
        "taggram": taggram,
        "hop": hop,
        "taggram_dir": str(taggram_dir) if taggram_dir is not None else None,
    }
    _same_settings(out / "job.json", job)
    atomic_write(out / "job.json", lambda tmp: Path(tmp).write_text(json.dumps(job, indent=1)))  # what produced these shards
    names = {f: shown(f) for f in files}  # what the shards hold: a name that is not UTF-8 with its bytes escaped
    before = done_paths(out)
    todo = [f for f in files if names[f] not in before]
    report = RayJobReport(reused=len(files) - len(todo))
    if report.reused:
        log.info("%d of %d files already have results in %s; tagging the other %d", report.reused, len(files), out, len(todo))
    if not todo:
        return _with_failures(report, out, set(names.values()))
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    import ray.data

    # tagstack reports the job's progress itself, and a failed batch as the one error it raises
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    # a worker's own error (a shard it cannot write) reaches the driver as raised, not as Ray's UserCodeException
    ray.data.DataContext.get_current().raise_original_map_exception = True
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if device == "auto" or device.startswith("cuda") else 0
    if device.startswith("cuda") and not gpus:
        raise ParameterError(f"device {device}: the Ray cluster has no GPU (its resources: {dict(resources)})")
    cpus = int(resources.get("CPU", 1))
    n = workers or (gpus if gpus else max(1, cpus))
    worker_device = "cuda" if gpus else "cpu"
    batch_files = batch_files or (64 if gpus else 8)
    decode_tasks = bool(gpus) if decode_tasks is None else decode_tasks
    log.info(
        "Ray: %d workers (%s), %d files in batches of %d%s",
        n,
        "GPU" if gpus else "CPU",
        len(todo),
        batch_files,
        ", decoded by CPU tasks" if decode_tasks else "",
    )

    ray.data.DataContext.get_current().enable_progress_bars = False
    batch_files = max(1, min(batch_files, -(-len(todo) // n)))  # small jobs still reach every worker
    stems = dict(zip(files, unique_stems([Path(f) for f in files])))  # over the whole list: the same on a rerun
    blocks = -(-len(todo) // batch_files)
    if decode_tasks:  # a decode task takes a block: enough blocks for every core to decode, few enough to schedule
        blocks = max(blocks, min(len(todo), 4 * cpus))
    # Arrow holds text as UTF-8: each file travels as the OS's bytes ("file", "stem") beside the name the outputs write
    ds = ray.data.from_items(
        [{"path": names[f], "file": os.fsencode(f), "stem": os.fsencode(stems[f])} for f in todo], override_num_blocks=blocks
    )
    if decode_tasks:
        # its memory (a file decoded whole, twice at the concatenation) is also what keeps Ray from fusing this
        # stage into the workers' on CPUs, where both would otherwise ask for one CPU alone
        ds = ds.map_batches(
            _decode,
            batch_size=1,
            num_cpus=1,
            memory=8 * DECODE_MAX_SECONDS * 48_000 + 2**27,
            fn_kwargs=dict(max_seconds=DECODE_MAX_SECONDS),
        )
    # Ray Data restarts a killed worker and retries its batch (max_restarts=-1, max_task_retries=-1 by default)
    # CPU workers beside the decode tasks leave them at least one CPU to ask for, or every task would wait on them
    worker_cpus = 0 if gpus else (math.floor(100 * min(1.0, max(0, cpus - 1) / n)) / 100 if decode_tasks else 1)
    ds = ds.map_batches(
        _Worker,
        batch_size=batch_files,
        concurrency=n,
        num_cpus=worker_cpus,
        num_gpus=1 if gpus else 0,
        fn_constructor_kwargs=dict(
            model=str(model_path),
            device=worker_device,
            out=str(out),
            embed=embed,
            taggram=taggram,
            hop=hop,
            taggram_dir=str(taggram_dir) if taggram_dir is not None else None,
        ),
    )
    try:
        for row in progress(ds.iter_rows(), total=len(todo), desc="Ray", unit="file"):
            report.done += not row["reason"]
            if row["reason"]:
                report.failed.append((row["path"], row["reason"]))
    except Exception as e:
        own = _worker_error(e)
        if own is None:
            raise
        # the shards written so far are whole and stay: a rerun once the cause is fixed does only the rest;
        # tagstack's messages are one line, the rest is what Ray appended to it (retry advice)
        raise type(own)(str(own).splitlines()[0]) from None
    return _with_failures(report, out, set(names.values()))


def _worker_error(e: BaseException) -> TagstackError | None:
    """The tagstack error a worker raised (a shard it could not write: a full disk, a lost mount), out of the
    exceptions Ray wraps it in, whose text is the worker's whole traceback; None for any other error."""
    for _ in range(32):  # a chain of causes, never a cycle in practice; bounded all the same
        cause = getattr(e, "cause", None)  # a RayTaskError holds the worker's exception here
        if isinstance(cause, BaseException) and cause is not e:
            e = cause
            continue
        if isinstance(e, TagstackError) and type(e).__module__.startswith("tagstack"):
            return e
        nxt = e.__cause__ or e.__context__
        if nxt is None:
            return None
        e = nxt
    return None


def _same_settings(path: Path, job: dict) -> None:
    """Refuse to add to a folder whose shards were made with other settings (a rerun would skip their files)."""
    if not path.exists():
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # no readable record: the shards are still whole, only their settings are unknown
    changed = [k for k in job if k in before and before[k] != job[k]]
    if changed:
        what = ", ".join(f"{k} {before[k]!r} -> {job[k]!r}" for k in changed)
        raise ParameterError(
            f"{path.parent}: holds results made with other settings ({what}); use a new output folder, or the same settings to resume"
        )


def _with_failures(report: RayJobReport, out: Path, wanted: set[str]) -> RayJobReport:
    """The job's failures as the folder records them (this run's and earlier ones), for the files asked about."""
    _, failures = read_results(out)
    if failures is not None:
        report.failed = sorted(
            (p, r) for p, r in zip(failures.column("path").to_pylist(), failures.column("reason").to_pylist()) if p in wanted
        )
    return report


__all__ = ["RayJobReport", "done_paths", "read_results", "run_on_ray"]
