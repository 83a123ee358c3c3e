"""MagnaTagATune: ``annotations_final.csv`` and the mp3 folders ``0``-``f``.

``annotations_final.csv`` is tab-separated with every field in double quotes:
``clip_id``, 188 tag columns (0/1), ``mp3_path``. The top-50 tags are the 50
most frequent columns. Two splits:

- ``lee`` (the paper's): ``train_list_pub.cP``, ``valid_list_pub.cP`` and
  ``test_list_pub.cP`` (paths ending in ``.npy`` that stand for the clips'
  ``.mp3``), ``y_valid_pub.npy``/``y_test_pub.npy`` (labels in list order,
  columns in ``top50_tags.txt`` order) and the train labels read from the
  annotations; 15,244 / 1,529 / 4,332 clips.
- ``full``: folders ``0``-``b`` train, ``c`` validation, ``d``-``f`` test, clips
  with no top-50 tag kept; the known broken clips 35644, 55753 and 57881 are
  left out.

``merge_synonyms`` (off by default) ORs synonymous tag columns (female,
woman, female vocal ...) before the top 50 are chosen (``full`` split only:
the ``lee`` split fixes its 50 tags).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from ..errors import DatasetError, ParameterError
from .files import find_file, read_lines, read_npy, read_pickle
from .base import ClipSet

BROKEN_CLIPS = {35644, 55753, 57881}

#: Groups of synonymous MagnaTagATune tags; a merged column takes the first name.
SYNONYMS: list[list[str]] = [
    ["female", "woman", "female vocal", "female vocals", "female voice", "female singer", "female singing", "women", "woman singing"],
    ["male", "man", "male vocal", "male vocals", "male voice", "male singer", "man singing", "men"],
    ["no vocals", "no vocal", "no voice", "no voices", "no singer", "no singing", "instrumental"],
    ["vocal", "vocals", "voice", "voices"],
    ["singing", "singer"],
    ["choir", "choral"],
    ["classical", "classic", "clasical"],
    ["beat", "beats"],
    ["drums", "drum"],
    ["electronic", "electro", "electronica", "electric"],
    ["guitar", "guitars"],
    ["strings", "string"],
    ["violin", "violins"],
    ["flute", "flutes"],
    ["harpsichord", "harpsicord"],
    ["synth", "synthesizer"],
    ["indian", "india"],
    ["opera", "operatic"],
    ["weird", "strange"],
    ["quiet", "silence"],
    ["metal", "heavy metal", "heavy"],
    ["fast", "quick", "fast beat"],
]


def camel(tag: str) -> str:
    """``"no vocals"`` -> ``"noVocals"``: the spelling of Lee's ``top50_tags.txt``."""
    words = tag.split()
    return words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:]) if words else tag


def read_annotations(path: Path) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """``(clip_ids, tag names, 0/1 matrix, mp3 paths)`` of ``annotations_final.csv``."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t", quotechar='"'))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: cannot read annotations ({e})") from e
    if not rows or rows[0][0] != "clip_id" or rows[0][-1] != "mp3_path":
        raise DatasetError(f"{path}: expected a header 'clip_id', tags..., 'mp3_path'")
    tags = rows[0][1:-1]
    body = [r for r in rows[1:] if r]
    bad = [i + 2 for i, r in enumerate(body) if len(r) != len(rows[0])]
    if bad:
        raise DatasetError(f"{path}: lines {bad[:5]} have the wrong number of fields")
    try:
        ids = np.array([int(r[0]) for r in body])
        y = np.array([[int(v) for v in r[1:-1]] for r in body], dtype=np.float32)
    except ValueError as e:
        raise DatasetError(f"{path}: non-numeric clip id or label ({e})") from e
    return ids, tags, y, [r[-1] for r in body]


def merge_synonyms(tags: list[str], y: np.ndarray) -> tuple[list[str], np.ndarray]:
    """OR the columns of each synonym group into one column named after its first tag."""
    index = {t: j for j, t in enumerate(tags)}
    used: set[int] = set()
    names, cols = [], []
    for group in SYNONYMS:
        present = [index[t] for t in group if t in index]
        if present:
            names.append(group[0] if group[0] in index else tags[present[0]])
            cols.append(y[:, present].max(axis=1))
            used.update(present)
    for j, t in enumerate(tags):
        if j not in used:
            names.append(t)
            cols.append(y[:, j])
    return names, np.stack(cols, axis=1)


def top_tags(tags: list[str], y: np.ndarray, *, n: int = 50) -> list[int]:
    """Columns of the ``n`` most frequent tags (ties broken by column order)."""
    return list(np.argsort(-y.sum(axis=0), kind="stable")[:n])


def load_mtat(root: Path, split: str = "lee", *, split_dir: str | Path = "", merge: bool = False) -> ClipSet:
    """MagnaTagATune from ``root`` (annotations_final.csv and the mp3 folders)."""
    split = split or "lee"
    ids, tags, y, paths = read_annotations(find_file("annotations_final.csv", root, split_dir))
    if split == "full":
        if merge:
            tags, y = merge_synonyms(tags, y)
        cols = top_tags(tags, y)
        keep = np.array([i not in BROKEN_CLIPS for i in ids])
        folder = np.array([p.split("/")[0] for p in paths])
        splits = np.where(np.isin(folder, list("0123456789ab")), "train", np.where(folder == "c", "valid", "test")).astype(object)
        return ClipSet(
            name="mtat-full",
            root=root,
            paths=[p for p, k in zip(paths, keep) if k],
            labels=y[keep][:, cols],
            tags=[tags[j] for j in cols],
            splits=splits[keep],
        )
    if split != "lee":
        raise ParameterError(f"MagnaTagATune split must be 'lee' or 'full', got {split!r}")
    if merge:
        raise ParameterError("merge_synonyms applies to the 'full' split; the 'lee' split fixes its 50 tags")
    folders = (split_dir, root)
    top50 = read_lines(find_file("top50_tags.txt", *folders))
    col = {camel(t): j for j, t in enumerate(tags)}
    missing = [t for t in top50 if t not in col]
    if missing:
        raise DatasetError(f"top50_tags.txt names tags not in annotations_final.csv: {missing}")
    by_path = {p: i for i, p in enumerate(paths)}
    all_paths, labels, splits = [], [], []
    for name, y_file in (("train", None), ("valid", "y_valid_pub.npy"), ("test", "y_test_pub.npy")):
        lst = [re.sub(r"\.npy$", ".mp3", str(p)) for p in read_pickle(find_file(f"{name}_list_pub.cP", *folders), list)]
        if y_file:
            y_path = find_file(y_file, *folders)
            y_split = read_npy(y_path)
            if y_split.shape != (len(lst), len(top50)) or y_split.dtype.kind not in "biuf":
                raise DatasetError(
                    f"{y_path}: {y_split.dtype} array of shape {y_split.shape}, expected numbers for {len(lst)} clips x {len(top50)} tags"
                )
            y_split = y_split.astype(np.float32)
        else:
            unknown = [p for p in lst if p not in by_path]
            if unknown:
                raise DatasetError(f"{len(unknown)} clips of train_list_pub.cP are not in annotations_final.csv, e.g. {unknown[0]}")
            y_split = y[[by_path[p] for p in lst]][:, [col[t] for t in top50]]
        all_paths += lst
        labels.append(y_split)
        splits += [name] * len(lst)
    return ClipSet(
        name="mtat-lee", root=root, paths=all_paths, labels=np.concatenate(labels), tags=top50, splits=np.array(splits, dtype=object)
    )
