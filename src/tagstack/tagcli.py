"""Output formatting of ``tagstack tag`` and ``tagstack embed`` (files in, table/JSON/CSV/arrays out).

A file that cannot be read is reported on stderr with the reason and the
others are still processed; the exit status is then 1.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .audio import find_audio
from .errors import ParameterError, TagstackError
from .fileio import atomic_save_npy, atomic_write, atomic_write_text
from .inference import Tagger


def _files(paths: list[str]) -> list[Path]:
    files = find_audio(paths)
    if not files:
        raise ParameterError(f"no audio files found in {paths}")
    return files


def write_taggram(result, out_dir: Path, stem: str, clip_seconds: float) -> None:
    """A file's taggram as ``stem``.taggram.npy, .csv (window start and end, tag probabilities) and .png."""
    from .report import _plt, save_figure

    atomic_save_npy(out_dir / f"{stem}.taggram.npy", result.taggram.astype(np.float32))
    ends = np.minimum(result.window_starts + clip_seconds, result.seconds)
    lines = ["start_s,end_s," + ",".join(result.tags)]
    lines += [f"{t:.2f},{e:.2f}," + ",".join(f"{v:.4f}" for v in row)
              for t, e, row in zip(result.window_starts, ends, result.taggram)]
    atomic_write_text(out_dir / f"{stem}.taggram.csv", "\n".join(lines) + "\n")
    # each column drawn at its window's centre, as wide as the gaps to its neighbours
    centres = (result.window_starts + ends) / 2
    edges = np.concatenate([[0.0], (centres[1:] + centres[:-1]) / 2, [result.seconds]]) if len(centres) > 1 else np.array([0.0, result.seconds])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(min(20, max(6, 0.5 * len(result.taggram) + 3)), 0.18 * len(result.tags) + 1.5))
    im = ax.pcolormesh(edges, np.arange(len(result.tags) + 1) - 0.5, result.taggram.T, cmap="magma", vmin=0, vmax=1)
    ax.set_yticks(range(len(result.tags)), result.tags, fontsize=7)
    ax.set(xlabel=f"time (s); each column a {clip_seconds:g} s window, drawn at its centre", title=f"taggram: {Path(result.path).name}")
    fig.colorbar(im, ax=ax, label="probability")
    save_figure(fig, out_dir / f"{stem}.taggram.png")


def _unique_stems(files: list[Path]) -> list[str]:
    """File stems for output names, numbered where two files share one (a/x.mp3, b/x.mp3 -> x, x-2)."""
    used: set[str] = set()
    stems = []
    for f in files:
        stem, n = f.stem, 1
        while stem in used:
            n += 1
            stem = f"{f.stem}-{n}"
        used.add(stem)
        stems.append(stem)
    return stems


def tag_files(a: argparse.Namespace) -> int:
    """``tagstack tag``: tag every file; report unreadable ones and return 1 if any."""
    if a.hop is not None and (a.taggram is None or not a.hop > 0):
        raise ParameterError(f"--hop {a.hop} needs --taggram DIR and a positive number of seconds")
    files = _files(a.paths)
    tagger = Tagger(a.model, device=a.device)
    out = open(a.output, "w", newline="") if a.output else sys.stdout
    failed = 0
    writer = csv.writer(out) if a.format == "csv" else None
    if writer:
        writer.writerow(["path", "tag", "probability"])
    try:
        results = tagger.predict_many(files, taggram=a.taggram is not None, hop=a.hop)
        stems = _unique_stems(files)
        for f, stem, r in zip(files, stems, tqdm(results, total=len(files), desc="tag", unit="file", disable=len(files) < 2 or None)):
            if isinstance(r, TagstackError):
                print(f"tagstack: skipped {r}", file=sys.stderr)
                failed += 1
                continue
            top = r.top(a.top_k or None, a.threshold)
            if a.taggram is not None:
                write_taggram(r, a.taggram, stem, tagger.cfg.clip_seconds)
            if a.format == "jsonl":
                out.write(json.dumps({"path": str(f), "seconds": round(r.seconds, 2), "tags": {t: round(p, 4) for t, p in top}}) + "\n")
            elif writer:
                for t, p in top:
                    writer.writerow([str(f), t, f"{p:.4f}"])
            else:
                out.write(f"{f}  ({r.seconds:.1f} s)\n" + "".join(f"    {t:<16} {p:.3f}\n" for t, p in top))
            out.flush()
    finally:
        if a.output:
            out.close()
    if failed:
        print(f"tagstack: {failed} of {len(files)} files could not be tagged", file=sys.stderr)
    return 1 if failed else 0


def embed_files(a: argparse.Namespace) -> int:
    """``tagstack embed``: one feature vector per readable file, saved as .npy (+ .txt names) or .parquet."""
    files = _files(a.paths)
    tagger = Tagger(a.model, device=a.device)
    from .aggregation import select_columns

    cols = select_columns(tagger.model.layout, scales=a.scales, layers=a.layers)
    names, vectors, failed = [], [], 0
    for f, r in zip(files, tqdm(tagger.predict_many(files), total=len(files), desc="embed", unit="file", disable=len(files) < 2 or None)):
        if isinstance(r, TagstackError):
            print(f"tagstack: skipped {r}", file=sys.stderr)
            failed += 1
            continue
        vectors.append(r.embedding[cols])
        names.append(str(f))
    if vectors:
        x = np.stack(vectors).astype(np.float32)
        out = Path(a.out)
        if out.suffix == ".parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise ParameterError("writing .parquet needs pyarrow: pip install 'tagstack[parquet]'") from None
            table = pa.table({"path": names, "embedding": list(x)})
            atomic_write(out, lambda tmp: pq.write_table(table, tmp), suffix=".parquet")
        else:
            atomic_save_npy(out.with_suffix(".npy"), x)
            atomic_write_text(out.with_suffix(".txt"), "\n".join(names) + "\n")
        print(f"{len(names)} embeddings of {x.shape[1]} dimensions written to {out}")
    if failed:
        print(f"tagstack: {failed} of {len(files)} files could not be embedded", file=sys.stderr)
    return 1 if failed else 0
