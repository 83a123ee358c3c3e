"""Tiny generated audio datasets whose tags are learnable (no network, no real data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from tagstack.config import FrontEndConfig
from tagstack.datasets import ClipSet, write_manifest

SR = 22050
#: Short clips keep the tests fast: 216 frames hold every paper scale once.
TEST_FRONTEND = FrontEndConfig(clip_seconds=5.0, n_frames=216)
TAGS = ["low", "high", "noise", "pulse"]


def render(tags: set[str], seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A clip whose content follows its tags: low/high tones, noise, a click train."""
    t = np.arange(int(seconds * SR)) / SR
    y = 0.01 * rng.standard_normal(t.size)
    if "low" in tags:
        y += 0.3 * np.sin(2 * np.pi * rng.uniform(100, 200) * t)
    if "high" in tags:
        y += 0.3 * np.sin(2 * np.pi * rng.uniform(2500, 4000) * t)
    if "noise" in tags:
        y += 0.2 * rng.standard_normal(t.size)
    if "pulse" in tags:
        period = int(SR * rng.uniform(0.2, 0.3))
        y[::period] += 0.9
    return (y / max(1.0, np.abs(y).max())).astype(np.float32)


def make_dataset(root: Path, *, n_clips: int = 48, seconds: float = 5.0, seed: int = 0, fmt: str = "wav") -> ClipSet:
    """Write ``n_clips`` clips and a manifest under ``root``; returns the ClipSet."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths, labels, splits = [], [], []
    for i in range(n_clips):
        row = rng.random(len(TAGS)) < 0.5
        if not row.any():
            row[i % len(TAGS)] = True
        tags = {t for t, on in zip(TAGS, row) if on}
        name = f"clip{i:03d}.{fmt}"
        sf.write(root / name, render(tags, seconds, rng), SR)
        paths.append(name)
        labels.append(row.astype(np.float32))
        splits.append("train" if i % 4 < 2 else ("valid" if i % 4 == 2 else "test"))
    clips = ClipSet(name="synth", root=root, paths=paths, labels=np.array(labels), tags=TAGS, splits=np.array(splits, dtype=object))
    write_manifest(clips, root / "manifest.csv")
    return clips


def clip_mels(waveforms: list[np.ndarray], *, config: FrontEndConfig | None = None, batch_size: int = 16) -> np.ndarray:
    """The reference log-mel frames ``(clips, n_frames, n_mels)`` of mono signals, each fitted to one clip, on the CPU:
    what the mel cache must store for them."""
    import torch

    from tagstack.audio.frontend import ClipMel, fit_clip

    module = ClipMel(config)
    clips = [fit_clip(np.asarray(w, dtype=np.float32), module.config.clip_samples) for w in waveforms]
    with torch.inference_mode():
        out = [module(torch.from_numpy(np.stack(clips[i : i + batch_size]))).numpy() for i in range(0, len(clips), batch_size)]
    return np.concatenate(out)
