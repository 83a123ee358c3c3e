"""A deterministic, music-like test signal (numpy only), shared by the tests and by the scripts that compute
reference outputs with the original frameworks (``bench/reference_pretrained.py``), so both read the same samples.

It is a formula, not a random draw, so every numpy version gives the same samples: a bass line, a chord
of three harmonic tones with vibrato, a hi-hat of filtered clicks and a slow amplitude envelope, at any rate.
"""

from __future__ import annotations

import numpy as np


def reference_music(sr: int, seconds: float = 8.0) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at ``sr`` Hz, ``seconds`` long."""
    n = int(round(sr * seconds))
    t = np.arange(n, dtype=np.float64) / sr
    beat = 0.5  # seconds per note
    step = np.floor(t / beat).astype(np.int64)
    phase_in_note = (t - step * beat) / beat
    bass_notes = np.array([55.0, 65.41, 73.42, 49.0])
    bass = np.sin(2 * np.pi * bass_notes[step % 4] * t) * np.exp(-3.0 * phase_in_note)
    chord = np.zeros(n)
    for k, f in enumerate((220.0, 277.18, 329.63)):
        vibrato = 1.0 + 0.004 * np.sin(2 * np.pi * 5.5 * t + k)
        for h in range(1, 6):
            chord += np.sin(2 * np.pi * f * (1 + 0.5 * (step % 2)) * h * vibrato * t + h * k) / h**1.5
    clicks = np.zeros(n)
    period = int(round(sr * beat / 2))
    clicks[::period] = 1.0
    kernel = np.sin(np.arange(64) * 2.7) * np.exp(-np.arange(64) / 12.0)
    hats = np.convolve(clicks, kernel)[:n]
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * t / seconds) ** 2
    y = envelope * (0.5 * bass + 0.15 * chord + 0.3 * hats)
    return (y / np.abs(y).max() * 0.8).astype(np.float32)
