"""Decoding audio files to mono float32 at the front end's sample rate.

libsndfile (through soundfile) reads wav, flac, ogg and, from version 1.1,
mp3; PyAV (FFmpeg) is the fallback for everything else (m4a/aac, au, wma, ...).
Resampling is done with soxr, the high-quality resampler the field trusts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import itertools

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioError

#: Extensions picked up when a folder is searched for audio.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".aac", ".mp4", ".au", ".aiff", ".aif", ".opus", ".wma")


def _to_mono(x: np.ndarray) -> np.ndarray:
    """Average the channels of ``(frames, channels)``; column sums, since ``mean(axis=1)`` is slow on few columns."""
    if x.ndim == 1:
        return x
    if x.shape[1] == 1:
        return x[:, 0]
    y = x[:, 0].copy()
    for c in range(1, x.shape[1]):
        y += x[:, c]
    y *= 1.0 / x.shape[1]
    return y


def _read_soundfile(path: str, offset: float, duration: float | None) -> tuple[np.ndarray, int]:
    with sf.SoundFile(path) as f:
        sr = f.samplerate
        start = int(round(offset * sr))
        if start:
            f.seek(min(start, f.frames))
        frames = -1 if duration is None else int(round(duration * sr))
        x = f.read(frames, dtype="float32", always_2d=True)
    return _to_mono(x), sr


def _read_av(path: str, offset: float, duration: float | None) -> tuple[np.ndarray, int]:
    import av

    with av.open(path) as container:
        if not container.streams.audio:
            raise AudioError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        sr = stream.codec_context.sample_rate or stream.rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        if offset > 0 and stream.time_base:
            container.seek(int(offset / stream.time_base), stream=stream)
        chunks: list[np.ndarray] = []
        t0: float | None = None
        wanted = None if duration is None else int(round(duration * sr))
        got = 0
        for frame in container.decode(stream):
            if t0 is None:
                t0 = float(frame.pts * stream.time_base) if frame.pts is not None else 0.0
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
                got += chunks[-1].size
            if wanted is not None and got >= wanted + sr * 2:
                break
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    x = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if offset > 0:  # seeking lands on a packet boundary at or before the offset
        skip = max(0, int(round((offset - (t0 or 0.0)) * sr)))
        x = x[skip:]
    if wanted is not None:
        x = x[:wanted]
    return x.astype(np.float32, copy=False), int(sr)


def load(
    path: str | Path,
    *,
    sr: int = 22050,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Decode ``path`` to a mono float32 signal at ``sr`` Hz.

    Parameters
    ----------
    path : str or Path
        Any file libsndfile or FFmpeg can read.
    sr : int > 0
        Output sample rate; the signal is resampled with soxr when it differs.
    offset, duration : float [seconds]
        Read only ``duration`` seconds starting at ``offset`` (all when None).

    Returns
    -------
    y : np.ndarray [shape=(n,), dtype=float32]

    Raises
    ------
    AudioError
        When the file is missing, empty, or cannot be decoded; the message
        names the file and the reason.
    """
    path = _check_file(path)
    try:
        x, native = _read_soundfile(path, offset, duration)
    except AudioError:
        raise
    except Exception as sf_error:  # libsndfile cannot read it: try FFmpeg
        try:
            x, native = _read_av(path, offset, duration)
        except AudioError:
            raise
        except Exception as av_error:
            raise AudioError(f"{path}: cannot decode ({sf_error}; {av_error})") from av_error
    if x.size == 0:
        raise AudioError(f"{path}: no audio samples decoded")
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{path}: decoded samples contain NaN or infinity")
    if native != sr:
        x = soxr.resample(x, native, sr, quality="HQ")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_file(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise AudioError(f"{path}: file not found")
    if p.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty")
    return str(path)


def duration_seconds(path: str | Path) -> float:
    """Length of an audio file in seconds, read from its header when possible."""
    path = _check_file(path)
    try:
        return float(sf.info(path).duration)
    except Exception:
        import av

        try:
            with av.open(path) as c:
                if c.duration is not None:
                    return c.duration / 1_000_000
                s = c.streams.audio[0]
                return float(s.duration * s.time_base)
        except Exception as e:
            raise AudioError(f"{path}: cannot read duration ({e})") from e


def stream(path: str | Path, *, sr: int = 22050, block_seconds: float = 60.0) -> Iterator[np.ndarray]:
    """Yield a long file as consecutive mono blocks at ``sr``, opening and decoding it once.

    Memory stays bounded by the block length; resampling runs as one
    continuous stream (soxr), so block boundaries leave no artefacts.
    Blocks hold about ``block_seconds`` each (the last one less).
    """
    path = _check_file(path)
    try:
        f = sf.SoundFile(path)
    except Exception:
        yield from _stream_av(path, sr, block_seconds)
        return
    with f:
        native = f.samplerate
        rs = soxr.ResampleStream(native, sr, 1, dtype="float32", quality="HQ") if native != sr else None
        block = max(1, int(block_seconds * native))
        got = False
        while True:
            try:
                x = f.read(block, dtype="float32", always_2d=True)
            except Exception as e:
                raise AudioError(f"{path}: cannot decode ({e})") from e
            last = len(x) < block
            y = _to_mono(x)
            if rs is not None and last and not got:  # the whole file in one block: one-shot is faster
                y = soxr.resample(y, native, sr, quality="HQ")
            elif rs is not None:
                y = rs.resample_chunk(y, last=last)
            if y.size:
                got = True
                yield np.ascontiguousarray(y, dtype=np.float32)
            if last:
                break
    if not got:
        raise AudioError(f"{path}: no audio samples decoded")


def _stream_av(path: str, sr: int, block_seconds: float) -> Iterator[np.ndarray]:
    import av

    try:
        container = av.open(path)
    except Exception as e:
        raise AudioError(f"{path}: cannot decode ({e})") from e
    with container:
        if not container.streams.audio:
            raise AudioError(f"{path}: no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
        block = int(block_seconds * sr)
        chunks: list[np.ndarray] = []
        n = 0
        got = False
        try:
            frames = container.decode(container.streams.audio[0])
            for frame in itertools.chain(frames, [None]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    n += chunks[-1].size
                if n >= block or (frame is None and n):
                    got = True
                    yield np.concatenate(chunks).astype(np.float32, copy=False)
                    chunks, n = [], 0
        except AudioError:
            raise
        except Exception as e:
            raise AudioError(f"{path}: cannot decode ({e})") from e
    if not got:
        raise AudioError(f"{path}: no audio samples decoded")


def find_audio(paths: list[str | Path]) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a sorted list of audio files."""
    import glob

    found: list[Path] = []
    for item in paths:
        s = str(item)
        candidates = [Path(m) for m in sorted(glob.glob(s, recursive=True))] if any(c in s for c in "*?[") else [Path(s)]
        for c in candidates:
            if c.is_dir():
                found.extend(sorted(q for q in c.rglob("*") if q.suffix.lower() in AUDIO_EXTENSIONS and q.is_file()))
            else:
                found.append(c)
    return found
