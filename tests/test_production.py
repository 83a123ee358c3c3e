"""Production as augmentation: each effect does what its name says, measured on the output, and stays deterministic."""

import numpy as np
import pytest
from scipy.signal import sosfreqz

from tagstack.corpus import production as prod
from tagstack.errors import ParameterError

SR = 22050


def music(seconds: float = 6.0, seed: int = 0) -> np.ndarray:
    """Notes with gaps: a signal with dynamics, silence between notes and harmonics."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    y = np.zeros_like(t)
    for start in np.arange(0, seconds - 0.5, 0.5):
        f = rng.choice([220.0, 277.2, 329.6, 440.0])
        on = (t >= start) & (t < start + 0.3)
        y[on] += sum(np.sin(2 * np.pi * f * h * t[on]) / h for h in (1, 2, 3)) * np.exp(-4 * (t[on] - start))
    return (0.2 * y).astype(np.float32)


def test_parse_effects():
    assert prod.parse_effects("all") == prod.EFFECTS
    assert prod.parse_effects("") == prod.parse_effects("none") == ()
    assert prod.parse_effects("lossy, reverb,eq") == ("eq", "reverb", "lossy")  # chain order, not the order given
    with pytest.raises(ParameterError, match="unknown production effect.*chorus"):
        prod.parse_effects("reverb,chorus")


@pytest.mark.parametrize("kind,f,where", [("low", 150.0, 0.0), ("high", 5000.0, SR / 2), ("peak", 1000.0, 1000.0)])
def test_biquads_reach_their_gain(kind, f, where):
    """Shelves reach the gain at DC / Nyquist, the bell at its centre (Bristow-Johnson's definitions)."""
    sos = prod._biquad(kind, f, 5.0, 0.707 if kind != "peak" else 1.2, SR)[None]
    w, h = sosfreqz(sos, worN=[where], fs=SR)
    assert np.isclose(20 * np.log10(abs(h[0])), 5.0, atol=0.05)
    if kind != "peak":  # and leave the other end alone
        w, h = sosfreqz(sos, worN=[SR / 2 - where], fs=SR)
        assert abs(20 * np.log10(abs(h[0]))) < 0.3


def test_every_effect_keeps_length_range_and_is_seeded():
    y = music()
    for e in prod.EFFECTS + ("all",):
        effects = prod.parse_effects(e)
        a = prod.produce(y, SR, seed=[1], effects=effects)
        b = prod.produce(y, SR, seed=[1], effects=effects)
        c = prod.produce(y, SR, seed=[2], effects=effects)
        assert a.dtype == np.float32 and a.shape == y.shape and np.isfinite(a).all() and np.abs(a).max() <= 0.99 + 1e-6, e
        assert np.array_equal(a, b) and not np.array_equal(a, c), e
    assert not np.any(prod.produce(np.zeros(1000, np.float32), SR, seed=[0], effects=prod.EFFECTS))
    # each effect has its own stream: adding one leaves the settings of the others alone
    room = prod.produce(y, SR, seed=[4], effects=("reverb",))
    assert np.array_equal(prod.produce(room, SR, seed=[4], effects=("lossy",)), prod.produce(y, SR, seed=[4], effects=("reverb", "lossy")))


def test_reverb_adds_a_decaying_tail():
    y = np.zeros(3 * SR, np.float32)
    y[: SR // 10] = 0.3 * np.sin(2 * np.pi * 440 * np.arange(SR // 10) / SR)  # a 0.1 s note, then silence
    out = prod.reverb(y, SR, rng=np.random.default_rng(0))
    tail = out[SR // 10 + SR // 20 :]  # 50 ms after the sound stops
    assert np.sqrt(np.mean(tail[: SR // 5] ** 2)) > 1e-3  # the room still rings
    early, late = np.abs(tail[: SR // 5]).mean(), np.abs(tail[SR : SR + SR // 5]).mean()
    assert late < early


def test_compressor_narrows_the_dynamic_range_at_the_same_rms():
    y = music()
    y[: y.size // 2] *= 0.1  # a quiet half and a loud half
    out = prod.compress(y, SR, rng=np.random.default_rng(0))
    rms = lambda v: np.sqrt(np.mean(v**2))  # noqa: E731
    half = y.size // 2
    assert np.isclose(rms(out), rms(y), rtol=1e-3)
    assert rms(out[half:]) / rms(out[:half]) < rms(y[half:]) / rms(y[:half])


def test_noise_level_level_and_lossy_do_what_they_say():
    y = music()
    rms = lambda v: np.sqrt(np.mean(np.square(v, dtype=np.float64)))  # noqa: E731
    for seed in range(5):
        rng = np.random.default_rng(seed)
        noisy = prod.noise(y, SR, rng=rng)
        snr = 20 * np.log10(rms(y) / rms(noisy - y))
        assert 20 - 0.1 <= snr <= 45 + 0.1
        loud = prod.level(y, SR, rng=np.random.default_rng(seed))
        assert -30.5 <= 20 * np.log10(rms(loud)) <= -9.5 and np.abs(loud).max() < 1
    mp3 = prod.lossy(y, SR, rng=np.random.default_rng(0))
    assert mp3.shape == y.shape and np.corrcoef(y, mp3)[0, 1] > 0.9  # aligned: no codec delay left in
    assert not np.allclose(mp3, y, atol=1e-3)
