"""Million Song Dataset (Last.fm top-50 tags) and Tagtraum CD2C genres, in Lee's splits.

Audio: 7digital previews under ``root``, found through two published maps,
``MSD_id_to_7D_id.pkl`` (MSD track id -> 7digital id) and ``7D_id_to_path.pkl``
(7digital id -> path such as ``8/9/8947470.clip.mp3``).

- ``msd``: ``50tagList.txt``, ``filtered_list_train.cP`` (the first 201,680 ids
  train, the rest validation), ``filtered_list_test.cP``, and
  ``msd_id_to_tag_vector.cP`` (id -> 50 booleans). Tag names are case
  sensitive and kept as published (near-duplicates included).
- ``tagtraum``: ``msd_tagtraum_cd2c.cls`` (``#`` comments, then
  ``TRACKID<TAB>majority genre[<TAB>minority genre]``; the majority genre is
  the label), ``train_list.cP`` (first 141,372 train, rest validation) and
  ``test_list.cP``; a single-label task with 15 genres.

Ids without an audio path are kept out and counted in a message.
"""

from __future__ import annotations

import logging

from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .files import find_file, numbered_lines, read_lines, read_pickle
from .base import ClipSet

log = logging.getLogger(__name__)

MSD_TRAIN = 201_680
TAGTRAUM_TRAIN = 141_372


def _audio_paths(ids: list[str], folders: tuple) -> tuple[list[str], list[int]]:
    to_7d = read_pickle(find_file("MSD_id_to_7D_id.pkl", *folders), dict)
    to_path = read_pickle(find_file("7D_id_to_path.pkl", *folders), dict)
    paths, kept = [], []
    for i, tid in enumerate(ids):
        p = to_path.get(to_7d.get(tid))
        if p is not None:
            paths.append(p)
            kept.append(i)
    if len(kept) < len(ids):
        log.warning(f"{len(ids) - len(kept)} of {len(ids)} track ids have no 7digital path and are left out")
    return paths, kept


def _train_valid_test(train: list[str], test: list[str], n_train: int) -> tuple[list[str], list[str]]:
    return train + test, ["train"] * min(n_train, len(train)) + ["valid"] * max(0, len(train) - n_train) + ["test"] * len(test)


def load_msd(root: Path, split: str = "lee", *, split_dir: str | Path = "") -> ClipSet:
    """Million Song Dataset, Last.fm top-50 tags, Lee's split."""
    folders = (split_dir, root)
    tags = read_lines(find_file("50tagList.txt", *folders))
    ids, names = _train_valid_test(
        read_pickle(find_file("filtered_list_train.cP", *folders), list),
        read_pickle(find_file("filtered_list_test.cP", *folders), list),
        MSD_TRAIN,
    )
    vectors = read_pickle(find_file("msd_id_to_tag_vector.cP", *folders), dict)
    missing = [t for t in ids if t not in vectors]
    if missing:
        raise DatasetError(f"msd_id_to_tag_vector.cP has no labels for {len(missing)} ids, e.g. {missing[0]}")
    paths, kept = _audio_paths(ids, folders)
    labels = np.array([np.asarray(vectors[ids[i]], dtype=np.float32).reshape(-1) for i in kept])
    if labels.shape[1:] != (len(tags),):
        raise DatasetError(f"msd_id_to_tag_vector.cP: label vectors of {labels.shape[1:]} values for {len(tags)} tags")
    return ClipSet(
        name="msd-lee", root=root, paths=paths, labels=labels, tags=tags, splits=np.array([names[i] for i in kept], dtype=object)
    )


def read_tagtraum(path: Path) -> dict[str, str]:
    """Track id -> majority genre of a ``.cls`` file."""
    out = {}
    for n, line in numbered_lines(path):
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DatasetError(f"{path}, line {n}: expected TRACKID<TAB>genre, got {line[:60]!r}")
        out[fields[0]] = fields[1]
    return out


def load_tagtraum(root: Path, split: str = "lee", *, split_dir: str | Path = "") -> ClipSet:
    """Tagtraum CD2C genre annotations on MSD, Lee's stratified split."""
    folders = (split_dir, root)
    genre_of = read_tagtraum(find_file("msd_tagtraum_cd2c.cls", *folders))
    ids, names = _train_valid_test(
        read_pickle(find_file("train_list.cP", *folders), list), read_pickle(find_file("test_list.cP", *folders), list), TAGTRAUM_TRAIN
    )
    missing = [t for t in ids if t not in genre_of]
    if missing:
        raise DatasetError(f"msd_tagtraum_cd2c.cls has no genre for {len(missing)} ids of the split, e.g. {missing[0]}")
    genres = sorted(set(genre_of[t] for t in ids))
    paths, kept = _audio_paths(ids, folders)
    labels = np.eye(len(genres), dtype=np.float32)[[genres.index(genre_of[ids[i]]) for i in kept]]
    return ClipSet(
        name="tagtraum-lee",
        root=root,
        paths=paths,
        labels=labels,
        tags=genres,
        splits=np.array([names[i] for i in kept], dtype=object),
        task="multiclass",
    )
