"""Adapter of the embedded default data: a corpus built by :mod:`tagstack.corpus` (``tagstack corpus build``).

Reading a built corpus needs nothing but its manifest; building one needs
the ``corpus`` extra (music21, pretty_midi, midirenderer).
"""

from __future__ import annotations

from pathlib import Path

from ..config import tagstack_home
from ..errors import DatasetError, ParameterError
from .base import ClipSet
from .manifest import read_manifest


def corpus_clips(root: str | Path) -> ClipSet:
    """Read a built corpus (its manifest) as a :class:`ClipSet`."""
    root = Path(root)
    if not (root / "manifest.csv").is_file():
        raise DatasetError(f"{root}: no corpus here (no manifest.csv); build one with `tagstack corpus build --out {root}`")
    return read_manifest(root / "manifest.csv", name="corpus")


def load_corpus(root: Path, split: str = "") -> ClipSet:
    """Adapter: the corpus at ``root``, or the default one under ``$TAGSTACK_HOME`` when ``root`` is empty."""
    if split:
        raise ParameterError(f"the corpus has one split (by piece, stratified by style), not {split!r}")
    return corpus_clips(root if str(root) not in ("", ".") else tagstack_home() / "corpus" / "default")
