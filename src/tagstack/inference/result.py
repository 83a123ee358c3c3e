"""What tagging one file gives (:class:`Result`), and choosing tags from it.

Its own module so that everything that hands results on (the service, batch
jobs, Ray workers) can name the type without the model-loading
:class:`~.tagger.Tagger`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..checks import check_selection
from ..tags import UNGROUPED


@dataclass
class Result:
    """What tagging one file gives.

    Attributes
    ----------
    path : str
        The file (``"<array>"`` for samples), or the name given for it.
    tags : list[str]
        The model's tags (empty when only embedding).
    probs : np.ndarray [shape=(n_tags,)]
        The whole file's tag probabilities, in the order of ``tags``.
    seconds : float
        The audio's length.
    embedding : np.ndarray [shape=(n_features,)]
        Every layer of every scale, averaged over every segment of the file.
    taggram : np.ndarray [shape=(n_windows, n_tags)], optional
        Tag probabilities of each clip-long window (when asked for).
    window_starts : np.ndarray [shape=(n_windows,)], optional
        Each taggram window's start, in seconds.
    groups : dict[str, str]
        Tag -> tag group, from the model file (:meth:`group_of`).
    """

    path: str
    tags: list[str]
    probs: np.ndarray  # (n_tags,) whole-file probabilities
    seconds: float
    embedding: np.ndarray | None = None  # (n_features,) all layers and scales
    taggram: np.ndarray | None = None  # (windows, n_tags)
    window_starts: np.ndarray | None = None  # seconds
    groups: dict[str, str] = field(default_factory=dict)  # tag -> group, from the model file

    def top(self, k: int | None = None, threshold: float | None = None, *, per_group: bool = False) -> list[tuple[str, float]]:
        """Tags sorted by probability: the ``k`` best (all when None or 0), or, given a ``threshold``, all at or above it (``k`` is then not used).

        With ``per_group`` the selection is made within each tag group of the
        model (``groups``; tags without one form a group of their own), so that
        a large vocabulary (say, 129 moods) cannot crowd out a small one
        (genres, instruments). Groups come in the order of their first tag in
        the vocabulary; :meth:`group_of` names each tag's group.
        """
        check_selection(k, threshold)
        order = np.argsort(-self.probs, kind="stable")
        pairs = [(self.tags[i], float(self.probs[i])) for i in order]
        if threshold is not None:
            pairs, k = [p for p in pairs if p[1] >= threshold], None
        if not per_group:
            return pairs[:k] if k else pairs
        by_group: dict[str, list[tuple[str, float]]] = {self.group_of(t): [] for t in self.tags}
        for t, p in pairs:
            by_group[self.group_of(t)].append((t, p))
        return [pair for chosen in by_group.values() for pair in (chosen[:k] if k else chosen)]

    def group_of(self, tag: str) -> str:
        """The group of ``tag`` in the model's vocabulary (``UNGROUPED``, "other", for a tag without one)."""
        return self.groups.get(tag, UNGROUPED)
