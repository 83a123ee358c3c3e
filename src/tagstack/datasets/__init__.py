"""Dataset adapters: each turns a dataset's published files into a :class:`ClipSet`.

:func:`load_dataset` picks the adapter by name; :data:`DATASETS` lists them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import DatasetError, ParameterError
from .base import SPLITS, ClipSet, stratified_split
from .manifest import read_folders, read_manifest, write_manifest


def _manifest(root: Path, split: str, **_: object) -> ClipSet:
    """A manifest file, or the manifest.csv/.tsv in the folder ``root``."""
    p = root if root.is_file() else next((root / n for n in ("manifest.csv", "manifest.tsv") if (root / n).is_file()), root / "manifest.csv")
    return read_manifest(p)


def _folders(root: Path, split: str, **_: object) -> ClipSet:
    return read_folders(root)


def _corpus(root: Path, split: str, **_: object) -> ClipSet:
    from ..corpus import corpus_clips
    from ..pipeline import tagstack_home

    return corpus_clips(root if str(root) not in ("", ".") else tagstack_home() / "corpus" / "default")


def _lazy(module: str, func: str) -> Callable[..., ClipSet]:
    def load(root: Path, split: str, **options: object) -> ClipSet:
        import importlib

        return getattr(importlib.import_module(f".{module}", __name__), func)(root, split, **options)

    return load


#: name -> (loader(root, split, **options), description)
DATASETS: dict[str, tuple[Callable[..., ClipSet], str]] = {
    "corpus": (_corpus, "the embedded score-rendered corpus (tagstack corpus build)"),
    "mtat": (_lazy("mtat", "load_mtat"), "MagnaTagATune top-50; --split lee (the paper's) or full"),
    "msd": (_lazy("msd", "load_msd"), "Million Song Dataset, Last.fm top-50, Lee's split (7digital previews)"),
    "tagtraum": (_lazy("msd", "load_tagtraum"), "Tagtraum CD2C genres on MSD, Lee's split (single-label)"),
    "gtzan": (_lazy("gtzan", "load_gtzan"), "GTZAN genres; --split fault-filtered or kfold-K-N (single-label)"),
    "jamendo": (_lazy("jamendo", "load_jamendo"), "MTG-Jamendo autotagging top-50 (split-0 TSV files)"),
    "manifest": (_manifest, "your own collection: manifest.csv/tsv with path, tags[, split]"),
    "folders": (_folders, "your own collection: one folder per label (single-label)"),
}


def load_dataset(name: str, root: str | Path = "", *, split: str = "", **options: object) -> ClipSet:
    """Read dataset ``name`` from ``root`` with the named ``split`` scheme."""
    if name not in DATASETS:
        raise ParameterError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    loader = DATASETS[name][0]
    root = Path(root) if root else Path()
    if name != "corpus" and not root.exists():
        raise DatasetError(f"{root}: dataset root not found")
    return loader(root, split, **options)


__all__ = ["SPLITS", "ClipSet", "DATASETS", "load_dataset", "read_folders", "read_manifest", "stratified_split", "write_manifest"]
