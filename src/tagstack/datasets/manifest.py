"""Users' own collections: a CSV/TSV manifest, or one folder per label.

Manifest format (also what the rendered corpus writes)::

    path,tags,split
    audio/a.ogg,piano;fast;major,train
    audio/b.ogg,choir;slow,test

``path`` is relative to the manifest's folder (or absolute); ``tags`` are
separated by ``;``, each a name or ``name=value`` for a soft label in [0, 1];
``split`` (``train``/``valid``/``test``) is optional: when
the column is missing or empty, a seeded split stratified by each clip's
rarest tag is made. A tab-separated file (``.tsv``) works the same way.

A tag not listed on a row is a negative for that clip. When sources with
different vocabularies are merged (moods on some clips, instruments on
others), an optional ``unknown`` column names, per row, the tags (or tag
groups of ``tag_groups.csv``) that the clip was never annotated for: those
labels become unknown (NaN) and count neither as positive nor as negative,
in training or in evaluation::

    path,tags,split,unknown
    4q/a.mp3,happy;pop;guitar=0.8,train,
    games/b.flac,guitar=0.6;drums=0.9,train,mood;genre
A folder per label (``root/<label>/*.wav``) is read as a single-label task.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from ..audio.io import AUDIO_EXTENSIONS
from ..errors import DatasetError, ParameterError
from ..fileio import atomic_write_text
from ..tags import MAX_GROUP_NAME, is_group_name
from .base import SPLITS, ClipSet, stratified_split

TAG_SEPARATOR = ";"


def read_manifest(path: str | Path, *, name: str | None = None, task: str = "multilabel", seed: int = 0) -> ClipSet:
    """Read a manifest into a :class:`ClipSet`; tags are sorted alphabetically.

    A tag may carry a soft label, ``name=value`` with the value in [0, 1]
    (e.g. a teacher model's probability); a bare name means 1. Errors name
    the file and the line: an unterminated quote, a path listed twice, a
    split column filled on some rows only, an unknown split, a bad value.
    A UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: manifest not found")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    records: list[tuple[int, dict[str, str]]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter, strict=True)
            header = [h.strip() for h in next(reader, [])]
            if "path" not in header or "tags" not in header:
                raise DatasetError(f"{path}: a manifest needs a header with 'path' and 'tags' columns, got {header}")
            for row in reader:
                if not any(c.strip() for c in row):
                    continue
                if len(row) > len(header):
                    raise DatasetError(f"{path}, line {reader.line_num}: {len(row)} fields for {len(header)} columns")
                records.append((reader.line_num, dict(zip(header, [c.strip() for c in row]))))
    except csv.Error as e:
        raise DatasetError(f"{path}, line {reader.line_num}: {e} (an unterminated quote?)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read manifest ({e})") from None
    if not records:
        raise DatasetError(f"{path}: the manifest lists no clips")
    seen: dict[str, int] = {}
    tag_values: list[dict[str, float]] = []
    for line, r in records:
        p = r.get("path", "")
        if not p:
            raise DatasetError(f"{path}, line {line}: empty path")
        same = os.path.normpath(os.path.join(path.parent.resolve(), p))  # ./a.wav, a//a.wav and /abs/a.wav are one file
        if same in seen:
            raise DatasetError(f"{path}, line {line}: {p} is already listed on line {seen[same]}")
        seen[same] = line
        tag_values.append(_parse_tags(r.get("tags", ""), path, line))
    tags = sorted({t for tv in tag_values for t in tv})
    col = {t: j for j, t in enumerate(tags)}
    groups = _read_groups(path.with_name("tag_groups.csv"))
    labels = np.zeros((len(records), len(tags)), np.float32)
    for i, ((line, r), tv) in enumerate(zip(records, tag_values)):
        for t, v in tv.items():
            labels[i, col[t]] = v
        for t in _unknown_tags(r.get("unknown", ""), col, groups, path, line):
            if t in tv:
                raise DatasetError(f"{path}, line {line}: tag {t!r} is both labelled and listed as unknown")
            labels[i, col[t]] = np.nan
    splits = np.array([r.get("split", "") for _, r in records], dtype=object)
    bad = [(line, s) for (line, _), s in zip(records, splits) if s and s not in SPLITS]
    if bad:
        raise DatasetError(f"{path}, line {bad[0][0]}: unknown split {bad[0][1]!r}; use {SPLITS}")
    empty = [line for (line, _), s in zip(records, splits) if not s]
    if empty and len(empty) < len(records):
        lines = ", ".join(map(str, empty[:5])) + (" ..." if len(empty) > 5 else "")
        raise DatasetError(
            f"{path}: {len(empty)} rows have no split (lines {lines}) while others have one; "
            "fill the split column on every row, or leave it empty everywhere for a seeded split"
        )
    if empty:
        splits = _make_splits([r["path"] for _, r in records], labels, seed=seed)
    return ClipSet(
        name=name or path.resolve().parent.name,
        root=path.parent,
        paths=[r["path"] for _, r in records],
        labels=labels,
        tags=tags,
        splits=splits,
        task=task,
        groups=groups,
    )


def _parse_tags(text: str, path: Path, line: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in text.split(TAG_SEPARATOR):
        item = item.strip()
        if not item:
            continue
        name, _, value = item.partition("=")
        name = name.strip()
        try:
            v = float(value) if value else 1.0
        except ValueError:
            v = float("nan")
        if not name or not 0.0 <= v <= 1.0:
            raise DatasetError(f"{path}, line {line}: tag {item!r} is not a name or name=value with a value in [0, 1]")
        out[name] = v
    return out


def _read_groups(path: Path) -> dict[str, str]:
    """``tag_groups.csv`` (tag,group) beside a manifest, or {} when there is none."""
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not {"tag", "group"} <= set(reader.fieldnames or ()):
                raise DatasetError(f"{path}: needs a header with 'tag' and 'group' columns, got {reader.fieldnames}")
            groups = {}
            for line, r in enumerate(reader, start=2):
                tag, group = (r["tag"] or "").strip(), (r["group"] or "").strip()
                if tag and not is_group_name(group):
                    raise DatasetError(
                        f"{path}, line {line}: the group of {tag!r} must be a name of 1..{MAX_GROUP_NAME} characters, got {group!r}"
                    )
                if tag:
                    groups[tag] = group
            return groups
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: cannot read tag groups ({e})") from None


def _unknown_tags(text: str, col: dict[str, int], groups: dict[str, str], path: Path, line: int) -> list[str]:
    """The tags named in an ``unknown`` cell, each given as a tag or as a group of ``tag_groups.csv``."""
    out: list[str] = []
    for item in filter(None, (x.strip() for x in text.split(TAG_SEPARATOR))):
        members = [item] if item in col else [t for t, g in groups.items() if g == item and t in col]
        if not members and item in groups.values():
            raise DatasetError(f"{path}, line {line}: unknown {item!r}: no tag of this group of tag_groups.csv is in the manifest's tags")
        if not members:
            raise DatasetError(f"{path}, line {line}: unknown {item!r} is neither a tag of the manifest nor a group of tag_groups.csv")
        out.extend(members)
    return out


def _make_splits(paths: list[str], labels: np.ndarray, *, seed: int) -> np.ndarray:
    freq = np.nansum(labels, axis=0)
    strata = [str(int(np.argmin(np.where(row > 0, freq, np.inf)))) if (row > 0).any() else "none" for row in labels]
    assign = stratified_split(paths, strata, seed=seed)
    return np.array([assign[p] for p in paths], dtype=object)


def write_manifest(clips: ClipSet, path: str | Path, *, columns: dict[str, list[str]] | None = None) -> None:
    """Write ``clips`` as a manifest (atomically), with ``tag_groups.csv`` beside it when groups are known.

    Unknown (NaN) labels go to an ``unknown`` column, written only when there are some.
    A tag with no positive clip is left out, as reading leaves it out. ``columns``
    adds columns of one value per clip (the corpus's ``piece`` and ``style``),
    which :func:`read_manifest` ignores and people can filter on.
    """
    path = Path(path)
    columns = columns or {}
    for name, values in columns.items():
        if name in ("path", "tags", "split", "unknown"):
            raise ParameterError(f"manifest column {name!r}: a name the manifest's own columns have")
        if len(values) != len(clips.paths):
            raise ParameterError(f"manifest column {name!r}: {len(values)} values for {len(clips.paths)} clips")
    unknown = np.isnan(clips.labels) & (np.nan_to_num(clips.labels) > 0).any(axis=0)
    has_unknown = bool(unknown.any())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")  # quotes a field holding a comma, a quote or a newline, as read_manifest reads it
    w.writerow(["path", "tags", "split", *(["unknown"] if has_unknown else []), *columns])
    for i, (p, row, s, u) in enumerate(zip(clips.paths, clips.labels, clips.splits, unknown)):
        ts = TAG_SEPARATOR.join(clips.tags[j] if row[j] == 1 else f"{clips.tags[j]}={row[j]:.4g}" for j in np.flatnonzero(row > 0))
        extra = [TAG_SEPARATOR.join(clips.tags[j] for j in np.flatnonzero(u))] if has_unknown else []
        w.writerow([p, ts, s, *extra, *(values[i] for values in columns.values())])
    if clips.groups:  # first: a manifest is never seen beside groups older than itself
        rows = ["tag,group"] + [f"{t},{clips.groups[t]}" for t in clips.tags if t in clips.groups]
        atomic_write_text(path.with_name("tag_groups.csv"), "\n".join(rows) + "\n")
    atomic_write_text(path, buf.getvalue())


def read_folders(root: str | Path, *, name: str | None = None, seed: int = 0) -> ClipSet:
    """``root/<label>/<file>``: one class per folder, split stratified by class."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: folder not found")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, y = [], []
    for k, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if f.suffix.lower() in AUDIO_EXTENSIONS and f.is_file():
                paths.append(str(f.relative_to(root)))
                y.append(k)
    if not paths:
        raise DatasetError(f"{root}: no audio files in label folders")
    labels = np.eye(len(classes), dtype=np.float32)[y]
    assign = stratified_split(paths, [classes[k] for k in y], seed=seed)
    splits = np.array([assign[p] for p in paths], dtype=object)
    return ClipSet(name=name or root.resolve().name, root=root, paths=paths, labels=labels, tags=classes, splits=splits, task="multiclass")


def load_manifest(root: Path, split: str = "") -> ClipSet:
    """Adapter: a manifest file, or the manifest.csv/.tsv in the folder ``root``."""
    _no_split(split)
    names = ("manifest.csv", "manifest.tsv")
    path = root if root.is_file() else next((root / n for n in names if (root / n).is_file()), root / "manifest.csv")
    return read_manifest(path)


def load_folders(root: Path, split: str = "") -> ClipSet:
    """Adapter: one folder per label."""
    _no_split(split)
    return read_folders(root)


def _no_split(split: str) -> None:
    if split:
        raise ParameterError(f"a manifest carries its own split column (or gets a seeded split); --split {split!r} does not apply")
