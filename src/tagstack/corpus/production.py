"""Production as augmentation: make score-rendered clips sound more like records.

A General-MIDI rendering is dry, evenly balanced, noiseless and at one
level; a record has been through a room, an equaliser, a compressor, a
noisy chain, a level decision and a lossy codec. Effects run in a fixed
order, the order of a production chain: ``eq``, ``compress``, ``reverb``,
``noise``, ``level``, ``lossy``. Each draws its settings from a random
stream of its own (seeded by the caller), so a build stays deterministic and
an effect's settings do not change when another effect is switched on.

Whether an effect helps is measured, not assumed: a corpus rendered with it
trains CNNs whose features are probed on real recordings
(``bench/bench_production.py``; results in ``docs/transfer/production/``:
the whole chain did not improve transfer, a larger soundfont did).
"""

from __future__ import annotations

import io

import numpy as np

from ..errors import ParameterError

#: Every effect, in the order they are applied.
EFFECTS = ("eq", "compress", "reverb", "noise", "level", "lossy")


def parse_choice(text: str, choices: tuple[str, ...], *, what: str) -> tuple[str, ...]:
    """``"b,a"`` -> the named ``choices`` in their own order; ``"all"`` -> every one; ``""`` or ``"none"`` -> none.

    An unknown name is a :class:`ParameterError` naming it and ``what`` was asked for.
    """
    text = text.strip().lower()
    if text in ("", "none"):
        return ()
    if text == "all":
        return choices
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = sorted(names - set(choices))
    if unknown:
        raise ParameterError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(choices)} or 'all'")
    return tuple(c for c in choices if c in names)


def parse_effects(text: str) -> tuple[str, ...]:
    """``"reverb,eq"`` -> the effects in chain order; ``"all"`` -> every effect; ``""`` or ``"none"`` -> none."""
    return parse_choice(text, EFFECTS, what="production effect(s)")


def _rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))) + 1e-12


def _biquad(kind: str, f0: float, gain_db: float, q: float, sr: int) -> np.ndarray:
    """One second-order section (b0 b1 b2 a0 a1 a2, normalised) of R. Bristow-Johnson's shelf and peaking filters."""
    a = 10 ** (gain_db / 40)
    w = 2 * np.pi * f0 / sr
    cw, alpha = np.cos(w), np.sin(w) / (2 * q)
    if kind == "peak":
        b = [1 + alpha * a, -2 * cw, 1 - alpha * a]
        den = [1 + alpha / a, -2 * cw, 1 - alpha / a]
    else:
        s = 2 * np.sqrt(a) * alpha
        sign = 1 if kind == "low" else -1
        b = [
            a * ((a + 1) - sign * (a - 1) * cw + s),
            sign * 2 * a * ((a - 1) - sign * (a + 1) * cw),
            a * ((a + 1) - sign * (a - 1) * cw - s),
        ]
        den = [(a + 1) + sign * (a - 1) * cw + s, -sign * 2 * ((a - 1) + sign * (a + 1) * cw), (a + 1) + sign * (a - 1) * cw - s]
    return np.array(b + den) / den[0]


def eq(y: np.ndarray, sr: int, *, rng: np.random.Generator) -> np.ndarray:
    """A low shelf, a high shelf (each +-6 dB) and one mid-band bell (+-4 dB): a mixing engineer's tonal balance."""
    from scipy.signal import sosfilt

    sos = np.stack(
        [
            _biquad("low", rng.uniform(80, 250), rng.uniform(-6, 6), 0.707, sr),
            _biquad("high", rng.uniform(3000, 8000), rng.uniform(-6, 6), 0.707, sr),
            _biquad("peak", rng.uniform(300, 3000), rng.uniform(-4, 4), rng.uniform(0.7, 2.0), sr),
        ]
    )
    return sosfilt(sos, y).astype(np.float32)


def compress(y: np.ndarray, sr: int, *, rng: np.random.Generator) -> np.ndarray:
    """A feed-forward compressor on a smoothed power envelope (ratio 2-6, threshold 6-18 dB under the clip's peak level), RMS kept."""
    from scipy.signal import lfilter

    tau = rng.uniform(0.01, 0.08)  # seconds
    k = np.exp(-1 / (tau * sr))
    env = lfilter([1 - k], [1, -k], np.square(y, dtype=np.float64))
    level = 10 * np.log10(env + 1e-10)
    threshold = level.max() - rng.uniform(6, 18)
    ratio = rng.uniform(2, 6)
    gain_db = -np.maximum(level - threshold, 0) * (1 - 1 / ratio)
    out = y * 10 ** (gain_db / 20)
    return (out * (_rms(y) / _rms(out))).astype(np.float32)


def reverb(y: np.ndarray, sr: int, *, rng: np.random.Generator) -> np.ndarray:
    """A room: exponentially decaying noise (RT60 0.3-2 s, low-passed at 2-8 kHz) after a 5-30 ms pre-delay, mixed 10-45% wet."""
    from scipy.signal import fftconvolve, lfilter

    rt60 = rng.uniform(0.3, 2.0)
    n = int(min(rt60, 2.0) * sr)
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.91 * t / rt60)
    k = np.exp(-2 * np.pi * rng.uniform(2000, 8000) / sr)  # air absorbs highs: a one-pole low-pass on the tail
    tail = lfilter([1 - k], [1, -k], tail)
    ir = np.concatenate([np.zeros(int(rng.uniform(0.005, 0.03) * sr)), tail])
    wet = fftconvolve(y, ir)[: y.size]
    mix = rng.uniform(0.1, 0.45)
    return ((1 - mix) * y + mix * wet * (_rms(y) / _rms(wet))).astype(np.float32)


def noise(y: np.ndarray, sr: int, *, rng: np.random.Generator) -> np.ndarray:
    """Pink noise (power falling 3 dB per octave) at a signal-to-noise ratio of 20-45 dB: hiss, hum floor, tape."""
    spec = np.fft.rfft(rng.standard_normal(y.size))
    f = np.fft.rfftfreq(y.size, 1 / sr)
    spec /= np.sqrt(np.maximum(f, 20.0))
    spec[0] = 0.0  # no DC offset
    n = np.fft.irfft(spec, y.size)
    snr_db = rng.uniform(20, 45)
    return (y + n * (_rms(y) / _rms(n)) * 10 ** (-snr_db / 20)).astype(np.float32)


def level(y: np.ndarray, sr: int, *, rng: np.random.Generator) -> np.ndarray:
    """A level between quiet and mastered-loud (RMS -30 to -10 dBFS); peaks above 0.9 (-0.9 dBFS) are soft-limited below 1."""
    out = y * (10 ** (rng.uniform(-30, -10) / 20) / _rms(y))
    over = np.abs(out) > 0.9
    out[over] = np.sign(out[over]) * (0.9 + 0.0999 * np.tanh((np.abs(out[over]) - 0.9) / 0.0999))
    return out.astype(np.float32)


def lossy(y: np.ndarray, sr: int, *, rng: np.random.Generator) -> np.ndarray:
    """An MP3 round trip (libsndfile's LAME, a random compression level from good to poor), trimmed to the input's length."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(y, -1, 1), sr, format="MP3", subtype="MPEG_LAYER_III", compression_level=float(rng.uniform(0.3, 0.9)))
    buf.seek(0)
    out = sf.read(buf, dtype="float32")[0]
    return np.pad(out[: y.size], (0, max(0, y.size - out.size)))


_APPLY = {"eq": eq, "compress": compress, "reverb": reverb, "noise": noise, "level": level, "lossy": lossy}


def check_support(effects: tuple[str, ...]) -> None:
    """Fail early, in one line, when this machine cannot apply ``effects`` (``lossy`` needs libsndfile with MP3)."""
    import soundfile as sf

    if "lossy" in effects and "MP3" not in sf.available_formats():
        raise ParameterError(f"the 'lossy' effect needs libsndfile >= 1.1 with MP3 support; this one is {sf.__libsndfile_version__}")


def produce(y: np.ndarray, sr: int, *, seed: list[int], effects: tuple[str, ...]) -> np.ndarray:
    """Run ``y`` (mono float32) through ``effects`` in chain order; silence stays silence, the result stays in [-1, 1].

    Effect ``k`` of :data:`EFFECTS` draws from ``numpy.random.default_rng([*seed, k])``.
    """
    if not np.any(y):
        return y
    for k, name in enumerate(EFFECTS):
        if name in effects:
            y = _APPLY[name](y, sr, rng=np.random.default_rng([*seed, k]))
    peak = float(np.abs(y).max())
    return (y * (0.99 / peak) if peak > 0.99 else y).astype(np.float32)


__all__ = ["EFFECTS", "check_support", "parse_effects", "produce"]
