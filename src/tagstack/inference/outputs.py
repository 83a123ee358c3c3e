"""Tagging and embedding many files into output files: what ``tagstack tag`` and ``embed`` run, callable from Python.

A file that cannot be used is reported with its reason and the others go
on. Every output file is complete or absent: results go to a temporary file
beside the destination, renamed over it only when the job ends, so a killed
run never leaves a partial file that looks whole, nor destroys an earlier
result. Meanwhile each file done is recorded in a journal beside the output
(:mod:`.journal`), so that the same call after an interruption does only the
files left. The destination is checked before any work starts.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ..audio.io import find_audio, looks_like_audio
from ..checks import DEFAULT_TOP_K, check_selection, check_taggram_hop
from ..errors import OutputError, ParameterError, TagstackError
from ..fileio import atomic_write, destination, remove_leftovers_of, shown
from ..progress import progress
from ..provenance import weights_digest
from ..report import write_taggram
from ..models.tagging_model import require_tagger
from .journal import Journal, decode_vector, encode_vector
from .result import Result
from .tagger import Tagger

T = TypeVar("T")

log = logging.getLogger(__name__)

FORMATS = ("table", "jsonl", "csv")
EMBEDDING_SUFFIXES = (".npz", ".parquet")


@dataclass
class BatchReport:
    """What a batch job did: files done, and each skipped file with its reason."""

    done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """The command's exit status: 1 when any file was skipped, else 0."""
        return 1 if self.skipped else 0


def _is_manifest(path: str) -> bool:
    return path.lower().endswith(".csv") and os.path.isfile(path)  # (False, not an error, for a name the OS refuses)


def audio_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files, folders (recursively), globs and manifests (``.csv``: their clips) as a list of files; an error when none is found."""
    from ..datasets.manifest import read_manifest

    paths = [str(p) for p in paths]
    files: list[Path] = []
    for p in paths:
        if _is_manifest(p):
            clips = read_manifest(p)
            files.extend(Path(clips.root) / c for c in clips.paths)
        else:
            files.extend(find_audio([p]))
    if not files:
        raise ParameterError(f"no audio files found in {paths}")
    return files


def check_destination(path: Path, *, folder: bool = False, force: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written (missing or read-only folder, a folder as file, a name
    the OS refuses) or that would destroy an audio file that is there (unless ``force``)."""
    path = Path(path) if folder else destination(Path(path))
    try:
        _check_destination(path, folder)
    except OSError as e:
        raise ParameterError(f"{shown(path)}: cannot be an output ({e.strerror or e})") from None
    if not folder and not force and looks_like_audio(path):
        raise ParameterError(
            f"{shown(path)}: is an audio file; tagstack will not write its output over it (choose another name, or --force to replace it)"
        )


def _check_destination(path: Path, folder: bool) -> None:
    target = path if folder else path.parent
    if folder and path.exists() and not path.is_dir():
        raise ParameterError(f"{path}: exists and is not a folder")
    if not folder and path.is_dir():
        raise ParameterError(f"{path}: is a folder; give a file name")
    parent = target if target.exists() else target.parent
    if folder and not target.exists() and not parent.is_dir():
        raise ParameterError(f"{path}: its parent folder {parent} does not exist")
    if not folder and not target.is_dir():
        raise ParameterError(f"{path}: the folder {target} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ParameterError(f"{path}: the folder {parent} is not writable")


def check_not_an_input(output: Path, files: list[Path], *, given: Iterable[str | Path] = ()) -> None:
    """Refuse an output that is one of the inputs (``tagstack tag -o a.mp3 b.ogg a.mp3``): writing it would destroy
    what was just read, ``--force`` or not. ``files`` are the audio files; ``given``, the paths as given, adds the
    manifests among them and the ``tag_groups.csv`` read beside each."""
    if not os.path.isfile(output):  # (os.path's tests answer False where the OS refuses to look)
        return
    manifests = [Path(p) for p in map(str, given) if _is_manifest(p)]
    for f in [*files, *manifests, *(m.with_name("tag_groups.csv") for m in manifests)]:
        try:
            same = os.path.samefile(output, f)
        except OSError:
            continue
        if same:
            raise ParameterError(f"{shown(output)}: is also an input file; write the output to another file")


def _names(files: list[Path]) -> list[str]:
    """Each file's name as the outputs write it (:func:`~tagstack.fileio.shown`), with one warning line per name that
    is not valid Unicode (and so is written with its bytes escaped)."""
    names = [shown(f) for f in files]
    for f, name in zip(files, names):
        if name != str(f):
            log.warning("%s: the name is not valid UTF-8; the outputs write its bytes as \\xNN escapes", name)
    return names


def tag_files(
    paths: Iterable[str | Path],
    *,
    tagger: Tagger | None = None,
    model: str | Path | None = None,
    device: str = "auto",
    top_k: int | None = DEFAULT_TOP_K,
    threshold: float | None = None,
    fmt: str = "table",
    output: str | Path | None = None,
    taggram_dir: str | Path | None = None,
    hop: float | None = None,
    stdout: IO[str] | None = None,
    per_group: bool = False,
    force: bool = False,
) -> BatchReport:
    """Tag every file and write the results as a table, JSON lines or CSV.

    With ``per_group`` the top ``k`` (or the threshold) apply within each tag
    group of the model, and each tag's group is written beside it (a
    ``group`` column; in JSON lines a ``groups`` object, tag -> group).

    Results stream to ``stdout`` (standard output by default), or go whole to
    ``output`` at the end; a call interrupted before its end (Ctrl-C, a kill) is resumed by the same call with
    the same settings, which does only the files left (:mod:`.journal`). With ``taggram_dir`` each file's taggram is written
    there too (.npy, .csv, .png), windows every ``hop`` seconds. ``output`` is
    refused when it is one of the inputs, or an existing audio file unless ``force``.

    Parameters
    ----------
    paths : iterable of str or Path
        Files, folders (searched recursively for audio), glob patterns and manifests (``.csv``: their clips).
    tagger : Tagger, optional
        A loaded tagger to use (else one is loaded from ``model`` on ``device``).
    model : str or Path, optional
        A model file or a shipped model's name (default: the shipped default model).
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:0"`` ...
    top_k : int >= 0, optional
        Tags per file, best first (None or 0: all).
    threshold : float in [0, 1], optional
        Instead of ``top_k``: every tag whose probability is at least this.
    fmt : {"table", "jsonl", "csv"}
        A readable table, one JSON object per file, or ``path,tag,probability`` rows.
    output : str or Path, optional
        A file to write the results to, whole, at the end (default: stream them to ``stdout``).
    taggram_dir : str or Path, optional
        A folder for each file's taggram (``stem.taggram.npy``, ``.csv``, ``.png``).
    hop : float > 0, optional
        Seconds between the starts of taggram windows (with ``taggram_dir``; default: one clip length).
    stdout : file-like, optional
        Where results stream without ``output`` (default: ``sys.stdout``).
    per_group : bool
        Select the tags within each tag group, and write each tag's group.
    force : bool
        Replace an existing audio file named by ``output``.

    Returns
    -------
    report : BatchReport
        ``done`` (files tagged) and ``skipped`` (``(file, reason)`` of each file that could not be used);
        ``exit_status`` is 1 when any was skipped.

    Raises
    ------
    ParameterError
        Before any work: a bad option, no audio found, or an output that cannot or must not be written.
    """
    if fmt not in FORMATS:
        raise ParameterError(f"format must be one of {FORMATS}, got {fmt!r}")
    check_selection(top_k, threshold)
    check_taggram_hop(hop, taggram_dir is not None)
    if output is not None:
        check_destination(Path(output), force=force)
    if taggram_dir is not None:
        check_destination(Path(taggram_dir), folder=True)
    paths = [str(p) for p in paths]  # read twice: for the audio, and for what it must not overwrite
    files = audio_files(paths)
    if output is not None:
        check_not_an_input(Path(output), files, given=paths)
    tagger = tagger or Tagger(model, device=device)
    require_tagger(tagger.model)
    if per_group and not tagger.model.groups:
        log.warning(
            "this model file has no tag groups (its training data had no tag_groups.csv): "
            "--per-group treats all its tags as one group, 'other'"
        )
    out = io.StringIO() if output is not None else (stdout or sys.stdout)
    if out is None:  # started with standard output closed (`tagstack tag a.mp3 >&-`)
        raise OutputError("standard output is closed; write the results to a file (-o FILE)")
    if fmt == "csv":
        out.write(_csv_text([["path", "tag", "probability"] + (["group"] if per_group else [])]))
    report = BatchReport()
    stems, names, keys, stamps = unique_stems(files), _names(files), [str(f) for f in files], _stamps(files)
    settings = _job(
        tagger,
        job="tag",
        format=fmt,
        top_k=top_k,
        threshold=threshold,
        per_group=per_group,
        hop=hop,
        taggram=None if taggram_dir is None else str(Path(taggram_dir).absolute()),  # the folder, wherever the rerun starts
    )
    journal = Journal.open(output, settings) if output is not None else None
    with journal or contextlib.nullcontext():
        # only now, holding the journal: a second job on this output must not remove what the first is writing
        if output is not None:
            remove_leftovers_of(Path(output))
        if taggram_dir is not None and Path(taggram_dir).is_dir():  # only what taggram writes left in that folder itself
            remove_leftovers_of(Path(taggram_dir) / "*.taggram.*", pattern=True)
        # a file is done when it is unchanged since, and (with taggrams) written under the name it gets now
        taggrams = taggram_dir is not None
        records = journal.done.items() if journal else ()
        done = {
            _key(k, r.get("stat"), r.get("taggram") if taggrams else None): r["text"] for k, r in records if isinstance(r.get("text"), str)
        }
        wanted = [_key(k, stamp, stems[i] if taggrams else None) for i, (k, stamp) in enumerate(zip(keys, stamps))]
        run = lambda todo: tagger.predict_many([files[i] for i in todo], taggram=taggrams, hop=hop)
        for i, text, r in _resumed(wanted, done, run, desc="tag"):
            if isinstance(r, TagstackError):
                _skip(report, names[i], r)
                continue
            if text is None:
                r.path = names[i]
                text = _tag_text(r, fmt, r.top(top_k, threshold, per_group=per_group), per_group)
                if taggrams:
                    write_taggram(r, Path(taggram_dir), stem=stems[i], clip_seconds=tagger.cfg.clip_seconds)
                if journal:
                    journal.add(keys[i], text=text, stat=stamps[i], **({"taggram": stems[i]} if taggrams else {}))
            out.write(text)
            out.flush()
            report.done += 1
        if journal:
            text = out.getvalue()
            atomic_write(Path(output), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
            journal.finish()
    _summary(report, len(files), "tagged")
    return report


def _tag_text(r: Result, fmt: str, top: list[tuple[str, float]], per_group: bool) -> str:
    """What the output holds for one file: its lines of the table, its JSON line, or its CSV rows."""
    if fmt == "jsonl":
        line = {"path": r.path, "seconds": round(r.seconds, 2), "tags": {t: round(p, 4) for t, p in top}}
        if per_group:
            line["groups"] = {t: r.group_of(t) for t, _ in top}
        return json.dumps(line, allow_nan=False) + "\n"
    if fmt == "csv":
        return _csv_text([[r.path, t, f"{p:.4f}"] + ([r.group_of(t)] if per_group else []) for t, p in top])
    group = (lambda t: f"  {r.group_of(t)}") if per_group else (lambda t: "")
    return f"{r.path}  ({r.seconds:.1f} s)\n" + "".join(f"    {t:<16} {p:.3f}{group(t)}\n" for t, p in top)


def _csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def _job(tagger: Tagger, **settings: Any) -> dict[str, Any]:
    """A job's settings as its journal records them: the model (a digest of its weights, tags and front ends) and ``settings``."""
    model = hashlib.sha256(f"{weights_digest(tagger.model)}{tagger.tags}{tagger.model.frontends}".encode()).hexdigest()[:16]
    return {"model": model, **settings}


def _stamps(files: list[Path]) -> list[list[int] | None]:
    """Each file's size and modification time as a journal records them, taken before it is read (None: not there)."""
    stamps: list[list[int] | None] = []
    for f in files:
        try:
            st = os.stat(f)
            stamps.append([st.st_size, st.st_mtime_ns])
        except (OSError, ValueError):
            stamps.append(None)
    return stamps


def _key(path: str, stamp: Any, *extra: Any) -> tuple[Any, ...]:
    """What identifies a file as done, in a journal record or now: its path, its stamp (see :func:`_stamps`) and
    ``extra``; a file without a stamp matches nothing."""
    if isinstance(stamp, list) and all(isinstance(x, int) for x in stamp):
        return (path, tuple(stamp), *extra)
    return (path, object())


def _resumed(
    keys: list[tuple[Any, ...]], done: dict[tuple[Any, ...], T], run: Callable[[list[int]], Iterable[Result | TagstackError]], *, desc: str
) -> Iterator[tuple[int, T | None, Result | TagstackError | None]]:
    """``(index, stored, result)`` for every file in order: what an earlier run stored for it (``done``, by path and
    stamp), or else its result (or error) from ``run`` on the indices of the files still to do, which the progress counts."""
    todo = [i for i, k in enumerate(keys) if k not in done]
    fresh = iter(progress(run(todo), total=len(todo), desc=desc, unit="file", hide=len(todo) < 2))
    pending = set(todo)
    for i, k in enumerate(keys):
        yield (i, None, next(fresh)) if i in pending else (i, done[k], None)
    for _ in fresh:  # nothing is left: asking once more lets the progress count the last file and close
        pass


def embed_files(
    paths: Iterable[str | Path],
    out: str | Path,
    *,
    tagger: Tagger | None = None,
    model: str | Path | None = None,
    device: str = "auto",
    scales: Iterable[str | int] | None = None,
    layers: Iterable[int] | None = None,
    force: bool = False,
) -> BatchReport:
    """One feature vector per readable file, in one file: ``.npz`` (``embeddings``, ``paths``, ``scales``, ``layers``) or ``.parquet``.

    Either way the file records which scales and layers its columns are
    (Parquet in its schema metadata), and the vectors and names can never
    disagree, since they are one file written at once. A call interrupted
    before its end is resumed by the same call, which does only the files
    left (:mod:`.journal`).

    Parameters
    ----------
    paths : iterable of str or Path
        Files, folders (searched recursively for audio), glob patterns and manifests (``.csv``: their clips).
    out : str or Path
        The embedding file: ``.npz`` (``embeddings`` [shape=(n_files, n_columns), dtype=float32], ``paths``,
        ``scales``, ``layers``) or ``.parquet`` (columns ``path`` and ``embedding``; needs pyarrow); not written
        when no file could be embedded.
    tagger : Tagger, optional
        A loaded tagger to use (else one is loaded from ``model`` on ``device``).
    model : str or Path, optional
        A model file or a shipped model's name (default: the shipped default model).
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:0"`` ...
    scales : iterable of str or int, optional
        Branches (scales) to keep, e.g. ``["27", "54"]`` or ``["musicnn-mtt/187"]`` (all when None).
    layers : iterable of int, optional
        1-based levels to keep (all when None).
    force : bool
        Replace an existing audio file named by ``out``.

    Returns
    -------
    report : BatchReport
        ``done`` (files embedded, one row each, in input order) and ``skipped`` (``(file, reason)``).

    Raises
    ------
    ParameterError
        Before any work: a bad suffix or selection, no audio found, or an output that cannot or must not be written.
    """
    out = Path(out)
    if out.suffix not in EMBEDDING_SUFFIXES:
        raise ParameterError(f"{out}: the embedding file must end in {' or '.join(EMBEDDING_SUFFIXES)}")
    if out.suffix == ".parquet":
        _need_pyarrow()
    check_destination(out, force=force)
    paths = [str(p) for p in paths]  # read twice: for the audio, and for what it must not overwrite
    files = audio_files(paths)
    check_not_an_input(out, files, given=paths)
    tagger = tagger or Tagger(model, device=device)
    cols = tagger.model.columns_of(scales=scales, layers=layers)
    chosen_scales, chosen_layers = tagger.model.selection(scales=scales, layers=layers)
    names, vectors = [], []
    report = BatchReport()
    shown_names, keys, stamps = _names(files), [str(f) for f in files], _stamps(files)
    with Journal.open(out, _job(tagger, job="embed", scales=chosen_scales, layers=chosen_layers)) as journal:
        remove_leftovers_of(out)  # only now, holding the journal: not what a job already writing this output is writing
        done = {_key(k, r.get("stat")): x for k, r in journal.done.items() if (x := decode_vector(r.get("vector"), len(cols))) is not None}
        wanted = [_key(k, stamp) for k, stamp in zip(keys, stamps)]
        run = lambda todo: tagger.predict_many([files[i] for i in todo], embed_only=True)
        for i, vector, r in _resumed(wanted, done, run, desc="embed"):
            if isinstance(r, TagstackError):
                _skip(report, shown_names[i], r)
                continue
            if vector is None:
                vector = r.embedding[cols]
                journal.add(keys[i], vector=encode_vector(vector), stat=stamps[i])
            vectors.append(vector)
            names.append(shown_names[i])
            report.done += 1
        _write_embeddings(out, names, vectors, chosen_scales, chosen_layers)
        journal.finish()
    _summary(report, len(files), "embedded")
    return report


def _write_embeddings(out: Path, names: list[str], vectors: list[np.ndarray], scales: list[str], layers: list[int]) -> None:
    """The embedding file, whole (nothing when no file could be embedded)."""
    if vectors:
        x = np.stack(vectors).astype(np.float32)
        if out.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            meta = {
                "tagstack.scales": json.dumps(scales),
                "tagstack.layers": json.dumps(layers),
                "tagstack.dimensions": str(x.shape[1]),
            }
            table = pa.table({"path": names, "embedding": list(x)}).replace_schema_metadata(meta)
            atomic_write(out, lambda tmp: pq.write_table(table, tmp), suffix=".parquet")
        else:

            def write(tmp: str) -> None:
                with open(tmp, "wb") as fh:
                    np.savez(fh, embeddings=x, paths=np.array(names), scales=np.array(scales), layers=np.array(layers))

            atomic_write(out, write, suffix=".npz")
        log.info("%d embeddings of %d dimensions (scales %s, layers %s) written to %s", len(names), x.shape[1], scales, layers, out)


def _need_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ParameterError("writing .parquet needs pyarrow: pip install 'tagstack[parquet]'") from None


def _skip(report: BatchReport, name: str, error: TagstackError) -> None:
    reason = shown(str(error))
    report.skipped.append((name, reason))
    log.warning("skipped %s", reason)


def _summary(report: BatchReport, total: int, verb: str) -> None:
    if report.skipped:
        log.warning("%d of %d files could not be %s", len(report.skipped), total, verb)


#: Output stems are cut to this many characters, so that ``stem.taggram.png`` fits the usual 255-byte limit on names.
MAX_STEM = 180


def unique_stems(files: list[Path]) -> list[str]:
    """File stems for output names, numbered where two files share one (a/x.mp3, b/x.mp3 -> x, x-2), cut to ``MAX_STEM``
    characters (UTF-8 bytes may be more: cut further until they fit)."""
    used: set[str] = set()
    stems = []
    for f in files:
        base = f.stem[:MAX_STEM]
        while len(base.encode("utf-8", "surrogateescape")) > MAX_STEM:
            base = base[:-1]
        stem, n = base, 1
        while stem in used:
            n += 1
            stem = f"{base}-{n}"
        used.add(stem)
        stems.append(stem)
    return stems


__all__ = [
    "BatchReport",
    "FORMATS",
    "MAX_STEM",
    "audio_files",
    "check_destination",
    "check_not_an_input",
    "embed_files",
    "tag_files",
    "unique_stems",
]
