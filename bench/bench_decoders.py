"""Decoding a 30 s stereo file to mono 22,050 Hz: tagstack's decoder beside the trusted libraries, same run.

For each format (mp3, ogg, flac, m4a) of the same 44.1 kHz stereo music it
times, per file and best of ``--repeats``:

- ``tagstack``: :func:`tagstack.audio.io.load` (libsndfile or PyAV, mean
  downmix, finiteness check, soxr HQ), what training and tagging use;
- ``libsndfile+soxr``: soundfile's read, numpy mean, soxr, nothing else;
- ``PyAV/FFmpeg``: FFmpeg decoding, downmixing and resampling everything;
- ``pedalboard``: Spotify's reader with its resampler, when installed;

and how far each output is from tagstack's (RMS level in dB and correlation),
so speed is never bought with a different signal.

    python bench/bench_decoders.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SR_IN, SR_OUT, SECONDS = 44100, 22050, 30.0


def music() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(SR_IN * SECONDS)) / SR_IN
    notes = sum(np.sin(2 * np.pi * f * t) * (0.5 + 0.5 * np.sin(2 * np.pi * r * t)) for f, r in ((220, 0.5), (277, 0.7), (330, 1.1)))
    left = 0.2 * notes + 0.02 * rng.standard_normal(t.size)
    right = 0.2 * np.roll(notes, 300) + 0.02 * rng.standard_normal(t.size)
    return np.stack([left, right], axis=1).astype(np.float32)


def write_m4a(path: Path, y: np.ndarray) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=SR_IN)
        s.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(y.T), format="fltp", layout="stereo")
        frame.sample_rate = SR_IN
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def libsndfile_soxr(path: Path) -> np.ndarray:
    import soxr

    x, sr = sf.read(path, dtype="float32", always_2d=True)
    return soxr.resample(x.mean(axis=1), sr, SR_OUT, quality="HQ")


def pyav_ffmpeg(path: Path) -> np.ndarray:
    import av

    out = []
    with av.open(str(path)) as c:
        rs = av.AudioResampler(format="flt", layout="mono", rate=SR_OUT)
        for frame in c.decode(c.streams.audio[0]):
            out += [f.to_ndarray().reshape(-1) for f in rs.resample(frame)]
        out += [f.to_ndarray().reshape(-1) for f in rs.resample(None)]
    return np.concatenate(out)


def pedalboard_reader(path: Path) -> np.ndarray:
    from pedalboard.io import AudioFile

    with AudioFile(str(path)).resampled_to(SR_OUT) as f:
        return f.read(f.frames).mean(axis=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--repeats", type=int, default=5, help="timed decodes per file and decoder; the best is kept (default: 5)")
    a = p.parse_args()
    from tagstack.audio.io import load

    decoders = {"tagstack": lambda f: load(f, sr=SR_OUT), "libsndfile+soxr": libsndfile_soxr, "PyAV/FFmpeg": pyav_ffmpeg}
    try:
        import pedalboard  # noqa: F401

        decoders["pedalboard"] = pedalboard_reader
    except ImportError:
        print("(pedalboard is not installed: pip install pedalboard to compare it too)")
    y = music()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {"mp3": tmp / "m.mp3", "ogg": tmp / "m.ogg", "flac": tmp / "m.flac"}
        sf.write(files["mp3"], y, SR_IN, format="MP3")
        sf.write(files["ogg"], y, SR_IN, format="OGG", subtype="VORBIS")
        sf.write(files["flac"], y, SR_IN, format="FLAC")
        files["m4a"] = tmp / "m.m4a"
        write_m4a(files["m4a"], y)
        print(f"{'format':<6} {'decoder':<16} {'ms / 30 s file':>14} {'vs tagstack':>12} {'level (dB)':>11} {'correlation':>12}")
        for fmt, path in files.items():
            ref = load(path, sr=SR_OUT)
            times = {}
            for name, fn in decoders.items():
                try:
                    out = fn(path)
                except Exception as e:  # a library that cannot read this format
                    print(f"{fmt:<6} {name:<16} {'cannot: ' + type(e).__name__:>14}")
                    continue
                best = min(_time(fn, path) for _ in range(a.repeats))
                times[name] = best
                n = min(len(out), len(ref))
                level = 10 * np.log10(np.mean(out[:n] ** 2) / np.mean(ref[:n] ** 2))
                lag = _best_lag(out[:n], ref[:n])
                corr = np.corrcoef(np.roll(out[:n], -lag), ref[:n])[0, 1]
                ratio = best / times["tagstack"]
                print(f"{fmt:<6} {name:<16} {best * 1000:>12.1f}   {ratio:>10.2f}x {level:>+11.2f} {corr:>12.4f}")


def _time(fn, path) -> float:
    t = time.perf_counter()
    fn(path)
    return time.perf_counter() - t


def _best_lag(a: np.ndarray, b: np.ndarray, max_lag: int = 2048) -> int:
    """The shift (samples) that best aligns ``a`` to ``b`` (codecs add delays)."""
    from scipy.signal import correlate

    start, n = SR_OUT, 8192
    c = correlate(a[start - max_lag : start + n + max_lag], b[start : start + n], mode="valid")
    return int(np.argmax(c)) - max_lag


if __name__ == "__main__":
    main()
