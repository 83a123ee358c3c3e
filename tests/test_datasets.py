import csv

import numpy as np
import pytest
import soundfile as sf

from tagstack.config import FrontEndConfig
from tagstack.datasets import ClipSet, load_dataset, read_folders, read_manifest, stratified_split, write_manifest
from tagstack.errors import DatasetError, ParameterError
from synth import clip_mels
from tagstack.datasets.melcache import MelCache

FE = FrontEndConfig(clip_seconds=2.0, n_frames=80)


def test_manifest_round_trip(tmp_path):
    clips = ClipSet(
        name="x",
        root=tmp_path,
        paths=["a.wav", "b c,d.wav", 'Live "at the Roxy", 1976.flac'],
        labels=np.array([[1, 0], [1, 1], [0, 1]]),
        tags=["piano", "slow"],
        splits=np.array(["train", "test", "valid"], dtype=object),
        groups={"piano": "instrument"},
    )
    write_manifest(clips, tmp_path / "manifest.csv", columns={"artist": ["A", "B, and C", '"D"']})
    back = read_manifest(tmp_path / "manifest.csv")
    assert back.paths == clips.paths and back.tags == clips.tags
    np.testing.assert_array_equal(back.labels, clips.labels)
    assert list(back.splits) == ["train", "test", "valid"] and back.groups == {"piano": "instrument"}
    with open(tmp_path / "manifest.csv", newline="") as f:  # the extra column, as a spreadsheet or pandas reads it
        assert [row[-1] for row in csv.reader(f)] == ["artist", "A", "B, and C", '"D"']
    with pytest.raises(ParameterError, match="manifest column 'split': a name the manifest's own columns have"):
        write_manifest(clips, tmp_path / "other.csv", columns={"split": ["a", "b", "c"]})


def test_manifest_unknown_column_marks_tags_and_groups_unknown_and_round_trips(tmp_path):
    (tmp_path / "tag_groups.csv").write_text("tag,group\nhappy,mood\nsad,mood\nguitar,instrument\n")
    (tmp_path / "manifest.csv").write_text(
        "path,tags,split,unknown\na.wav,happy;guitar=0.8,train,\nb.wav,sad,valid,guitar\nc.wav,guitar=0.6,test,mood\n"
    )
    clips = read_manifest(tmp_path / "manifest.csv")
    assert clips.tags == ["guitar", "happy", "sad"]
    np.testing.assert_array_equal(clips.labels, np.array([[0.8, 1, 0], [np.nan, 0, 1], [0.6, np.nan, np.nan]], np.float32))
    assert "clips" in clips.summary()  # counts ignore unknown labels instead of failing on NaN
    (tmp_path / "copy").mkdir()
    write_manifest(clips, tmp_path / "copy" / "manifest.csv")
    back = read_manifest(tmp_path / "copy" / "manifest.csv")
    np.testing.assert_array_equal(back.labels, clips.labels)
    assert back.groups == clips.groups
    only_c = clips.subset([2])  # its mood tags are all unknown, none positive: they leave the vocabulary
    write_manifest(only_c, tmp_path / "copy" / "c.csv")
    back = read_manifest(tmp_path / "copy" / "c.csv")
    assert back.tags == ["guitar"] and np.isclose(back.labels[0, 0], 0.6)


def test_manifest_unknown_column_errors_name_the_line(tmp_path):
    (tmp_path / "m.csv").write_text("path,tags,split,unknown\na.wav,happy,train,tempo\n")
    with pytest.raises(DatasetError, match=r"m.csv, line 2: unknown 'tempo' is neither a tag"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "tag_groups.csv").write_text("tag,group\nsad,mood\n")
    (tmp_path / "g.csv").write_text("path,tags,split,unknown\na.wav,happy,train,mood\n")
    with pytest.raises(DatasetError, match=r"g.csv, line 2: unknown 'mood': no tag of this group"):
        read_manifest(tmp_path / "g.csv")
    (tmp_path / "n.csv").write_text("path,tags,split,unknown\na.wav,happy,train,happy\n")
    with pytest.raises(DatasetError, match=r"n.csv, line 2: tag 'happy' is both labelled and listed as unknown"):
        read_manifest(tmp_path / "n.csv")
    (tmp_path / "tag_groups.csv").write_text("tag,group\nhappy,mood\nsad,\n")
    (tmp_path / "n.csv").write_text("path,tags,split\na.wav,happy,train\n")
    with pytest.raises(DatasetError, match=r"tag_groups.csv, line 3: the group of 'sad' must be a name of 1..100 characters"):
        read_manifest(tmp_path / "n.csv")


def test_manifest_without_split_gets_a_seeded_split(tmp_path):
    lines = ["path\ttags"] + [f"f{i}.wav\t{'rock' if i % 2 else 'jazz'};guitar" for i in range(40)]
    (tmp_path / "m.tsv").write_text("\n".join(lines))
    a, b = read_manifest(tmp_path / "m.tsv"), read_manifest(tmp_path / "m.tsv")
    assert list(a.splits) == list(b.splits)
    assert {s: int((a.splits == s).sum()) for s in ("train", "valid", "test")} == {"train": 28, "valid": 4, "test": 8}


def test_bad_manifests_name_the_file(tmp_path):
    (tmp_path / "m.csv").write_text("file,labels\nx,y\n")
    with pytest.raises(DatasetError, match="m.csv.*'path' and 'tags'"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "n.csv").write_text("path,tags,split\na.wav,x,training\n")
    with pytest.raises(DatasetError, match="n.csv.*training"):
        read_manifest(tmp_path / "n.csv")
    with pytest.raises(DatasetError, match="root not found"):
        load_dataset("manifest", tmp_path / "nowhere")


def test_folder_per_label(tmp_path):
    for genre in ("blues", "jazz"):
        (tmp_path / genre).mkdir()
        for i in range(10):
            (tmp_path / genre / f"{genre}.{i:05d}.wav").write_bytes(b"x")
    clips = read_folders(tmp_path)
    assert clips.task == "multiclass" and clips.tags == ["blues", "jazz"]
    assert clips.labels.sum(axis=1).tolist() == [1.0] * 20
    for s in ("train", "valid", "test"):  # stratified: both classes in every split
        assert clips.labels[clips.indices(s)].sum(axis=0).min() >= 1


def test_stratified_split_keeps_groups_together():
    keys = [f"piece{i // 3}" for i in range(90)]
    strata = [f"style{(i // 3) % 3}" for i in range(90)]
    assign = stratified_split(keys, strata, seed=0)
    assert set(assign) == set(keys)  # one split per piece: all three clips of a piece share it by construction
    by_style = {}
    for key, style in zip(keys, strata):
        by_style.setdefault(style, {}).setdefault(assign[key], set()).add(key)
    for style, splits in by_style.items():  # each style's 10 pieces: 7 train, 1 valid, 2 test
        assert {s: len(p) for s, p in splits.items()} == {"train": 7, "valid": 1, "test": 2}, style
    assert stratified_split(keys, strata, seed=0) == assign and stratified_split(keys, strata, seed=1) != assign


def _write(path, seconds, sr=22050):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * 330 * t), sr)


def test_mel_cache_builds_resumes_and_reports_bad_files(tmp_path):
    _write(tmp_path / "ok.wav", 2.0)
    _write(tmp_path / "short.wav", 1.0)  # padded
    _write(tmp_path / "tiny.wav", 0.1)  # too short: skipped
    (tmp_path / "broken.wav").write_bytes(b"RIFFjunk")
    paths = ["ok.wav", "short.wav", "tiny.wav", "broken.wav", "missing.wav"]
    clips = ClipSet(name="t", root=tmp_path, paths=paths, labels=np.ones((5, 1)), tags=["x"], splits=np.array(["train"] * 5, dtype=object))
    cache = MelCache(clips, cache_dir=tmp_path / "cache", frontend=FE)
    report = cache.build(workers=1, min_seconds=0.5)
    assert report["computed"] == 2 and report["cached"] == 2
    assert set(report["skipped"]) == {str(tmp_path / p) for p in ("tiny.wav", "broken.wav", "missing.wav")}
    assert "too short" in report["skipped"][str(tmp_path / "tiny.wav")]
    assert "file not found" in report["skipped"][str(tmp_path / "missing.wav")]
    assert list(report["padded"]) == [str(tmp_path / "short.wav")]
    assert cache.valid.tolist() == [True, True, False, False, False]
    # how much of each clip is audio: all of ok.wav's frames, short.wav's second of audio (the rest is padding)
    assert cache.frames.tolist() == [FE.n_frames, -(-22050 // FE.hop_length), 0, 0, 0]
    from tagstack.audio.io import load

    ref = clip_mels([load(tmp_path / "ok.wav")], config=FE)[0]
    np.testing.assert_allclose(cache.mels[0].astype(np.float32), ref, rtol=2e-3, atol=2e-3)  # float16 storage
    again = MelCache(clips, cache_dir=tmp_path / "cache", frontend=FE).build(workers=1, min_seconds=0.5)
    assert again["computed"] == 0 and again["cached"] == 2


def test_mel_cache_is_keyed_by_frontend_parameters(tmp_path):
    _write(tmp_path / "ok.wav", 2.0)
    clips = ClipSet(name="t", root=tmp_path, paths=["ok.wav"], labels=np.ones((1, 1)), tags=["x"], splits=np.array(["train"], dtype=object))
    a = MelCache(clips, cache_dir=tmp_path, frontend=FE)
    b = MelCache(clips, cache_dir=tmp_path, frontend=FrontEndConfig(clip_seconds=2.0, n_frames=80, n_mels=96))
    assert a.dir != b.dir
    b.build(workers=1)
    assert b.mels.shape == (1, 80, 96)


def test_a_file_rewritten_in_place_is_never_served_from_the_cache(tmp_path):
    """A dataset rebuilt at the same paths (new audio, same names) gets new frames, not the old file's."""
    import os

    from tagstack.audio.io import load

    _write(tmp_path / "ok.wav", 2.0)
    clips = ClipSet(name="t", root=tmp_path, paths=["ok.wav"], labels=np.ones((1, 1)), tags=["x"], splits=np.array(["train"], dtype=object))
    first = MelCache(clips, cache_dir=tmp_path / "cache", frontend=FE)
    first.build(workers=1, min_seconds=0.5)
    before = first.mels[0].astype(np.float32).copy()
    t = np.arange(int(2.0 * 22050)) / 22050
    sf.write(tmp_path / "ok.wav", (0.5 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32), 22050)  # same name, other audio
    os.utime(tmp_path / "ok.wav", ns=(1, 1))  # even with an old timestamp: the size or time differs
    second = MelCache(clips, cache_dir=tmp_path / "cache", frontend=FE)
    assert second.dir != first.dir
    assert second.build(workers=1, min_seconds=0.5)["computed"] == 1
    ref = clip_mels([load(tmp_path / "ok.wav")], config=FE)[0]
    np.testing.assert_allclose(second.mels[0].astype(np.float32), ref, rtol=2e-3, atol=2e-3)
    assert np.abs(second.mels[0].astype(np.float32) - before).max() > 1.0


def test_parallel_cache_build_matches_serial(tmp_path):
    for i in range(4):
        _write(tmp_path / f"{i}.wav", 2.0)
    clips = ClipSet(
        name="p",
        root=tmp_path,
        paths=[f"{i}.wav" for i in range(4)],
        labels=np.ones((4, 1)),
        tags=["x"],
        splits=np.array(["train"] * 4, dtype=object),
    )
    a = MelCache(clips, cache_dir=tmp_path / "a", frontend=FE)
    a.build(workers=2)
    b = MelCache(clips, cache_dir=tmp_path / "b", frontend=FE)
    b.build(workers=1)
    np.testing.assert_array_equal(np.asarray(a.mels), np.asarray(b.mels))
