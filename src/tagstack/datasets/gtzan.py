"""GTZAN: ``genres/<genre>/<genre>.NNNNN.au`` (or ``.wav``), ten genres, single label.

Splits:

- ``fault-filtered`` (default): Kereliuk et al.'s artist-filtered lists
  ``train_filtered.txt``/``valid_filtered.txt``/``test_filtered.txt`` (lines
  such as ``blues/blues.00012.wav``; the label is the folder), 443 / 197 / 290.
- ``kfold-K-N``: stratified ``N``-fold cross-validation with fold ``K`` (0-based)
  as test, fold ``K+1`` as validation and the rest as training (seeded).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import DatasetError, ParameterError
from .files import find_file, read_lines
from .base import ClipSet

GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")


def _audio_root(root: Path) -> Path:
    return root / "genres" if (root / "genres").is_dir() else root


def _resolve(audio_root: Path, rel: str) -> str:
    """The listed path, or the same clip with the other extension (.au/.wav) when that is what exists."""
    p = Path(rel)
    for candidate in (p, p.with_suffix(".au"), p.with_suffix(".wav")):
        if (audio_root / candidate).exists():
            return str(candidate)
    return rel  # missing audio is reported by the mel cache, clip by clip


def load_gtzan(root: Path, split: str = "fault-filtered", *, split_dir: str | Path = "", seed: int = 0) -> ClipSet:
    """Adapter: GTZAN's ten genres (single-label) under ``root``, split by Kereliuk et al.'s fault-filtered lists
    (from ``split_dir`` or ``root``) or into stratified folds (``kfold-K-N``: fold K tests, fold K+1 validates, seeded)."""
    split = split or "fault-filtered"
    audio_root = _audio_root(root)
    if split == "fault-filtered":
        paths, names = [], []
        for name, file in (("train", "train_filtered.txt"), ("valid", "valid_filtered.txt"), ("test", "test_filtered.txt")):
            lines = read_lines(find_file(file, split_dir, root))
            paths += [_resolve(audio_root, l) for l in lines]
            names += [name] * len(lines)
    else:
        m = re.fullmatch(r"kfold-(\d+)-(\d+)", split)
        if not m:
            raise ParameterError(f"GTZAN split must be 'fault-filtered' or 'kfold-K-N', got {split!r}")
        k, n = int(m.group(1)), int(m.group(2))
        if not 0 <= k < n or n < 3:
            raise ParameterError(f"kfold-K-N needs N >= 3 and 0 <= K < N, got {split!r}")
        files = sorted(
            str(f.relative_to(audio_root)) for g in GENRES for f in (audio_root / g).glob(f"{g}.*") if f.suffix in (".au", ".wav")
        )
        if not files:
            raise DatasetError(f"{audio_root}: no GTZAN audio (genres/<genre>/<genre>.NNNNN.au)")
        from sklearn.model_selection import StratifiedKFold

        y = [f.split("/")[0] for f in files]
        folds = np.zeros(len(files), dtype=int)
        for i, (_, idx) in enumerate(StratifiedKFold(n_splits=n, shuffle=True, random_state=seed).split(files, y)):
            folds[idx] = i
        names = ["test" if f == k else "valid" if f == (k + 1) % n else "train" for f in folds]
        paths = files
    genre = [p.split("/")[0] for p in paths]
    unknown = sorted(set(genre) - set(GENRES))
    if unknown:
        raise DatasetError(f"GTZAN split lists unknown genres {unknown}")
    labels = np.eye(len(GENRES), dtype=np.float32)[[GENRES.index(g) for g in genre]]
    return ClipSet(
        name=f"gtzan-{split}",
        root=audio_root,
        paths=paths,
        labels=labels,
        tags=list(GENRES),
        splits=np.array(names, dtype=object),
        task="multiclass",
    )
