"""Tags of whole real recordings, the student beside its teacher: the table of docs/real-examples.md.

    python bench/real_examples.py --data DATA [--model real] TRACK ...

``TRACK`` is a path under ``DATA/debian`` (as in ``DATA/debian/files.csv``).
Each track is tagged whole with the model (all its 29.1 s windows, as
``tagstack tag`` does), and printed as one Markdown row: the model's top 5
over all its tags, its top 5 within each tag group (``--per-group``), and the
top 5 of the teacher (musicnn's MTT model) averaged over the windows of the
track that ``scripts/build_teacher_data.py`` labelled (``DATA/teacher/debian.npz``).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def short(pairs: list[tuple[str, float]]) -> str:
    return ", ".join(f"{t} {p:.2f}".replace(" 0.", " .") for t, p in pairs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("tracks", nargs="+", help="paths under DATA/debian")
    p.add_argument("--data", type=Path, required=True, help="the folder scripts/build_real_data.py wrote")
    p.add_argument("--model", default="real", help="model file or shipped model name (default: real)")
    p.add_argument("--groups", default="", help="comma-separated groups to show (default: every group of the model)")
    a = p.parse_args()

    from tagstack import Tagger

    tagger = Tagger(a.model, device="cpu")
    with np.load(a.data / "teacher" / "debian.npz", allow_pickle=False) as z:
        teacher_tags = [str(t) for t in z["mtt_tags"]]
        windows = {str(w): z["mtt_probs"][i] for i, w in enumerate(z["paths"].tolist())}
    with open(a.data / "debian" / "files.csv", newline="", encoding="utf-8") as fh:
        package = {r["path"]: r["package"] for r in csv.DictReader(fh)}
    groups = [g for g in a.groups.split(",") if g] or list(dict.fromkeys(tagger.model.groups.get(t, "other") for t in tagger.tags))
    print(
        "| recording (package, duration) | top 5 of all tags | "
        + " | ".join(f"top 5: {g}" for g in groups)
        + " | teacher (musicnn MTT), top 5 |"
    )
    print("|---" * (3 + len(groups)) + "|")
    for track in a.tracks:
        r = tagger.predict(a.data / "debian" / track)
        stem = "debian/" + str(Path(track).with_suffix(""))
        mine = [v for w, v in windows.items() if w.startswith(stem + "-")]
        teacher = np.mean(mine, axis=0) if mine else None
        top_teacher = "" if teacher is None else short([(teacher_tags[j], float(teacher[j])) for j in np.argsort(-teacher)[:5]])
        per_group = r.top(5, per_group=True)
        cells = [short([(t, q) for t, q in per_group if r.group_of(t) == g]) for g in groups]
        name = Path(track).parent.name if Path(track).stem == "song" else Path(track).stem
        print(
            f'| "{name}" ({package.get(track, "?")}, {r.seconds:.0f} s) | {short(r.top(5))} | ' + " | ".join(cells) + f" | {top_teacher} |"
        )


if __name__ == "__main__":
    main()
