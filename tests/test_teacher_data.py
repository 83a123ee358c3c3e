"""scripts/build_teacher_data.py: cutting the Debian windows and merging a teacher's soft tags with human tags."""

import importlib.util
from pathlib import Path

import numpy as np
import soundfile as sf

from tagstack.audio.io import load
from tagstack.datasets.manifest import read_manifest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_teacher_data.py"
spec = importlib.util.spec_from_file_location("build_teacher_data", SCRIPT)
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)


def teacher_npz(path: Path, written: list[str], probs: np.ndarray, tags: list[str], prefix: str = "mtt") -> None:
    """What bench/musicnn_features.py --models MTT_musicnn (or MSD_musicnn) writes, for the fields the script reads."""
    np.savez(
        path,
        paths=np.array(written),
        failed=np.zeros((0, 2), dtype=str),
        **{f"{prefix}_probs": probs.astype(np.float32), f"{prefix}_tags": np.array(tags)},
    )


def test_windows_then_a_manifest_of_human_and_teacher_tags(tmp_path):
    data, rng = tmp_path / "data", np.random.default_rng(0)
    (data / "debian" / "pkg").mkdir(parents=True)
    (data / "4q" / "Q1").mkdir(parents=True)
    tracks = {"pkg/a.flac": 100.0, "pkg/b.flac": 40.0, "pkg/c.flac": 20.0}  # 3 windows (keep 0, 2), 1 (keep 0), none
    for rel, seconds in tracks.items():
        sf.write(data / "debian" / rel, 0.1 * rng.standard_normal((int(seconds * 8000), 2)), 8000)
    (data / "debian" / "files.csv").write_text("path,package\n" + "".join(f"{r},pkg\n" for r in tracks))
    for name in ("x", "y"):
        sf.write(data / "4q" / "Q1" / f"{name}.wav", 0.1 * rng.standard_normal(8000 * 5), 8000)
    (data / "4q" / "manifest.csv").write_text("path,tags,split\nQ1/x.wav,q1;country,train\nQ1/y.wav,q2,test\n")

    out = data / "teacher"
    clips = build.cut_debian(data, out)
    assert [c for c, _ in clips] == ["debian/pkg/a-000.flac", "debian/pkg/a-002.flac", "debian/pkg/b-000.flac"]
    window = load(out / "debian/pkg/a-002.flac", sr=build.SR)
    source = load(data / "debian/pkg/a.flac", sr=build.SR, offset=2 * build.WINDOW, duration=build.WINDOW)
    assert len(window) == len(source) == round(build.WINDOW * build.SR)
    np.testing.assert_allclose(window, source, atol=1e-4)  # 16-bit FLAC of the decoder's own samples

    tags = ["guitar", "country", "piano"]
    teacher_npz(out / "4q.npz", ["Q1/x.wav", "Q1/y.wav"], np.array([[0.9, 0.0, 0.001], [0.2, 0.7, 0.6]]), tags)
    teacher_npz(out / "debian.npz", [c for c, _ in clips], np.array([[0.1, 0.8, 0.3]] * 3), tags)
    counts = build.write_manifest(data, out, clips, seed=0, teachers=("MTT_musicnn",))
    assert counts == {"4q": 2, "debian": 3, "missing": 0}
    m = read_manifest(out / "manifest.csv")
    row = dict(zip(m.paths, m.labels))
    col = {t: j for j, t in enumerate(m.tags)}
    x, y = row["../4q/Q1/x.wav"], row["../4q/Q1/y.wav"]
    assert x[col["q1"]] == 1 and x[col["guitar"]] == np.float32(0.9) and x[col["piano"]] == 0  # 0.001 < 0.005: left out
    assert x[col["country"]] == 1 and y[col["country"]] == 0  # a 4Q tag: the human label wins over the teacher's 0.7
    assert y[col["piano"]] == np.float32(0.6)
    assert row["debian/pkg/a-000.flac"][col["country"]] == np.float32(0.8)  # no human label: the teacher's
    d = row["debian/pkg/b-000.flac"]
    assert np.isnan(d[col["q1"]]) and np.isnan(d[col["q2"]])  # never annotated with 4Q's tags: unknown, not negative
    assert not np.isnan(x).any() and not np.isnan(d[[col[t] for t in tags]]).any()  # the teacher's tags are known everywhere
    splits = dict(zip(m.paths, m.splits))
    assert splits["../4q/Q1/x.wav"] == "train" and splits["../4q/Q1/y.wav"] == "test"
    assert splits["debian/pkg/a-000.flac"] == splits["debian/pkg/a-002.flac"]  # one track, one split
    assert m.groups["guitar"] == "mtat (musicnn teacher)"

    every = build.cut_debian(data, tmp_path / "every", step=1)  # --window-step 1: every window
    assert [c for c, _ in every] == ["debian/pkg/a-000.flac", "debian/pkg/a-001.flac", "debian/pkg/a-002.flac", "debian/pkg/b-000.flac"]


def two_4q_clips(tmp_path: Path) -> tuple[Path, Path]:
    """A data folder whose 4Q manifest has two clips (x.wav: happy, train; y.wav: q2, test), and its teacher folder."""
    data = tmp_path / "data"
    (data / "4q").mkdir(parents=True)
    (data / "4q" / "manifest.csv").write_text("path,tags,split\nx.wav,happy,train\ny.wav,q2,test\n")
    out = data / "teacher"
    out.mkdir()
    return data, out


def test_two_teachers_become_one_vocabulary(tmp_path):
    """MTT and MSD musicnn tags side by side: names in lower case, a shared tag is their mean, groups say whose."""
    data, out = two_4q_clips(tmp_path)
    clips = [("debian/p/a-000.flac", "p/a.flac")]
    teacher_npz(out / "4q.npz", ["x.wav", "y.wav"], np.array([[0.9, 0.2], [0.1, 0.4]]), ["guitar", "rock"])
    teacher_npz(out / "debian.npz", [clips[0][0]], np.array([[0.3, 0.5]]), ["guitar", "rock"])
    msd = ["Rock", "Mellow", "happy"]
    teacher_npz(out / "4q-msd.npz", ["x.wav", "y.wav"], np.array([[0.6, 0.1, 0.05], [0.2, 0.7, 0.8]]), msd, "msd")
    teacher_npz(out / "debian-msd.npz", [clips[0][0]], np.array([[0.1, 0.2, 0.9]]), msd, "msd")
    assert build.write_manifest(data, out, clips, seed=0, teachers=("MSD_musicnn", "MTT_musicnn"))["debian"] == 1
    m = read_manifest(out / "manifest.csv")
    col = {t: j for j, t in enumerate(m.tags)}
    assert "Rock" not in col and "Mellow" not in col
    row = dict(zip(m.paths, m.labels))
    x, y, d = row["../4q/x.wav"], row["../4q/y.wav"], row["debian/p/a-000.flac"]
    assert x[col["rock"]] == np.float32(0.4) and d[col["rock"]] == np.float32(0.3)  # mean of the two teachers
    assert x[col["guitar"]] == np.float32(0.9) and d[col["mellow"]] == np.float32(0.2)  # one teacher's own tag
    assert x[col["happy"]] == 1 and y[col["happy"]] == 0  # a 4Q tag: the human label wins on 4Q clips
    assert d[col["happy"]] == np.float32(0.9) and np.isnan(d[col["q2"]])  # Debian: the teacher's, or unknown
    assert m.groups["guitar"] == "mtat (musicnn teacher)" and m.groups["mellow"] == "msd (musicnn teacher)"
    assert m.groups["rock"] == "mtat+msd (musicnn teachers)"


def test_penultimate_features_become_quantile_soft_labels(tmp_path):
    """--penultimate: each feature dimension, ranked over all clips, as a soft label in (0, 1) beside the tags."""
    data, out = two_4q_clips(tmp_path)
    clips = [("debian/p/a-000.flac", "p/a.flac"), ("debian/p/b-000.flac", "p/b.flac")]
    feats = {"x.wav": [0.5, -1.0], "y.wav": [-2.0, -1.0], clips[0][0]: [3.0, 0.2], clips[1][0]: [0.0, 7.0]}
    for stem, names in (("4q", ["x.wav", "y.wav"]), ("debian", [c for c, _ in clips])):
        np.savez(
            out / f"{stem}.npz",
            paths=np.array(names),
            failed=np.zeros((0, 2), dtype=str),
            mtt_tags=np.array(["rock"]),
            mtt_probs=np.full((len(names), 1), 0.5, np.float32),
            mtt_penultimate=np.array([feats[n] for n in names], np.float32),
        )
    build.write_manifest(data, out, clips, seed=0, teachers=("MTT_musicnn",), penultimate=("MTT_musicnn",))
    tags_only = read_manifest(out / "manifest.csv")
    assert not [t for t in tags_only.tags if "penultimate" in t]  # the tags alone stay apart
    m = read_manifest(out / "manifest-distill.csv")
    col = {t: j for j, t in enumerate(m.tags)}
    row = dict(zip(m.paths, m.labels))
    f0 = [row[p][col["mtt penultimate 000"]] for p in ("../4q/x.wav", "../4q/y.wav", *[c for c, _ in clips])]
    np.testing.assert_allclose(f0, [0.625, 0.125, 0.875, 0.375])  # ranks 3, 1, 4, 2 of 4, at mid-rank
    f1 = [row[p][col["mtt penultimate 001"]] for p in ("../4q/x.wav", "../4q/y.wav")]
    np.testing.assert_allclose(f1, [0.25, 0.25])  # a tie shares its mid-rank
    assert row["../4q/x.wav"][col["rock"]] == np.float32(0.5) and row["../4q/x.wav"][col["happy"]] == 1  # tags unchanged
    assert m.groups["mtt penultimate 000"] == "teacher features (quantiles)"
    assert dict(zip(m.paths, m.splits)) == dict(zip(tags_only.paths, tags_only.splits))
    # another teacher's features beside the MTT teacher's tags: its features come, its tags do not
    for stem, names in (("4q", ["x.wav", "y.wav"]), ("debian", [c for c, _ in clips])):
        np.savez(
            out / f"{stem}-msd.npz",
            paths=np.array(names),
            failed=np.zeros((0, 2), dtype=str),
            msd_tags=np.array(["pop"]),
            msd_probs=np.full((len(names), 1), 0.9, np.float32),
            msd_penultimate=np.array([feats[n] for n in names], np.float32),
        )
    build.write_manifest(data, out, clips, seed=0, teachers=("MTT_musicnn",), penultimate=("MSD_musicnn",))
    m = read_manifest(out / "manifest-distill.csv")
    assert "msd penultimate 001" in m.tags and "mtt penultimate 000" not in m.tags and "pop" not in m.tags
    build.write_manifest(data, out, clips, seed=0, teachers=("MTT_musicnn",))
    assert not (out / "manifest-distill.csv").exists()  # only when asked; an old one that may no longer match goes
