"""The one in-memory description of a dataset that every stage reads.

An adapter (MagnaTagATune, GTZAN, a user's manifest, the rendered corpus ...)
turns its files into a :class:`ClipSet`: audio paths, a 0/1 label matrix in
the order of the tag vocabulary, and a split name per clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError, ParameterError

SPLITS = ("train", "valid", "test")


@dataclass
class ClipSet:
    """Clips of one dataset.

    Attributes
    ----------
    name : str
        Dataset name (used in cache keys and reports).
    paths : list[str]
        Audio file of each clip (absolute, or relative to ``root``).
    labels : np.ndarray [shape=(clips, tags), dtype=float32]
        0/1 labels, or soft ones in [0, 1]; NaN where a clip's label for a
        tag is unknown (its source never annotated that tag). One-hot rows
        for single-label (``multiclass``) tasks, which allow no NaN.
    tags : list[str]
        Column names of ``labels``.
    splits : np.ndarray [shape=(clips,), dtype=str]
        ``train``, ``valid`` or ``test`` (empty string: in no split).
    task : str
        ``multilabel`` (tags) or ``multiclass`` (one genre per clip).
    groups : dict[str, str]
        Optional tag -> group name (instrument, style ...) for per-group reports.
    """

    name: str
    root: Path
    paths: list[str]
    labels: np.ndarray
    tags: list[str]
    splits: np.ndarray
    task: str = "multilabel"
    groups: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.labels = np.asarray(self.labels, dtype=np.float32)
        self.splits = np.asarray(self.splits, dtype=object)
        n = len(self.paths)
        if self.labels.shape != (n, len(self.tags)):
            raise DatasetError(f"{self.name}: labels {self.labels.shape} do not match {n} clips x {len(self.tags)} tags")
        if self.splits.shape != (n,):
            raise DatasetError(f"{self.name}: {self.splits.shape[0]} split names for {n} clips")
        if self.task not in ("multilabel", "multiclass"):
            raise ParameterError(f"task must be 'multilabel' or 'multiclass', got {self.task!r}")
        if self.task == "multiclass" and np.isnan(self.labels).any():
            raise DatasetError(f"{self.name}: a single-label (multiclass) dataset cannot have unknown (NaN) labels")

    def __len__(self) -> int:
        return len(self.paths)

    def audio_path(self, i: int) -> Path:
        """Where clip ``i``'s audio is: its path as listed, under :attr:`root` unless absolute."""
        p = Path(self.paths[i])
        return p if p.is_absolute() else self.root / p

    def indices(self, split: str) -> np.ndarray:
        """Clip indices of one split."""
        if split not in SPLITS:
            raise ParameterError(f"split must be one of {SPLITS}, got {split!r}")
        return np.flatnonzero(self.splits == split)

    def subset(self, keep: np.ndarray) -> ClipSet:
        """The clips at ``keep`` (indices or boolean mask), in order."""
        keep = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, dtype=int)
        return ClipSet(
            name=self.name,
            root=self.root,
            paths=[self.paths[i] for i in keep],
            labels=self.labels[keep],
            tags=list(self.tags),
            splits=self.splits[keep],
            task=self.task,
            groups=dict(self.groups),
        )

    def summary(self) -> str:
        """Clips per split and positives per tag per split, as a text table."""
        lines = [f"{self.name}: {len(self)} clips, {len(self.tags)} {'classes' if self.task == 'multiclass' else 'tags'}"]
        width = max([len(t) for t in self.tags] + [3])
        lines.append(f"{'tag':<{width}} " + " ".join(f"{s:>6}" for s in SPLITS))
        counts = {s: np.nansum(self.labels[self.indices(s)], axis=0) for s in SPLITS}
        lines.append(f"{'clips':<{width}} " + " ".join(f"{len(self.indices(s)):>6}" for s in SPLITS))
        for j, t in enumerate(self.tags):
            lines.append(f"{t:<{width}} " + " ".join(f"{int(counts[s][j]):>6}" for s in SPLITS))
        return "\n".join(lines)


def stratified_split(
    keys: list[str], strata: list[str], *, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, str]:
    """Assign each distinct ``key`` (a piece, an artist) to a split, stratified by its stratum.

    Every clip of one key lands in the same split, so no piece (or artist) is
    in two splits. Returns key -> split name.
    """
    if abs(sum(fractions) - 1) > 1e-6:
        raise ParameterError(f"split fractions must sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    by_stratum: dict[str, list[str]] = {}
    for k, s in zip(keys, strata):
        by_stratum.setdefault(s, [])
        if k not in by_stratum[s]:
            by_stratum[s].append(k)
    out: dict[str, str] = {}
    for s in sorted(by_stratum):
        ks = sorted(by_stratum[s])
        rng.shuffle(ks)
        n = len(ks)
        n_valid = max(1, int(round(fractions[1] * n))) if n >= 3 else 0
        n_test = max(1, int(round(fractions[2] * n))) if n >= 3 else 0
        for i, k in enumerate(ks):
            out[k] = "valid" if i < n_valid else "test" if i < n_valid + n_test else "train"
    return out
