"""The one decoder: any audio file or array to mono float32 blocks at the front end's rate.

Every caller (training's mel cache, tagging, embedding, the service) reads
audio through :func:`stream`; :func:`load` is its concatenation. One path
means one behaviour everywhere:

- **decoding** at the file's own rate and channel layout: libsndfile (wav,
  flac, ogg, mp3) first, PyAV/FFmpeg for everything else (m4a/aac, opus,
  wma ...). FFmpeg only converts sample formats; it never downmixes or
  resamples, so a stereo m4a reaches the networks at the same level as the
  same music in wav (letting FFmpeg downmix made it 3 dB louder);
- **downmix**: the mean of the channels;
- **finiteness**: a block holding NaN or infinity is refused with the file's
  name, so nothing non-finite reaches a network;
- **resampling**: soxr (HQ) as one continuous stream, so block boundaries
  leave no trace and ``load`` equals the concatenated ``stream`` exactly.

Arrays given to the API go through the same downmix, check and resampler.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from pathlib import Path
from collections.abc import Iterator, Sequence

import numpy as np
import soundfile as sf
import soxr

from ..errors import AudioError, ParameterError

log = logging.getLogger(__name__)

#: Extensions picked up when a folder is searched for audio.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".aac", ".mp4", ".au", ".aiff", ".aif", ".opus", ".wma")

#: The sample rates accepted (files and arrays); anything outside is a corrupt header or a mistake (a rate of a few Hz
#: would turn a few thousand samples into hours of "audio").
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 768_000

#: libsndfile's frame count for a file whose header gives no length (its largest count, 2**63 - 1): read by FFmpeg.
UNKNOWN_FRAMES = 2**62


def check_file(path: str | Path) -> str:
    """``path`` as a string, or an :class:`AudioError` saying why it cannot be an audio file."""
    p = Path(path)
    try:
        if p.is_dir():
            raise AudioError(f"{path}: is a folder, not an audio file")
        if not p.exists():
            if p.is_symlink():
                os.stat(p)  # a loop of links says so (ELOOP), a dangling one FileNotFoundError
            raise AudioError(f"{path}: file not found")
        if p.stat().st_size == 0:
            raise AudioError(f"{path}: file is empty")
    except FileNotFoundError:
        raise AudioError(f"{path}: file not found (a broken symbolic link)") from None
    except OSError as e:  # symlink loops, permissions, names the OS refuses
        raise AudioError(f"{path}: cannot open ({e.strerror or e})") from None
    return str(path)


def _mono(x: np.ndarray) -> np.ndarray:
    """The mean of the channels of ``(frames, channels)``, summed column by column (``mean(axis=1)`` is slow on few columns)."""
    if x.shape[1] == 1:
        return x[:, 0]
    y = x[:, 0].copy()
    for c in range(1, x.shape[1]):
        y += x[:, c]
    y *= 1.0 / x.shape[1]
    return y


# ------------------------------------------------------------ native-rate sources

#: At most this many samples (frames x channels) of a file are held before they are downmixed: a file of many
#: channels at a high rate costs the memory of its mono signal, not of all its channels at once.
DOWNMIX_SAMPLES = 1 << 20


def _soundfile_blocks(f: sf.SoundFile, start: int, block: int) -> Iterator[np.ndarray]:
    """Mono ``(frames, 1)`` blocks of ``block`` frames, each read and downmixed in pieces of at most ``DOWNMIX_SAMPLES``."""
    step = max(1, min(block, DOWNMIX_SAMPLES // f.channels))
    with f:
        if start:
            f.seek(min(start, f.frames))
        end = False
        while not end:
            parts, n = [], 0
            while n < block:
                want = min(step, block - n)
                x = f.read(want, dtype="float32", always_2d=True)
                if len(x):
                    parts.append(_mono(x))
                    n += len(x)
                if len(x) < want:
                    end = True
                    break
            if n:
                yield (parts[0] if len(parts) == 1 else np.concatenate(parts))[:, None]


def _av_blocks(path: str, offset: float, block_seconds: float) -> tuple[int, Iterator[np.ndarray]]:
    import av

    container = _av_open(path)
    if not container.streams.audio:
        container.close()
        raise AudioError(f"{path}: no audio stream")
    stream = container.streams.audio[0]
    rate = stream.codec_context.sample_rate or stream.rate
    if not rate:
        container.close()
        raise AudioError(f"{path}: no sample rate in the audio stream")
    _check_rate(rate, path)
    start, block = int(round(offset * rate)), max(1, int(block_seconds * rate))

    def blocks() -> Iterator[np.ndarray]:
        skip, pending, n = start, [], 0
        converter = None
        with container:
            for frame in container.decode(stream):
                if converter is None:  # float conversion only: the file's own layout and rate
                    converter = av.AudioResampler(format="flt", layout=frame.layout.name, rate=frame.sample_rate)
                    channels = len(frame.layout.channels)
                for out in converter.resample(frame):
                    x = _mono(out.to_ndarray().reshape(-1, channels))[:, None]  # downmixed frame by frame: bounded memory
                    if skip:
                        cut = min(skip, len(x))
                        x, skip = x[cut:], skip - cut
                    if len(x):
                        pending.append(x)
                        n += len(x)
                while n >= block:
                    x = np.concatenate(pending)
                    yield x[:block]
                    pending, n = ([x[block:]] if len(x) > block else []), len(x) - block
        if n:
            yield np.concatenate(pending)

    return int(rate), blocks()


def _av_open(path: str):
    """PyAV's container of ``path``; a name that is not valid UTF-8 (which PyAV cannot pass to FFmpeg) as an open file."""
    import av

    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return av.open(open(path, "rb"))  # closed with the container, when it is released
    return av.open(path)


def _file_blocks(path: str, offset: float, block_seconds: float) -> tuple[int, Iterator[np.ndarray]]:
    """The file's sample rate and its ``(frames, channels)`` float32 blocks from ``offset`` seconds."""
    try:
        f = sf.SoundFile(os.fsencode(path))  # bytes: a name that is not valid UTF-8 opens too
    except Exception as sf_error:  # libsndfile cannot read it: FFmpeg
        try:
            return _av_blocks(path, offset, block_seconds)
        except AudioError:
            raise
        except Exception as av_error:
            raise AudioError(f"{path}: cannot decode ({_short(sf_error)}; {_short(av_error)})") from None
    if f.frames >= UNKNOWN_FRAMES:  # no length in the header (a FLAC written to a pipe): libsndfile fails mid-way, FFmpeg reads on
        f.close()
        return _av_blocks(path, offset, block_seconds)
    _check_rate(f.samplerate, path)
    return f.samplerate, _soundfile_blocks(f, int(round(offset * f.samplerate)), max(1, int(block_seconds * f.samplerate)))


def _array_blocks(y: np.ndarray, block: int) -> Iterator[np.ndarray]:
    for i in range(0, len(y), block):
        yield y[i : i + block]


def as_frames(y: np.ndarray) -> np.ndarray:
    """An API array as float32 ``(frames, channels)``.

    1-D arrays are mono; 2-D arrays are ``(channels, samples)`` or
    ``(samples, channels)``, the shorter axis taken as channels. Integer PCM
    is scaled to [-1, 1) as soundfile reads it (int16 / 32768 ...).
    """
    y = np.asarray(y)
    if y.size == 0:
        raise ParameterError(f"the audio array is empty (shape {y.shape})")
    if y.dtype.kind in "iu":
        info = np.iinfo(y.dtype)
        scale = float(-info.min) if y.dtype.kind == "i" else (info.max + 1) / 2
        y = (y.astype(np.float64) - (0 if y.dtype.kind == "i" else scale)) / scale
    elif y.dtype.kind != "f":
        raise ParameterError(f"audio arrays must hold floats or integer PCM, got dtype {y.dtype}")
    if y.ndim == 1:
        y = y[:, None]
    elif y.ndim == 2:
        y = y.T if y.shape[0] < y.shape[1] else y
    else:
        raise ParameterError(f"audio arrays must be 1-D (mono) or 2-D (channels x samples), got shape {y.shape}")
    if y.shape[0] == 0:
        raise ParameterError("the audio array is empty")
    with np.errstate(over="ignore"):  # a float64 past float32's range becomes infinite, which the stream refuses by name
        return np.ascontiguousarray(y, dtype=np.float32)


def _check_rate(rate, what: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise (ParameterError if what == "array" else AudioError)(
            f"{'sr' if what == 'array' else what}: sample rate must be an integer in {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz, got {rate!r}"
        )


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# ------------------------------------------------------------ the one pipeline


def stream(
    source: str | Path | np.ndarray,
    *,
    sr: int | Sequence[int] = 22050,
    block_seconds: float = 60.0,
    offset: float = 0.0,
    duration: float | None = None,
    source_sr: int | None = None,
) -> Iterator[np.ndarray] | Iterator[tuple[np.ndarray, ...]]:
    """Yield ``source`` as consecutive mono float32 blocks at ``sr`` Hz, decoding it once.

    Parameters
    ----------
    source : path or np.ndarray
        A file libsndfile or FFmpeg can read, or samples (see :func:`as_frames`).
    sr : int > 0, or a sequence of them
        Output rate; soxr resamples as one continuous stream when it differs.
        A sequence of rates (a model whose networks read front ends at
        several rates) gives tuples of blocks, one per rate, from one decoding.
    block_seconds : float > 0
        About this many seconds of input per block (memory stays bounded).
    offset, duration : float [seconds]
        Read only ``duration`` seconds from ``offset`` (all when None).
    source_sr : int
        The rate of an array ``source`` (required then, ignored for files).

    Yields
    ------
    block : np.ndarray [shape=(n,), dtype=float32]
        Consecutive mono samples at ``sr`` (their concatenation is :func:`load`'s result); with a sequence of
        rates, a tuple of such blocks, one per rate, resampled from the same decoded block.

    Raises
    ------
    AudioError
        A file that is missing, empty, undecodable, silent of samples or not
        finite; the message names the file and the reason.
    ParameterError
        A malformed argument (an array without ``source_sr``, a bad shape ...).
    """
    single = isinstance(sr, (int, np.integer)) and not isinstance(sr, bool)
    rates = (sr,) if single else tuple(sr)
    for rate in rates:
        _check_rate(rate, "array")
    if not rates:
        raise ParameterError("stream needs at least one output rate")
    name, native, blocks = native_stream(source, block_seconds=block_seconds, offset=offset, duration=duration, source_sr=source_sr)
    resamplers = [soxr.ResampleStream(native, r, 1, dtype="float32", quality="HQ") if r != native else None for r in rates]
    out = _resampled(name, blocks, resamplers)
    return (parts[0] for parts in out) if single else out


def native_stream(
    source: str | Path | np.ndarray,
    *,
    block_seconds: float = 60.0,
    offset: float = 0.0,
    duration: float | None = None,
    source_sr: int | None = None,
) -> tuple[str, int, Iterator[tuple[np.ndarray, bool]]]:
    """The name, native rate and mono float32 blocks of ``source``, checked finite but not resampled.

    Each block comes with whether it is the last one (a resampler then
    flushes). :func:`stream` resamples these; the Ray decoding stage sends
    them as they are, so its workers resample exactly as :func:`stream` does.
    """
    if not block_seconds > 0 or offset < 0 or (duration is not None and not duration > 0):
        raise ParameterError(f"need block_seconds > 0, offset >= 0 and duration > 0, got {block_seconds}, {offset}, {duration}")
    if isinstance(source, np.ndarray):
        if source_sr is None:
            raise ParameterError("sr is required when the audio is an array")
        _check_rate(source_sr, "array")
        name, native = "<array>", int(source_sr)
        frames = as_frames(source)[int(round(offset * native)) :]
        blocks = _array_blocks(frames, max(1, int(block_seconds * native)))
    else:
        name = check_file(source)
        native, blocks = _file_blocks(name, offset, block_seconds)
    return name, native, _mono_blocks(name, native, blocks, duration)


def _mono_blocks(name: str, native: int, blocks: Iterator[np.ndarray], duration: float | None) -> Iterator[tuple[np.ndarray, bool]]:
    wanted = math.inf if duration is None else int(round(duration * native))
    got = 0
    nxt = _next(blocks, name)
    while nxt is not None:
        x, nxt = (nxt if wanted == math.inf else nxt[: max(0, wanted - got)]), None
        got += len(x)
        if got < wanted:
            nxt = _next(blocks, name)
        y = _mono(x) if len(x) else np.zeros(0, np.float32)
        if not np.isfinite(y).all():
            raise AudioError(f"{name}: the audio contains NaN or infinite samples")
        yield y, nxt is None


def _resampled(name: str, blocks: Iterator[tuple[np.ndarray, bool]], resamplers: list) -> Iterator[tuple[np.ndarray, ...]]:
    produced = False
    for y, last in blocks:
        parts = tuple(np.ascontiguousarray(y if r is None else r.resample_chunk(y, last=last), dtype=np.float32) for r in resamplers)
        if any(p.size for p in parts):
            produced = True
            yield parts
    if not produced:
        raise AudioError(f"{name}: no audio samples decoded")


def _next(blocks: Iterator[np.ndarray], name: str) -> np.ndarray | None:
    try:
        return next(blocks)
    except StopIteration:
        return None
    except (AudioError, ParameterError):
        raise
    except Exception as e:  # a decoder failing mid-file (truncated, corrupt)
        raise AudioError(f"{name}: cannot decode ({_short(e)})") from None


def load(
    source: str | Path | np.ndarray,
    *,
    sr: int = 22050,
    offset: float = 0.0,
    duration: float | None = None,
    source_sr: int | None = None,
) -> np.ndarray:
    """The whole of :func:`stream` as one mono float32 array at ``sr`` Hz.

    Parameters
    ----------
    source : path or np.ndarray
        A file libsndfile or FFmpeg can read, or samples: ``[shape=(n,)]`` mono, or ``[shape=(channels, n)]``
        or ``[shape=(n, channels)]`` (the shorter axis is taken as channels); float, or integer PCM.
    sr : int
        Output rate in Hz (soxr's HQ resampler when it differs from the source's).
    offset, duration : float [seconds]
        Read only ``duration`` seconds from ``offset`` (all when None).
    source_sr : int
        The rate of an array ``source`` (required then, ignored for files).

    Returns
    -------
    y : np.ndarray [shape=(n,), dtype=float32]
        The channels' mean, at ``sr``.

    Raises
    ------
    AudioError
        A file that is missing, empty, undecodable, silent of samples or not finite.
    ParameterError
        A malformed argument (an array without ``source_sr``, a bad shape ...).
    """
    return np.concatenate(list(stream(source, sr=sr, offset=offset, duration=duration, source_sr=source_sr)))


def duration_seconds(path: str | Path) -> float:
    """Length of an audio file in seconds, read from its header when it says; else counted from its packets."""
    path = check_file(path)
    try:
        info = sf.info(os.fsencode(path))
        if info.frames < UNKNOWN_FRAMES:
            return float(info.duration)
    except Exception:
        pass
    try:
        with _av_open(path) as c:
            if c.duration is not None:
                return c.duration / 1_000_000
            if not c.streams.audio or c.streams.audio[0].time_base is None:
                raise AudioError(f"{path}: cannot read its length (no audio stream with a time base)")
            s = c.streams.audio[0]
            # no length in any header (a stream written to a pipe): the packets' durations, read without decoding
            ticks = s.duration if s.duration is not None else sum(p.duration or 0 for p in c.demux(s))
            return float(ticks * s.time_base)
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(f"{path}: cannot read its length ({_short(e)})") from None


def find_audio(paths: list[str | Path]) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a list of audio files.

    Files named explicitly are kept whatever their extension (a bad one is
    reported when decoded); folders contribute their files with an audio
    extension, sorted. A name is a glob pattern only when no such path
    exists; a pattern that matches nothing is kept as given, so that it is
    reported as a missing file rather than dropped in silence.
    """
    found: list[Path] = []
    for item in paths:
        s = os.fsdecode(item) if isinstance(item, bytes) else str(item)
        # a path that exists is itself, even when its name has glob characters ("Song [Live].mp3")
        pattern = any(c in s for c in "*?[") and not os.path.exists(s)  # os.path's tests are False where the OS refuses
        candidates = ([Path(m) for m in sorted(glob.glob(s, recursive=True))] or [Path(s)]) if pattern else [Path(s)]
        for c in candidates:
            if os.path.isdir(c):
                inside = sorted(q for q in c.rglob("*") if q.suffix.lower() in AUDIO_EXTENSIONS and os.path.isfile(q))
                if not inside:  # named, yet contributes nothing: say so rather than drop it from the count in silence
                    log.warning("%s: a folder with no audio files (none named %s)", c, ", ".join(f"*{e}" for e in AUDIO_EXTENSIONS))
                found.extend(inside)
            else:
                found.append(c)  # one the OS refuses (a name over its length limit ...) is reported when it is read
    return found


#: How audio files begin (offset, bytes): what :func:`looks_like_audio` sniffs besides the extension.
_MAGIC = (
    (0, b"RIFF"),
    (0, b"RIFX"),
    (0, b"RF64"),
    (0, b"fLaC"),
    (0, b"OggS"),
    (0, b"ID3"),
    (0, b"FORM"),
    (4, b"ftyp"),
    (0, b".snd"),
    (0, b"\x30\x26\xb2\x75"),
)


def looks_like_audio(path: str | Path) -> bool:
    """Whether ``path`` is an existing file that holds audio, by its extension or its first bytes: an output that
    would overwrite it is refused (``tagstack tag -o song.mp3``)."""
    p = Path(path)
    if not os.path.isfile(p):
        return False
    if p.suffix.lower() in AUDIO_EXTENSIONS:
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    mpeg_frame = len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0
    return mpeg_frame or any(head[at : at + len(m)] == m for at, m in _MAGIC)
