"""Scoring a trained model on a labelled dataset: the API behind ``tagstack evaluate``.

A shipped model, or one trained elsewhere, is judged on the user's own
labelled audio: every clip of a split is tagged through the same
:class:`~tagstack.inference.tagger.Tagger` as ``tagstack tag`` (whole files,
all their windows), and the model's tags are matched to the dataset's by
name. Macro ROC-AUC and PR-AUC are computed over the shared tags that have
both classes in the split, with a bootstrap interval over clips, so a model
can be compared with another on exactly the same clips and tags.
:func:`~tagstack.report.evaluation_text` shows the result to a person.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..datasets import load_dataset
from ..errors import ParameterError, TagstackError
from ..inference.tagger import Tagger
from ..models.tagging_model import require_tagger
from ..progress import progress
from .metrics import binary_targets, bootstrap_ci, tagging_metrics


def tag_key(tag: str) -> str:
    """A tag's name for matching across vocabularies: lower case, letters and digits only (female vocal = femaleVocal),
    without a category prefix (MTG-Jamendo's ``genre---rock`` = rock)."""
    return re.sub(r"[^0-9a-z]", "", tag.split("---")[-1].lower())


def evaluate_model(
    model: str | Path | None,
    dataset: str,
    *,
    root: str | Path,
    scheme: str = "",
    subset: str = "test",
    device: str = "auto",
    n_boot: int = 200,
    tagger: Tagger | None = None,
    **options: object,
) -> dict:
    """Score ``model`` on the ``subset`` (test, valid, train) of a labelled dataset's split ``scheme`` (the
    adapter's default when empty), over the tags both share by name (compared by :func:`tag_key`).

    Returns ``clips`` (scored), ``skipped`` (``[path, reason]`` of files that
    could not be used), ``tags`` (shared tags, in the dataset's order),
    ``roc_auc``, ``pr_auc``, ``roc_auc_ci`` (95% bootstrap over clips),
    ``n_tags_evaluated`` and ``per_tag`` (tag -> ROC-AUC and PR-AUC, None where
    the split has one class only). Soft labels count as present from 0.5;
    unknown labels (NaN) are left out of their tag's scores.
    ``options`` go to the dataset adapter (``split_dir``, ``merge``).

    Parameters
    ----------
    model : str or Path, optional
        A model file or a shipped model's name (default: the shipped default model); not used with ``tagger``.
    dataset : str
        The dataset's format, as :func:`~tagstack.datasets.load_dataset` names it (``"manifest"``, ``"mtat"`` ...).
    root : str or Path
        The dataset's folder (or manifest file).
    scheme : str
        The split scheme (empty: the format's default).
    subset : {"test", "valid", "train"}
        Which part of the split to score.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:0"`` ...
    n_boot : int
        Bootstrap resamples for the interval.
    tagger : Tagger, optional
        A loaded tagger to use instead of loading ``model``.
    **options
        The dataset format's options (``split_dir``, ``merge``).

    Returns
    -------
    result : dict
        ``dataset``, ``root``, ``scheme``, ``subset``, ``clips`` (scored), ``skipped``, ``tags`` (shared),
        ``roc_auc``, ``pr_auc``, ``roc_auc_ci``, ``n_tags_evaluated`` and ``per_tag``, as above;
        :func:`~tagstack.report.evaluation_text` summarises it.

    Raises
    ------
    ParameterError
        No tag name in common, an empty subset, no usable clip, or a model that cannot tag.
    """
    clips = load_dataset(dataset, root, split=scheme, **{k: v for k, v in options.items() if v})
    rows = clips.indices(subset)
    if not len(rows):
        raise ParameterError(f"{root}: the {subset!r} part of the split is empty")
    tagger = tagger or Tagger(model, device=device)
    require_tagger(tagger.model)
    model_keys = {tag_key(t): j for j, t in enumerate(tagger.tags)}
    shared = [t for t in clips.tags if tag_key(t) in model_keys]
    if not shared:
        raise ParameterError(
            f"the model's tags and the dataset's have no name in common "
            f"(model: {', '.join(tagger.tags[:5])} ...; dataset: {', '.join(clips.tags[:5])} ...)"
        )
    model_cols = [model_keys[tag_key(t)] for t in shared]
    data_cols = [clips.tags.index(t) for t in shared]
    files = [clips.audio_path(i) for i in rows]
    probs, kept, skipped = [], [], []
    results = tagger.predict_many(files)
    for i, f, r in progress(zip(rows, files, results), total=len(files), desc="evaluate", unit="clip"):
        if isinstance(r, TagstackError):
            skipped.append([str(f), str(r)])
            continue
        probs.append(r.probs[model_cols])
        kept.append(i)
    if not kept:
        raise ParameterError(f"{root}: no clip of the {subset!r} part could be used")
    y = binary_targets(clips.labels[np.asarray(kept)][:, data_cols])
    scores = np.stack(probs)
    metrics = tagging_metrics(y, scores)
    per_tag = {
        t: {"roc_auc": _finite(roc), "pr_auc": _finite(pr)}
        for t, roc, pr in zip(shared, metrics["per_tag"]["roc_auc"], metrics["per_tag"]["pr_auc"])
    }
    return {
        "dataset": dataset,
        "root": str(root),
        "scheme": scheme,
        "subset": subset,
        "clips": len(kept),
        "skipped": skipped,
        "tags": shared,
        "roc_auc": metrics["roc_auc"],
        "pr_auc": metrics["pr_auc"],
        "roc_auc_ci": [_finite(v) for v in bootstrap_ci(y, scores, n_boot=n_boot)],
        "n_tags_evaluated": metrics["n_tags_evaluated"],
        "per_tag": per_tag,
    }


def _finite(v: float) -> float | None:
    return None if v != v else float(v)


__all__ = ["evaluate_model", "tag_key"]
