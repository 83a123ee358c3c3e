"""MTG-Jamendo, autotagging top-50: ``autotagging_top50tags-{train,validation,test}.tsv``.

Each row: TRACK_ID, ARTIST_ID, ALBUM_ID, PATH (such as ``41/241.mp3``, under
``root``), DURATION, then one or more tab-separated tags such as
``genre---rock`` or ``mood/theme---happy``. Tracks are full length: the mel
cache takes the 29.1 s at the centre of each track.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .files import numbered_lines
from .base import ClipSet


def find_tsv(name: str, folders: list[Path]) -> Path:
    """``name`` in the first folder that has it (not below it: another split's folder may be there)."""
    for d in folders:
        if (d / name).is_file():
            return d / name
    raise DatasetError(f"{name} not found in {', '.join(map(str, folders))}")


def read_split_tsv(path: Path) -> list[tuple[str, list[str]]]:
    """``(path, tags)`` of every track of one split file."""
    lines = numbered_lines(path)
    if not lines or not lines[0][1].startswith("TRACK_ID"):
        raise DatasetError(f"{path}: expected a header starting with TRACK_ID")
    out = []
    for n, line in lines[1:]:
        f = line.split("\t")
        if len(f) < 6:
            raise DatasetError(f"{path}, line {n}: expected at least 6 tab-separated fields, got {len(f)}")
        out.append((f[3], f[5:]))
    return out


def load_jamendo(root: Path, split: str = "0", *, split_dir: str | Path = "") -> ClipSet:
    """Split ``N`` (0-4) is read from a ``split-N`` folder of ``split_dir`` or ``root`` (MTG's own layout), or from a
    folder of that name given directly; TSV files lying in ``split_dir`` or ``root`` themselves are split 0."""
    split = split or "0"
    folders = []
    for d in ([Path(split_dir)] if split_dir else []) + [root]:
        if (d / f"split-{split}").is_dir():
            folders.append(d / f"split-{split}")
        elif d.name == f"split-{split}" or (split == "0" and not d.name.startswith("split-")):
            folders.append(d)
    if not folders:
        raise DatasetError(
            f"MTG-Jamendo split {split}: no split-{split} folder in {', '.join(str(d) for d in (split_dir, root) if d)}; "
            "pass the folder of its TSV files with --split-dir"
        )
    rows, names = [], []
    for name, file in (("train", "train"), ("valid", "validation"), ("test", "test")):
        r = read_split_tsv(find_tsv(f"autotagging_top50tags-{file}.tsv", folders))
        rows += r
        names += [name] * len(r)
    tags = sorted({t for _, ts in rows for t in ts})
    col = {t: j for j, t in enumerate(tags)}
    labels = np.zeros((len(rows), len(tags)), np.float32)
    for i, (_, ts) in enumerate(rows):
        labels[i, [col[t] for t in ts]] = 1
    groups = {t: t.split("---")[0] for t in tags if "---" in t}
    return ClipSet(
        name=f"mtg-jamendo-{split}",
        root=root,
        paths=[p for p, _ in rows],
        labels=labels,
        tags=tags,
        splits=np.array(names, dtype=object),
        groups=groups,
    )
