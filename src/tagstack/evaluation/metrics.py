"""Metrics, computed with scikit-learn: the numbers every stage, run, reproduction and ``tagstack evaluate`` reports.

Tagging is scored with macro ROC-AUC and PR-AUC (average precision) over the
tags that have at least one positive and one negative clip in the evaluated
set (an AUC is undefined otherwise); the per-tag values are kept, with NaN for
the tags left out. A label may be unknown (NaN: the clip was never annotated
for that tag, e.g. a mood on a clip from a source without moods); each tag is
then scored on the clips that know it. Single-label tasks also get accuracy.
Bootstrap confidence intervals resample clips with replacement.
Per-group means (:func:`group_metrics`) and what a model file records of its
test scores (:func:`test_summary`) are made from these per-tag values.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from ..errors import ParameterError

if TYPE_CHECKING:  # only for the annotation: the metrics stay importable without the dataset adapters
    from ..datasets import ClipSet


def _check(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 2:
        raise ParameterError(f"y_true and y_score must both be (clips, tags); got {y_true.shape} and {y_score.shape}")
    return y_true, y_score


def binary_targets(labels: np.ndarray) -> np.ndarray:
    """0/1 targets from labels that may be soft (present from 0.5), keeping unknown (NaN) labels NaN."""
    labels = np.asarray(labels, dtype=np.float32)
    return np.where(np.isnan(labels), np.nan, labels >= 0.5).astype(np.float32)


def per_tag_scores(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, np.ndarray]:
    """ROC-AUC and average precision of every tag on the clips that know it (NaN where a tag has one class only)."""
    y_true, y_score = _check(y_true, y_score)
    n = y_true.shape[1]
    roc = np.full(n, np.nan)
    pr = np.full(n, np.nan)
    for j in range(n):
        known = ~np.isnan(y_true[:, j]) if y_true.dtype.kind == "f" else slice(None)
        t, s = y_true[known, j], y_score[known, j]
        pos = t.sum()
        if 0 < pos < len(t):
            roc[j] = roc_auc_score(t, s)
            pr[j] = average_precision_score(t, s)
    return {"roc_auc": roc, "pr_auc": pr}


def tagging_metrics(y_true: np.ndarray, y_score: np.ndarray) -> dict:
    """Macro ROC-AUC, macro PR-AUC, the number of tags evaluated, and per-tag values."""
    per_tag = per_tag_scores(y_true, y_score)
    valid = ~np.isnan(per_tag["roc_auc"])
    if not valid.any():
        raise ParameterError("no tag has both positive and negative clips in the evaluated set")
    return {
        "roc_auc": float(np.mean(per_tag["roc_auc"][valid])),
        "pr_auc": float(np.mean(per_tag["pr_auc"][valid])),
        "n_tags_evaluated": int(valid.sum()),
        "per_tag": {k: v.tolist() for k, v in per_tag.items()},
    }


def accuracy(labels: np.ndarray, y_score: np.ndarray) -> float:
    """Share of clips whose highest-scoring class is the true class (``labels`` are class indices)."""
    return float(np.mean(np.argmax(y_score, axis=1) == np.asarray(labels)))


def evaluate(y_true: np.ndarray, y_score: np.ndarray, *, task: str = "multilabel") -> dict:
    """All metrics of a task; ``y_true`` is a 0/1 matrix (one-hot for multi-class), NaN where a label is unknown."""
    out = tagging_metrics(y_true, y_score)
    if task == "multiclass":
        out["accuracy"] = accuracy(np.argmax(y_true, axis=1), y_score)
    return out


def bootstrap_ci(y_true: np.ndarray, y_score: np.ndarray, *, n_boot: int = 200, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of macro ROC-AUC over clips.

    Each resample's macro ROC-AUC is computed from ranks (the Mann-Whitney
    statistic, ties averaged), which equals scikit-learn's ``roc_auc_score``
    per tag (tested) and is fast enough for hundreds of resamples of hundreds of tags.
    """
    y_true, y_score = _check(y_true, y_score)
    y_true = binary_targets(y_true)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y_true), len(y_true))
        v = macro_roc_auc(y_true[idx], y_score[idx])
        if v == v:
            values.append(v)
    if not values:
        return (math.nan, math.nan)
    lo, hi = np.percentile(values, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


def _label_counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(known, positive, positives per tag, negatives per tag)``: a label from 0.5 is a positive, NaN is unknown."""
    labels = np.asarray(labels, dtype=np.float64)
    known = ~np.isnan(labels)
    y = known & (labels >= 0.5)
    pos = y.sum(axis=0)
    return known, y, pos, known.sum(axis=0) - pos


def scorable_tags(labels: np.ndarray) -> np.ndarray:
    """Which tags have both a positive (from 0.5) and a negative clip among the known labels: those that can be scored."""
    _, _, pos, neg = _label_counts(labels)
    return (pos > 0) & (neg > 0)


def macro_roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Macro ROC-AUC over the tags with both classes, from ranks; NaN when no tag has both.

    Unknown labels (NaN) take no part: their scores are ranked above every
    score (+inf), which leaves the ranks of the known clips as if they were
    ranked alone.
    """
    from scipy.stats import rankdata

    known, y, pos, neg = _label_counts(y_true)
    ok = (pos > 0) & (neg > 0)  # scorable_tags, from the counts already made
    if not ok.any():
        return math.nan
    ranks = rankdata(np.where(known, y_score, np.inf)[:, ok], axis=0)
    u = (ranks * y[:, ok]).sum(axis=0) - pos[ok] * (pos[ok] + 1) / 2
    return float(np.mean(u / (pos[ok] * neg[ok])))


def group_metrics(clips: ClipSet, per_tag: list[float]) -> dict[str, float]:
    """Mean per-tag ROC-AUC of each tag group (instrument, style ...)."""
    by: dict[str, list[float]] = {}
    for t, v in zip(clips.tags, per_tag):
        if t in clips.groups and v is not None and v == v:
            by.setdefault(clips.groups[t], []).append(v)
    return {g: float(np.mean(v)) for g, v in sorted(by.items())}


def test_summary(tags: list[str], g: dict) -> dict:
    """The test scores a model file records: macro and per-tag ROC-AUC and PR-AUC."""
    return {
        "roc_auc": g["roc_auc"],
        "pr_auc": g["pr_auc"],
        "per_tag_roc_auc": dict(zip(tags, g["per_tag"]["roc_auc"])),
        "per_tag_pr_auc": dict(zip(tags, g["per_tag"]["pr_auc"])),
    }
