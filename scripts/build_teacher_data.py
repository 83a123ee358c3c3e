"""Add a teacher's tags (musicnn's MTT model; optionally also its MSD model) to the real recordings, for training on more real music than has human labels.

    python scripts/build_teacher_data.py --data DATA --teacher-python /work/venv-musicnn/bin/python --penultimate MTT_musicnn

``DATA`` is the folder ``scripts/build_real_data.py`` wrote. Real labelled
music is scarce here (629 training clips of 4Q), while the Debian game
soundtracks (17 hours, GPL / CC-BY(-SA)) have no labels at all. musicnn's
MagnaTagATune model (Pons & Serra 2019; ISC licence, weights in its PyPI
wheel) tags any audio with the paper's own 50 MTAT tags, so it can serve as
a teacher: its averaged tag probabilities become soft labels (``tag=0.734``
in the manifest) for every clip, and the student (the paper's five CNNs)
learns to hear instruments, voices and genres from recordings instead of
from 629 clips of moods. ``--teachers MTT_musicnn,MSD_musicnn`` adds the
Million Song Dataset model's 50 Last.fm tags (genres, decades, vocals,
moods) as a second teacher; measured on 2026-12-02 it did not improve the
student's transfer to Emotify or its 4Q scores (docs/transfer/README.md),
so the shipped model uses the MTT teacher alone.

Steps (each resumes; rerunning skips what is done):

1. Cut every Debian track (``DATA/debian/files.csv``) into 29.1 s windows,
   keeping every other one (window k starts at ``2 k x 29.1 s``;
   ``--window-step 1`` keeps them all) so that clips of one track are not
   near-duplicates, listed in a fixed
   pseudo-random order (any prefix samples every package; ``--debian-windows
   N`` keeps the first N, which bounds the teacher's time); mono 22,050 Hz 16-bit FLAC
   through tagstack's own decoder, in ``DATA/teacher/debian/<package>/``.
2. Run ``bench/musicnn_features.py --models TEACHER`` in musicnn's own
   virtual environment (``--teacher-python``; its ``--help`` gives the
   set-up) on the 4Q clips and on those windows, two processes at once,
   for each teacher (``4q.npz``/``debian.npz`` for MTT,
   ``4q-msd.npz``/``debian-msd.npz`` for MSD).
3. Write ``DATA/teacher/manifest.csv``: 4Q clips keep their human tags and
   their split; each clip also gets the teachers' tags as soft labels
   (names in lower case; values under 0.005 left out; a tag both teachers
   have, such as rock or guitar, gets the mean of their probabilities). Where
   a teacher tag has the name of a 4Q tag (electronic, vocal, quiet, soft, new
   age, country; with MSD also jazz, folk, blues, happy, sad, sexy, mellow,
   easy listening) the human label wins on 4Q clips. Debian windows are split by track (80/10/10, seeded), so no track
   is in two splits. A Debian window was never annotated with 4Q's moods,
   genres and quadrants: those tags (except the teachers' own) are listed in
   its ``unknown`` column, so that they count neither as negatives in
   training nor in evaluation. With ``--penultimate MODELS`` it also writes
   ``DATA/teacher/manifest-distill.csv``: the same clips and tags, plus, for
   every clip, those teachers' penultimate-layer features (musicnn's 200-d
   embedding), each dimension replaced by its quantile over all clips, as
   soft labels named ``msd penultimate 000`` ..., so that the student's
   CNNs learn to order clips the way the teacher's embedding does
   (``scripts/train_default_model.py real --distill`` trains the CNNs on it
   and the global model on ``manifest.csv``'s tags alone, so that the
   features never become tags). Emotify is not touched (it stays held out)
   and GTZAN is never read.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 29.1  # seconds: tagstack's clip length
SR = 22050
# musicnn model -> (its prefix in bench/musicnn_features.py's .npz, suffix of the .npz file name)
TEACHERS = {"MTT_musicnn": ("mtt", ""), "MSD_musicnn": ("msd", "-msd")}
GROUP = {
    ("MTT_musicnn",): "mtat (musicnn teacher)",
    ("MSD_musicnn",): "msd (musicnn teacher)",
    ("MTT_musicnn", "MSD_musicnn"): "mtat+msd (musicnn teachers)",
}
DEFAULT_TEACHERS = ("MTT_musicnn",)
MIN_VALUE = 0.005


def cut_debian(data: Path, out: Path, step: int = 2) -> list[tuple[str, str]]:
    """Step 1: (clip path relative to ``out``, track) for every kept window (every ``step``-th), writing the missing ones."""
    import soundfile as sf

    from tagstack.audio.io import duration_seconds, load
    from tagstack.fileio import atomic_write_bytes

    from tagstack.errors import TagstackError

    clips: list[tuple[str, str]] = []
    with open(data / "debian" / "files.csv", newline="", encoding="utf-8") as fh:
        tracks = list(csv.DictReader(fh))
    for i, t in enumerate(tracks):
        src = data / "debian" / t["path"]
        try:
            n = int(duration_seconds(src) // WINDOW)
        except TagstackError as e:  # one unreadable track is reported, the others are cut
            print(f"[cut {i + 1}/{len(tracks)}] skipped: {e}", file=sys.stderr, flush=True)
            continue
        stem = Path(t["path"]).with_suffix("")
        for k in range(0, n, step):
            rel = f"debian/{stem}-{k:03d}.flac"
            clips.append((rel, t["path"]))
            dst = out / rel
            if dst.exists():
                continue
            y = load(src, sr=SR, offset=k * WINDOW, duration=WINDOW)
            buf = io.BytesIO()
            sf.write(buf, np.clip(y, -1.0, 1.0), SR, format="FLAC", subtype="PCM_16")
            dst.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dst, buf.getvalue())
        print(f"[cut {i + 1}/{len(tracks)}] {t['path']}: {len(range(0, n, step))} windows", file=sys.stderr, flush=True)
    return clips


def run_teacher(python: str, jobs: list[tuple[Path, Path]], teachers: tuple[str, ...]) -> None:
    """Step 2: for each teacher, one musicnn process per (input list, output .npz stem), at once; fail if any fails."""
    for teacher in teachers:
        procs = []
        for inputs, stem in jobs:
            npz = teacher_npz(stem, teacher)
            cmd = [
                python,
                str(ROOT / "bench" / "musicnn_features.py"),
                str(inputs),
                "--models",
                teacher,
                "--out",
                str(npz),
                "--progress-every",
                "60",
            ]
            procs.append((npz, subprocess.Popen(cmd)))
        failed = [str(npz) for npz, p in procs if p.wait() != 0]
        if failed:
            raise SystemExit(f"musicnn failed for {', '.join(failed)}")


def teacher_npz(stem: Path, teacher: str) -> Path:
    """Where one teacher's outputs for one input list go (``4q.npz``, ``4q-msd.npz``, ...)."""
    return stem.with_name(stem.name + TEACHERS[teacher][1] + ".npz")


def per_file(npz: Path, base: Path, key: str) -> dict[str, np.ndarray]:
    """One array of a teacher's .npz (``mtt_probs``, ``mtt_penultimate`` ...) as a row per file resolved from ``base``."""
    with np.load(npz, allow_pickle=False) as z:
        return {str((base / p).resolve()): z[key][i] for i, p in enumerate(z["paths"].tolist())}


def teacher_labels(npz: Path, base: Path, teacher: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """The teacher's tag names (lower case) and, per file resolved from ``base``, its averaged probabilities."""
    prefix = TEACHERS[teacher][0]
    with np.load(npz, allow_pickle=False) as z:
        if len(z["failed"]):
            print(f"{npz}: the teacher could not read {len(z['failed'])} files: {z['failed'][:3].tolist()}", file=sys.stderr)
        tags = [str(t).lower() for t in z[f"{prefix}_tags"]]
    return tags, per_file(npz, base, f"{prefix}_probs")


def combine(parts: list[tuple[list[str], dict[str, np.ndarray]]]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Several teachers as one: the union of their tags (first teacher's order first); a tag that two teachers
    share gets the mean of their probabilities. Only files every teacher labelled are kept."""
    tags = list(dict.fromkeys(t for names, _ in parts for t in names))
    col = {t: j for j, t in enumerate(tags)}
    files = set.intersection(*(set(probs) for _, probs in parts))
    merged = {}
    for f in files:
        total, count = np.zeros(len(tags)), np.zeros(len(tags))
        for names, probs in parts:
            idx = [col[t] for t in names]
            total[idx] += probs[f]
            count[idx] += 1
        merged[f] = (total / count).astype(np.float32)
    return tags, merged


def track_splits(tracks: list[str], seed: int) -> dict[str, str]:
    """80/10/10 by track, the same for the same list and seed."""
    order = sorted(set(tracks), key=lambda t: zlib.crc32(f"{seed}:{t}".encode()))
    n = len(order)
    n_test, n_valid = round(0.1 * n), round(0.1 * n)
    return {t: "test" if i < n_test else "valid" if i < n_test + n_valid else "train" for i, t in enumerate(order)}


def quantile_labels(feats: np.ndarray) -> np.ndarray:
    """Each column replaced by its values' mid-rank quantiles in (0, 1): a feature as a soft label of the same order."""
    from scipy.stats import rankdata

    return ((rankdata(feats, axis=0) - 0.5) / len(feats)).astype(np.float32)


def write_manifest(
    data: Path,
    out: Path,
    clips: list[tuple[str, str]],
    seed: int,
    teachers: tuple[str, ...] = DEFAULT_TEACHERS,
    penultimate: tuple[str, ...] = (),
) -> dict:
    """Step 3: the combined manifest (and, with ``penultimate`` teachers, the distillation manifest); returns counts."""
    from tagstack.datasets.manifest import TAG_SEPARATOR, read_manifest

    teachers = tuple(t for t in TEACHERS if t in teachers)  # one order (and tag order) whatever order they come in
    fourq = read_manifest(data / "4q" / "manifest.csv")
    per_4q = [teacher_labels(teacher_npz(out / "4q", t), data / "4q", t) for t in teachers]
    per_debian = [teacher_labels(teacher_npz(out / "debian", t), out, t) for t in teachers]
    for t, (a, _), (b, _) in zip(teachers, per_4q, per_debian):
        if a != b:
            raise SystemExit(f"the two {t} runs have different tag lists")
    tags_a, probs_a = combine(per_4q)
    _, probs_b = combine(per_debian)
    of = {tag: tuple(t for t, (names, _) in zip(teachers, per_4q) if tag in names) for tag in tags_a}
    human = set(fourq.tags)
    lines: list[list[str]] = []  # path, tags, split, unknown
    feats: list[str] = []  # each line's file, for its penultimate features
    unknown = TAG_SEPARATOR.join(t for t in fourq.tags if t not in tags_a)
    counts = {"4q": 0, "debian": 0, "missing": 0}

    def soft(p: np.ndarray, skip: set[str]) -> list[str]:
        return [f"{t}={v:.3f}" for t, v in zip(tags_a, p) if v >= MIN_VALUE and t not in skip]

    for path, row, split in zip(fourq.paths, fourq.labels, fourq.splits):
        p = probs_a.get(str((data / "4q" / path).resolve()))
        if p is None:
            counts["missing"] += 1
            continue
        mine = [fourq.tags[j] for j in np.flatnonzero(row >= 0.5)]
        lines.append([Path(os.path.relpath(data / "4q" / path, out)).as_posix(), TAG_SEPARATOR.join(mine + soft(p, human)), split, ""])
        feats.append(str((data / "4q" / path).resolve()))
        counts["4q"] += 1
    splits = track_splits([t for _, t in clips], seed)
    for rel, track in clips:
        p = probs_b.get(str((out / rel).resolve()))
        if p is None:
            counts["missing"] += 1
            continue
        lines.append([rel, TAG_SEPARATOR.join(soft(p, set())), splits[track], unknown])
        feats.append(str((out / rel).resolve()))
        counts["debian"] += 1
    header = ["path", "tags", "split", "unknown"]
    write_csv(out / "manifest.csv", [header, *lines])
    feature_tags: list[str] = []
    distill = [list(line) for line in lines]
    for t in (t for t in TEACHERS if t in penultimate):
        key = f"{TEACHERS[t][0]}_penultimate"
        rows = {**per_file(teacher_npz(out / "4q", t), data / "4q", key), **per_file(teacher_npz(out / "debian", t), out, key)}
        lacking = [f for f in feats if f not in rows]
        if lacking:
            raise SystemExit(f"{t} has no penultimate features for {len(lacking)} clips (first: {lacking[0]}); rerun it")
        q = quantile_labels(np.stack([rows[f] for f in feats]))
        names = [f"{TEACHERS[t][0]} penultimate {j:03d}" for j in range(q.shape[1])]
        feature_tags += names
        for line, row in zip(distill, q):
            line[1] += TAG_SEPARATOR + TAG_SEPARATOR.join(f"{n}={v:.3f}" for n, v in zip(names, row))
    if penultimate:
        write_csv(out / "manifest-distill.csv", [header, *distill])
    else:  # never leave one that no longer matches manifest.csv's clips and splits
        (out / "manifest-distill.csv").unlink(missing_ok=True)
    write_csv(
        out / "tag_groups.csv",
        [
            ["tag", "group"],
            *sorted(fourq.groups.items()),
            *[[t, GROUP[of[t]]] for t in tags_a if t not in human],
            *[[t, "teacher features (quantiles)"] for t in feature_tags],
        ],
    )
    return counts


def write_csv(path: Path, rows: list[list[str]]) -> None:
    """``rows`` (the header first) as a CSV file, written whole or not at all."""
    from tagstack.fileio import atomic_write_text

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    atomic_write_text(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the folder scripts/build_real_data.py wrote")
    p.add_argument("--teacher-python", required=True, help="python of musicnn's virtual environment")
    p.add_argument(
        "--debian-windows",
        type=int,
        default=0,
        metavar="N",
        help="label only the first N Debian windows of the fixed order (default 0: all; the shipped model used 0 = see its card)",
    )
    p.add_argument(
        "--window-step",
        type=int,
        default=2,
        metavar="K",
        help="keep every K-th 29.1 s window of each Debian track (default 2, as the shipped model; 1: all)",
    )
    p.add_argument("--out", type=Path, help="output folder (default: DATA/teacher)")
    p.add_argument(
        "--teachers",
        default=",".join(DEFAULT_TEACHERS),
        metavar="LIST",
        help=f"comma-separated musicnn models whose tags become soft labels, from {', '.join(TEACHERS)} "
        f"(default {','.join(DEFAULT_TEACHERS)}, as the shipped model)",
    )
    p.add_argument(
        "--penultimate",
        default="",
        metavar="LIST",
        help="also write manifest-distill.csv: the tags plus these musicnn models' 200 penultimate-layer "
        "features per clip, each as its quantile over the clips, as soft labels (for "
        "scripts/train_default_model.py real --distill; the shipped model: MTT_musicnn; default: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the Debian track split (default 0)")
    a = p.parse_args(argv)
    if a.window_step < 1:
        p.error(f"--window-step must be >= 1, got {a.window_step}")
    chosen = {t.strip() for t in a.teachers.split(",") if t.strip()}
    if not chosen or not chosen <= set(TEACHERS):
        p.error(f"--teachers: choose from {', '.join(TEACHERS)} (got {a.teachers!r})")
    teachers = tuple(t for t in TEACHERS if t in chosen)
    features = {t.strip() for t in a.penultimate.split(",") if t.strip()}
    if not features <= set(TEACHERS):
        p.error(f"--penultimate: choose from {', '.join(TEACHERS)} (got {a.penultimate!r})")
    penultimate = tuple(t for t in TEACHERS if t in features)
    out = a.out or a.data / "teacher"
    clips = cut_debian(a.data, out, a.window_step)
    # a fixed pseudo-random order, so that any prefix (--debian-windows) samples every package and track
    clips.sort(key=lambda c: zlib.crc32(c[0].encode()))
    if a.debian_windows:
        clips = clips[: a.debian_windows]
    from tagstack.fileio import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "debian-clips.txt", "\n".join(rel for rel, _ in clips) + "\n")
    run_teacher(
        a.teacher_python,
        [(a.data / "4q" / "manifest.csv", out / "4q"), (out / "debian-clips.txt", out / "debian")],
        tuple(t for t in TEACHERS if t in chosen | features),
    )
    counts = write_manifest(a.data, out, clips, a.seed, teachers, penultimate)
    print(
        f"wrote {out / 'manifest.csv'}"
        + (" and manifest-distill.csv" if penultimate else "")
        + f": {counts['4q']} 4Q clips, {counts['debian']} Debian windows"
        + (f", {counts['missing']} left out (no teacher labels)" if counts["missing"] else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
