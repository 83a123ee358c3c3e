"""Dataset adapters: each turns a dataset's published files into a :class:`ClipSet`.

:data:`DATASETS` is the registry: every adapter declares the options it
takes, and :func:`load_dataset` refuses any other, so a flag that an adapter
would ignore (``--merge-synonyms`` for GTZAN, say) is an error, not a no-op.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

from ..errors import DatasetError, ParameterError
from .base import SPLITS, ClipSet, stratified_split
from .manifest import read_folders, read_manifest, write_manifest


@dataclass(frozen=True)
class Adapter:
    """One dataset format: where its loader lives, what it is, which options it takes."""

    module: str
    function: str
    description: str
    options: frozenset[str] = frozenset()
    splits: str = ""  # the split schemes it takes, as a regular expression ("": none, the data's own split decides)

    @property
    def loader(self) -> Callable[..., ClipSet]:
        """The adapter's function ``(root, split, **options) -> ClipSet``, imported on first use."""
        return getattr(importlib.import_module(f".{self.module}", __name__), self.function)


#: name -> adapter; options besides ``root`` and ``split``.
DATASETS: dict[str, Adapter] = {
    "corpus": Adapter("corpus", "load_corpus", "the embedded score-rendered corpus (tagstack corpus build)"),
    "mtat": Adapter(
        "mtat", "load_mtat", "MagnaTagATune top-50; --split lee (the paper's) or full", frozenset({"split_dir", "merge"}), "lee|full"
    ),
    "msd": Adapter(
        "msd", "load_msd", "Million Song Dataset, Last.fm top-50, Lee's split (7digital previews)", frozenset({"split_dir"}), "lee"
    ),
    "tagtraum": Adapter("msd", "load_tagtraum", "Tagtraum CD2C genres on MSD, Lee's split (single-label)", frozenset({"split_dir"}), "lee"),
    "gtzan": Adapter(
        "gtzan",
        "load_gtzan",
        "GTZAN genres; --split fault-filtered or kfold-K-N (single-label)",
        frozenset({"split_dir"}),
        r"fault-filtered|kfold-\d+-\d+",
    ),
    "jamendo": Adapter(
        "jamendo",
        "load_jamendo",
        "MTG-Jamendo autotagging top-50; --split 0-4 (MTG's split-N folders; default 0)",
        frozenset({"split_dir"}),
        "[0-4]",
    ),
    "manifest": Adapter("manifest", "load_manifest", "your own collection: manifest.csv/tsv with path, tags[, split][, unknown]"),
    "folders": Adapter("manifest", "load_folders", "your own collection: one folder per label (single-label)"),
}


def check_dataset(name: str, options: dict[str, object], *, split: str = "") -> dict[str, object]:
    """The options that apply (those with a value), or a :class:`ParameterError` for an unknown name, option or split."""
    if name not in DATASETS:
        raise ParameterError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    adapter = DATASETS[name]
    if split and not (adapter.splits and re.fullmatch(adapter.splits, split)):
        known = f"its splits: {adapter.splits.replace('|', ', ')}" if adapter.splits else "it has no split schemes (its own files decide)"
        raise ParameterError(f"dataset {name!r} has no split {split!r} ({known})")
    given = {k: v for k, v in options.items() if v not in ("", None, False)}
    extra = sorted(set(given) - DATASETS[name].options)
    if extra:
        flags = ", ".join("--merge-synonyms" if k == "merge" else f"--{k.replace('_', '-')}" for k in extra)
        raise ParameterError(f"dataset {name!r} takes no {flags}")
    return given


def load_dataset(name: str, root: str | Path = "", *, split: str = "", **options: object) -> ClipSet:
    """Read dataset ``name`` from ``root`` with the named ``split`` scheme (its default when empty).

    Parameters
    ----------
    name : str
        A format of :data:`DATASETS`: ``"mtat"``, ``"msd"``, ``"tagtraum"``, ``"gtzan"``, ``"jamendo"``,
        ``"manifest"`` (your own ``manifest.csv``), ``"folders"`` (one folder per label), ``"corpus"``.
    root : str or Path
        The dataset's folder (for ``"manifest"`` also the manifest file itself); for ``"corpus"``, empty means
        the default corpus under ``$TAGSTACK_HOME``.
    split : str
        The split scheme, where the format has several (``"lee"`` or ``"full"`` for MagnaTagATune,
        ``"kfold-K-N"`` for GTZAN, ``"0"``-``"4"`` for MTG-Jamendo ...); empty: the format's default.
    **options
        The format's own options (``split_dir``: where published split and label files are; ``merge``:
        MagnaTagATune's synonym merging); empty or false values are ignored, others a format does not
        take are refused.

    Returns
    -------
    clips : ClipSet
        Paths, ``labels`` : np.ndarray [shape=(n_clips, n_tags), dtype=float32] (NaN: unknown), ``tags``,
        and ``splits`` : np.ndarray [shape=(n_clips,)] of ``"train"``, ``"valid"``, ``"test"``.

    Raises
    ------
    ParameterError
        An unknown format, split scheme or option.
    DatasetError
        A missing root, or files that cannot be read.
    """
    given = check_dataset(name, options, split=split)
    root = Path(root) if root else Path()
    if name != "corpus" and not root.exists():
        raise DatasetError(f"{root}: dataset root not found")
    return DATASETS[name].loader(root, split, **given)


__all__ = [
    "SPLITS",
    "Adapter",
    "ClipSet",
    "DATASETS",
    "check_dataset",
    "load_dataset",
    "read_folders",
    "read_manifest",
    "stratified_split",
    "write_manifest",
]
