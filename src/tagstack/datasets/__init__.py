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
    p = root if root.is_file() else next((root / n for n in ("manifest.csv", "manifest.tsv") if (root / n).is_file()), root / "manifest.csv")
    return read_manifest(p)


def _folders(root: Path, split: str, **_: object) -> ClipSet:
    return read_folders(root)


def _corpus(root: Path, split: str, **_: object) -> ClipSet:
    from ..corpus import corpus_clips
    from ..pipeline import tagstack_home

    return corpus_clips(root if str(root) not in ("", ".") else tagstack_home() / "corpus" / "default")


#: name -> (loader(root, split, **options), description)
DATASETS: dict[str, tuple[Callable[..., ClipSet], str]] = {
    "corpus": (_corpus, "the embedded score-rendered corpus (tagstack corpus build)"),
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
