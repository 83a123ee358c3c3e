"""A memory-mapped cache of every clip's log-mel frames.

Computing the front end once per clip and reusing it is what makes training
fast. The frames of all clips of a dataset live in one float16 file of shape
``(clips, n_frames, n_mels)`` (1,250 x 128 x 2 bytes = 320 kB a clip), opened
with ``np.memmap`` so a set of MSD's size (about 77 GB) is never loaded into
memory. The cache folder is named after the front-end parameters and the clip
list, each file with its size and modification time, so changing the front
end, the list or any file (a dataset rebuilt in place) never reuses stale
frames.

Building is parallel (worker processes decode and resample; the front end
runs in torch, batched, on the GPU when there is one), shows progress, and is
resumable and atomic per clip: a clip's ``done`` flag is set only after its
frames have been flushed to disk, and only flagged clips are ever read.
Files that cannot be used are skipped and listed in ``failed.json``. On a
Ray cluster (``engine="ray"``) the workers decode and compute the frames,
and this process writes them into the same store.

Clips shorter than the clip length (29.1 s) are zero-padded at the end when
they hold at least ``min_seconds`` of audio, and skipped below that; how
many frames of each clip are audio is stored beside them (:attr:`MelCache.frames`),
so that training and aggregation use the audio alone, as tagging a file
does. Longer files contribute the 29.1 s at their centre.
"""

from __future__ import annotations

import logging

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..audio.frontend import ClipMel
from ..audio.io import duration_seconds, load
from ..config import FrontEndConfig
from .base import ClipSet
from ..errors import AudioError, OutputError, ParameterError
from ..progress import progress
from ..runtime import die_with_parent, usable_cpus
from ..fileio import atomic_write_json, remove_leftovers, reserve

log = logging.getLogger(__name__)


def _decode(args: tuple[str, int, float, float]) -> tuple[np.ndarray | None, str]:
    """Worker: decode one clip; returns (samples or None, note)."""
    path, sr, clip_seconds, min_seconds = args
    try:
        total = duration_seconds(path)
        offset = max(0.0, (total - clip_seconds) / 2) if total > clip_seconds + 1.0 else 0.0
        y = load(path, sr=sr, offset=offset, duration=clip_seconds)
    except AudioError as e:
        return None, str(e)
    except Exception as e:  # a decoder bug must not end a long job
        return None, f"{path}: {type(e).__name__}: {e}"
    seconds = y.size / sr
    if seconds < min_seconds:
        return None, f"{path}: too short ({seconds:.2f} s < {min_seconds} s)"
    note = f"padded from {seconds:.2f} s" if seconds < clip_seconds - 0.05 else ""
    return y, note


def _decode_frames(args: tuple[str, int, float, float, dict]) -> tuple[tuple[np.ndarray, int] | None, str]:
    """Ray worker: decode one clip and compute its frames on the worker's CPU (8x less to send back than samples);
    returns them with the number of samples of audio."""
    y, note = _decode(args[:4])
    if y is None:
        return None, note
    fe = FrontEndConfig(**args[4])
    with torch.inference_mode():
        mel = _cpu_frontend(args[4])(torch.from_numpy(_pad(y, fe.clip_samples))[None])[0]
    return (mel.numpy().astype(np.float16), y.size), note


_FRONTENDS: dict[str, ClipMel] = {}


def _cpu_frontend(params: dict) -> ClipMel:
    """One front end per worker process and configuration (building its filterbank once)."""
    key = json.dumps(params, sort_keys=True)
    if key not in _FRONTENDS:
        torch.set_num_threads(1)  # one Ray worker per CPU
        _FRONTENDS[key] = ClipMel(FrontEndConfig(**params))
    return _FRONTENDS[key]


class MelCache:
    """The cached frames of one :class:`ClipSet` under one front-end configuration.

    Use :meth:`build` once (it resumes if interrupted), then :attr:`mels`
    (a read-only memmap) and :attr:`valid` (clips whose frames are present).
    """

    def __init__(self, clips: ClipSet, *, cache_dir: str | Path, frontend: FrontEndConfig | None = None) -> None:
        self.clips = clips
        self.frontend = frontend or FrontEndConfig()
        listing = "\n".join(_signature(clips.audio_path(i)) for i in range(len(clips)))
        digest = hashlib.sha1(listing.encode()).hexdigest()[:10]
        self.dir = Path(cache_dir) / f"{clips.name}-fe{self.frontend.key()}-{digest}"
        self.shape = (len(clips), self.frontend.n_frames, self.frontend.n_mels)

    @property
    def _mels_path(self) -> Path:
        return self.dir / "mels.f16"

    @property
    def _done_path(self) -> Path:
        return self.dir / "frames.i16"  # frames of audio per clip; 0: not computed yet

    @property
    def _sizes(self) -> dict[Path, int]:
        """Each memory-mapped file and the bytes this cache's shape needs of it (float16 frames, int16 counts)."""
        n, frames, mels = self.shape
        return {self._mels_path: n * frames * mels * 2, self._done_path: n * 2}

    def _complete_files(self) -> bool:
        """Both memory-mapped files exist with the sizes this cache's shape needs."""
        return all(p.exists() and p.stat().st_size == size for p, size in self._sizes.items())

    def _open(self, mode: str) -> tuple[np.memmap, np.memmap]:
        mels = np.memmap(self._mels_path, dtype=np.float16, mode=mode, shape=self.shape)
        done = np.memmap(self._done_path, dtype=np.int16, mode=mode, shape=(self.shape[0],))
        return mels, done

    def _audio_frames(self, samples: int) -> int:
        """Frames centred inside ``samples`` of audio (as the tagger counts them), at most a clip's."""
        return min(self.frontend.n_frames, -(-samples // self.frontend.hop_length))

    def _failed(self) -> dict[str, str]:
        f = self.dir / "failed.json"
        return json.loads(f.read_text()) if f.exists() else {}

    def build(
        self,
        *,
        workers: int = 0,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        min_seconds: float = 5.0,
        engine: str = "local",
        ray_address: str = "",
    ) -> dict:
        """Compute the frames of every clip not yet cached; returns a report.

        ``engine="ray"`` decodes and computes frames in Ray workers (a local
        Ray, or the cluster at ``ray_address``: ``auto``, ``host:6379``) and
        writes them into the same memory-mapped store here, with the same
        resumption and failure list.

        The report has ``cached`` (clips now present), ``computed`` (this call),
        ``skipped`` (path -> reason) and ``padded`` (path -> note).
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self.dir)
        new = not self._complete_files()
        if new:  # new, or a kill left one file without the other: start this cache over
            if (self.dir / "done.u8").exists():  # an earlier version's flags, without the frames of audio
                log.warning(
                    "mel cache %s: built by an earlier tagstack, which did not record how much of each clip is audio; "
                    "computing it again, once",
                    self.dir,
                )
                (self.dir / "done.u8").unlink()
            np.memmap(self._mels_path, dtype=np.float16, mode="w+", shape=self.shape).flush()
            np.memmap(self._done_path, dtype=np.int16, mode="w+", shape=(self.shape[0],)).flush()
            atomic_write_json(
                self.dir / "info.json",
                {
                    "dataset": self.clips.name,
                    "shape": list(self.shape),
                    "frontend": self.frontend.__dict__,
                    "paths": [str(self.clips.audio_path(i)) for i in range(len(self.clips))],
                },
            )
        try:  # a memory map that meets a full disk is a SIGBUS, not an error: ask for the room first
            for path, size in self._sizes.items():
                reserve(path, size)
        except OutputError:
            if new:  # nothing computed yet: leave no blocks behind on a disk that is full
                shutil.rmtree(self.dir, ignore_errors=True)
            raise
        mels, done = self._open("r+")
        failed = self._failed()
        padded: dict[str, str] = {}
        todo = [i for i in range(len(self.clips)) if not done[i] and str(self.clips.audio_path(i)) not in failed]
        fe = self.frontend
        module = ClipMel(fe).to(device)
        jobs = [(str(self.clips.audio_path(i)), fe.sample_rate, fe.clip_seconds, min_seconds) for i in todo]
        workers = workers or usable_cpus()
        pending: list[tuple[int, np.ndarray]] = []
        computed = 0

        frames_done: list[tuple[int, int]] = []  # (clip, samples of audio) whose frames a Ray worker computed

        def flush() -> None:
            nonlocal computed
            if not pending and not frames_done:
                return
            if pending:
                batch = torch.from_numpy(np.stack([_pad(y, fe.clip_samples) for _, y in pending])).to(device)
                with torch.inference_mode():
                    out = module(batch).cpu().numpy().astype(np.float16)
                for (i, _), m in zip(pending, out):
                    mels[i] = m
            mels.flush()
            finished = [(i, y.size) for i, y in pending] + frames_done
            for i, samples in finished:
                done[i] = self._audio_frames(samples)
            done.flush()
            computed += len(finished)
            pending.clear()
            frames_done.clear()

        bar = progress(total=len(todo), desc=f"mel cache {self.clips.name}", unit="clip", hide=not todo)
        try:
            if engine == "ray" and jobs:
                pool = _ray_pool(ray_address, workers if workers else None)
                results = pool.imap(_decode_frames, [(*job, dict(fe.__dict__)) for job in jobs], chunksize=4)
            elif workers > 1 and len(jobs) > 1:
                ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
                pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=die_with_parent)
                results = pool.map(_decode, jobs, chunksize=4)
            else:
                pool = None
                results = map(_decode, jobs)
            for i, (y, note) in zip(todo, results):
                path = str(self.clips.audio_path(i))
                if y is None:
                    failed[path] = note
                    log.warning(f"skipped {note}")
                else:
                    if note:
                        padded[path] = note
                    if isinstance(y, tuple):  # frames computed by a Ray worker, and the samples they came from
                        mels[i] = y[0]
                        frames_done.append((i, y[1]))
                        if len(frames_done) >= batch_size:
                            flush()
                    else:
                        pending.append((i, y))
                        if len(pending) >= batch_size:
                            flush()
                bar.update(1)
            flush()
            if pool is not None:
                pool.close() if engine == "ray" else pool.shutdown()
        finally:
            bar.close()
            flush()
            atomic_write_json(self.dir / "failed.json", failed)
        valid = np.asarray(done, dtype=bool)
        if failed:
            log.warning(
                f"mel cache {self.clips.name}: skipped {len(failed)} of {len(self.clips)} files (listed in {self.dir / 'failed.json'})"
            )
        return {"cached": int(valid.sum()), "computed": computed, "skipped": failed, "padded": padded}

    @property
    def mels(self) -> np.memmap:
        """Read-only ``(clips, n_frames, n_mels)`` float16 frames."""
        if not self._mels_path.exists():
            raise AudioError(f"{self.dir}: mel cache not built yet")
        return self._open("r")[0]

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask of clips whose frames are cached."""
        return self.frames > 0

    @property
    def frames(self) -> np.ndarray:
        """Frames of audio in each clip (the rest of its ``n_frames`` is zero padding); 0 for clips not cached."""
        if not self._done_path.exists():
            return np.zeros(self.shape[0], dtype=np.int64)
        return np.asarray(self._open("r")[1], dtype=np.int64)


def _ray_pool(address: str, workers: int | None):
    """A Ray pool of worker processes (``ray.util.multiprocessing``), starting a local Ray unless given a cluster."""
    try:
        import ray
        from ray.util.multiprocessing import Pool
    except ImportError:
        raise ParameterError("the Ray engine needs Ray: pip install 'tagstack[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    return Pool(processes=workers)


def _signature(path: Path) -> str:
    """A file as the cache knows it: path, size and modification time (a missing file is just its path)."""
    try:
        st = os.stat(path)
    except OSError:
        return str(path)
    return f"{path}\t{st.st_size}\t{st.st_mtime_ns}"


def _pad(y: np.ndarray, n: int) -> np.ndarray:
    return y[:n] if y.size >= n else np.pad(y, (0, n - y.size))
