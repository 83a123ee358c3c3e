"""Every dataset adapter, on fixtures generated here in the published formats and,
where ../shared/data has them, on the real split and label files."""

import pickle
import re

import numpy as np
import pytest

from tagstack.datasets import DATASETS, load_dataset
from tagstack.datasets.mtat import BROKEN_CLIPS, camel, merge_synonyms
from tagstack.errors import DatasetError, ParameterError
from tagstack.experiments.experiment_config import ExperimentConfig


def dump(obj, path):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def decamel(tag: str) -> str:
    return re.sub(r"([A-Z])", lambda m: " " + m.group(1).lower(), tag)


def write_annotations(path, clip_ids, tags, y, paths):
    lines = ["\t".join(f'"{h}"' for h in ["clip_id", *tags, "mp3_path"])]
    for cid, row, p in zip(clip_ids, y, paths):
        lines.append("\t".join(f'"{v}"' for v in [cid, *map(int, row), p]))
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------ MagnaTagATune


@pytest.fixture
def mtat_root(tmp_path):
    rng = np.random.default_rng(0)
    tags = ["female", "woman", "female vocal"] + [f"tag{i}" for i in range(55)]
    n = 160
    ids = np.arange(n) * 7
    ids[:3] = sorted(BROKEN_CLIPS)
    paths = [f"{'0123456789abcdef'[i % 16]}/artist-album-{i:02d}-title-0-29.mp3" for i in range(n)]
    y = (rng.random((n, len(tags))) < np.linspace(0.5, 0.02, len(tags))).astype(int)
    write_annotations(tmp_path / "annotations_final.csv", ids, tags, y, paths)
    return tmp_path, tags, y, paths


def test_mtat_full_split(mtat_root):
    root, tags, y, paths = mtat_root
    clips = load_dataset("mtat", root, split="full")
    assert len(clips) == 157  # three broken clips left out
    assert len(clips.tags) == 50
    order = np.argsort(-y.sum(0), kind="stable")[:50]
    assert clips.tags == [tags[j] for j in order]
    folder = [p.split("/")[0] for p in clips.paths]
    for p, s in zip(folder, clips.splits):
        assert s == ("train" if p in "0123456789ab" else "valid" if p == "c" else "test")
    merged = load_dataset("mtat", root, split="full", merge=True)
    assert "woman" not in merged.tags and "female" in merged.tags


def test_mtat_merge_synonyms_ors_columns():
    names, y = merge_synonyms(["woman", "rock", "female"], np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float))
    assert names == ["female", "rock"]
    np.testing.assert_array_equal(y, [[1, 0], [0, 1], [1, 0]])


def test_mtat_lee_split_from_generated_files(mtat_root):
    root, tags, y, paths = mtat_root
    top = [camel(t) for t in tags[:50]]
    assert "femaleVocal" in top
    (root / "top50_tags.txt").write_text("\n".join(top))
    dump([p.replace(".mp3", ".npy") for p in paths[:100]], root / "train_list_pub.cP")
    for name, sl in (("valid", slice(100, 120)), ("test", slice(120, 160))):
        dump([p.replace(".mp3", ".npy") for p in paths[sl]], root / f"{name}_list_pub.cP")
        np.save(root / f"y_{name}_pub.npy", y[sl, :50].astype(np.float64))
    clips = load_dataset("mtat", root, split="lee")
    assert [int((clips.splits == s).sum()) for s in ("train", "valid", "test")] == [100, 20, 40]
    np.testing.assert_array_equal(clips.labels, y[:, :50])
    assert clips.paths[0].endswith(".mp3")


def test_mtat_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="annotations_final.csv not found"):
        load_dataset("mtat", tmp_path, split="full")
    (tmp_path / "annotations_final.csv").write_text('"id"\t"x"\n')
    with pytest.raises(DatasetError, match="annotations_final.csv.*header"):
        load_dataset("mtat", tmp_path, split="full")
    with pytest.raises(ParameterError, match="its splits: lee, full"):
        write_annotations(tmp_path / "annotations_final.csv", [1], ["a"], [[1]], ["0/a.mp3"])
        load_dataset("mtat", tmp_path, split="other")


def test_mtat_lee_real_split_files(shared_data, tmp_path):
    split_dir = shared_data / "splits" / "mtat-lee"
    top50 = (split_dir / "top50_tags.txt").read_text().split()
    train = [p.replace(".npy", ".mp3") for p in pickle.load(open(split_dir / "train_list_pub.cP", "rb"), encoding="latin1")]
    rng = np.random.default_rng(0)
    tags = [decamel(t) for t in top50] + [f"other{i}" for i in range(138)]
    y = (rng.random((len(train), len(tags))) < 0.1).astype(int)
    write_annotations(tmp_path / "annotations_final.csv", np.arange(len(train)), tags, y, train)
    clips = load_dataset("mtat", tmp_path, split="lee", split_dir=split_dir)
    assert [int((clips.splits == s).sum()) for s in ("train", "valid", "test")] == [15244, 1529, 4332]
    assert clips.tags == top50
    np.testing.assert_array_equal(clips.labels[clips.indices("test")], np.load(split_dir / "y_test_pub.npy"))
    np.testing.assert_array_equal(clips.labels[clips.indices("train")], y[:, :50])


def test_mtat_full_split_matches_pons_index(shared_data, tmp_path):
    index = [l.split("\t") for l in (shared_data / "splits" / "mtat-pons" / "index_mtt.tsv").read_text().splitlines() if l]
    ids = [int(i) for i, _ in index]
    paths = [p for _, p in index]
    tags = [f"t{i}" for i in range(60)]
    y = (np.random.default_rng(0).random((len(ids), 60)) < 0.05).astype(int)
    write_annotations(tmp_path / "annotations_final.csv", ids, tags, y, paths)
    clips = load_dataset("mtat", tmp_path, split="full")
    expected_test = {l.split("\t")[0] for l in (shared_data / "splits" / "mtat-pons" / "test_gt_mtt.tsv").read_text().splitlines() if l}
    id_of = dict(zip(paths, ids))
    got_test = {str(id_of[p]) for p in np.array(clips.paths)[clips.indices("test")]}
    assert not {str(c) for c in BROKEN_CLIPS} & got_test
    assert len(got_test ^ expected_test) <= 3


# ------------------------------------------------------------------ MSD and Tagtraum


def _msd_maps(root, ids):
    dump({t: 1000 + i for i, t in enumerate(ids)}, root / "MSD_id_to_7D_id.pkl")
    dump({1000 + i: f"{i % 10}/{i}/{1000 + i}.clip.mp3" for i in range(len(ids) - 1)}, root / "7D_id_to_path.pkl")  # last id: no audio


def test_msd_from_generated_files(tmp_path):
    ids = [f"TR{i:016d}" for i in range(12)]
    (tmp_path / "50tagList.txt").write_text("\n".join(["rock", "Mellow"] + [f"t{i}" for i in range(48)]))
    dump(ids[:8], tmp_path / "filtered_list_train.cP")
    dump(ids[8:], tmp_path / "filtered_list_test.cP")
    dump({t: np.arange(50) % (i + 2) == 0 for i, t in enumerate(ids)}, tmp_path / "msd_id_to_tag_vector.cP")
    _msd_maps(tmp_path, ids)
    clips = load_dataset("msd", tmp_path)
    assert len(clips) == 11 and clips.tags[1] == "Mellow"
    assert list(clips.splits[:8]) == ["train"] * 8  # fewer than 201,680 ids: all train
    assert clips.paths[0] == "0/0/1000.clip.mp3"


def test_tagtraum_from_generated_files(tmp_path):
    ids = [f"TR{i:016d}" for i in range(10)]
    lines = ["# comment", *(f"{t}\t{['Rock', 'Jazz', 'Pop'][i % 3]}" + ("\tBlues" if i == 0 else "") for i, t in enumerate(ids))]
    (tmp_path / "msd_tagtraum_cd2c.cls").write_text("\n".join(lines))
    dump(ids[:7], tmp_path / "train_list.cP")
    dump(ids[7:], tmp_path / "test_list.cP")
    _msd_maps(tmp_path, ids)
    clips = load_dataset("tagtraum", tmp_path)
    assert clips.task == "multiclass" and clips.tags == ["Jazz", "Pop", "Rock"]
    assert clips.labels[0].tolist() == [0, 0, 1]
    (tmp_path / "msd_tagtraum_cd2c.cls").write_text("TRX\n")
    with pytest.raises(DatasetError, match="msd_tagtraum_cd2c.cls, line 1"):
        load_dataset("tagtraum", tmp_path)


def test_msd_and_tagtraum_real_test_lists(shared_data, tmp_path):
    test_ids = pickle.load(open(shared_data / "splits" / "msd-lee" / "filtered_list_test.cP", "rb"), encoding="latin1")
    assert len(test_ids) == 28435
    train = [f"TRFAKE{i:012d}" for i in range(5)]
    dump(train, tmp_path / "filtered_list_train.cP")
    dump({t: np.zeros(50, bool) for t in train + test_ids}, tmp_path / "msd_id_to_tag_vector.cP")
    _msd_maps(tmp_path, train + test_ids)
    clips = load_dataset("msd", tmp_path, split_dir=shared_data / "splits" / "msd-lee")
    assert int((clips.splits == "test").sum()) == 28434  # one id left without audio by the fixture map
    assert clips.tags[5] == "female vocalists" and len(clips.tags) == 50


# ------------------------------------------------------------------ GTZAN


def _gtzan_audio(root, n=10):
    from tagstack.datasets.gtzan import GENRES

    for g in GENRES:
        (root / "genres" / g).mkdir(parents=True)
        for i in range(n):
            (root / "genres" / g / f"{g}.{i:05d}.au").write_bytes(b"x")


def test_gtzan_kfold_is_stratified_and_complete(tmp_path):
    _gtzan_audio(tmp_path)
    seen_test = set()
    for k in range(5):
        clips = load_dataset("gtzan", tmp_path, split=f"kfold-{k}-5")
        assert len(clips) == 100 and clips.task == "multiclass"
        test = clips.indices("test")
        assert clips.labels[test].sum(axis=0).tolist() == [2] * 10
        seen_test |= {clips.paths[i] for i in test}
    assert len(seen_test) == 100
    with pytest.raises(ParameterError, match="kfold"):
        load_dataset("gtzan", tmp_path, split="kfold-5-5")


def test_gtzan_fault_filtered_real_lists(shared_data, tmp_path):
    _gtzan_audio(tmp_path, n=100)
    clips = load_dataset("gtzan", tmp_path, split_dir=shared_data / "splits" / "gtzan-fault-filtered")
    assert [int((clips.splits == s).sum()) for s in ("train", "valid", "test")] == [443, 197, 290]
    assert clips.paths[0] == "blues/blues.00029.au"  # the listed .wav resolved to the .au on disk
    assert clips.labels.sum() == 930


# ------------------------------------------------------------------ MTG-Jamendo


def test_jamendo_generated_and_errors(tmp_path):
    header = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"
    for name in ("train", "validation", "test"):
        rows = [f"track_{i}\tartist_{i}\talbum_{i}\t{i:02d}/{i}.mp3\t200.0\tgenre---rock\tmood/theme---happy" for i in range(3)]
        (tmp_path / f"autotagging_top50tags-{name}.tsv").write_text("\n".join([header, *rows]))
    clips = load_dataset("jamendo", tmp_path)
    assert clips.tags == ["genre---rock", "mood/theme---happy"] and len(clips) == 9
    assert clips.groups == {"genre---rock": "genre", "mood/theme---happy": "mood/theme"}
    (tmp_path / "autotagging_top50tags-test.tsv").write_text(header + "\ntrack\tshort\n")
    with pytest.raises(DatasetError, match="test.tsv, line 2"):
        load_dataset("jamendo", tmp_path)
    (tmp_path / "autotagging_top50tags-test.tsv").write_text(header + "\n\n\ntrack\tshort\n")  # blank lines still count
    with pytest.raises(DatasetError, match="test.tsv, line 4"):
        load_dataset("jamendo", tmp_path)


def test_jamendo_reads_the_split_asked_for_and_every_adapter_refuses_splits_it_lacks(tmp_path):
    from tagstack.evaluation.assess import tag_key

    header = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"
    for k, n in (("0", 2), ("3", 4)):  # MTG's layout: splits/split-N/autotagging_top50tags-*.tsv
        (tmp_path / f"split-{k}").mkdir()
        for name in ("train", "validation", "test"):
            rows = [f"track_{i}\tartist\talbum\t{i:02d}/{i}.mp3\t200.0\tgenre---rock" for i in range(n)]
            (tmp_path / f"split-{k}" / f"autotagging_top50tags-{name}.tsv").write_text("\n".join([header, *rows]))
    assert len(load_dataset("jamendo", tmp_path)) == 6
    three = load_dataset("jamendo", tmp_path, split="3")
    assert len(three) == 12 and three.name == "mtg-jamendo-3"
    assert len(load_dataset("jamendo", tmp_path / "split-0", split="3", split_dir=tmp_path / "split-3")) == 12
    with pytest.raises(DatasetError, match="split 2: no split-2 folder"):
        load_dataset("jamendo", tmp_path, split="2")
    for name, split, known in (
        ("jamendo", "banana", "0-4"),
        ("msd", "full", "lee"),
        ("tagtraum", "3", "lee"),
        ("mtat", "kfold-0-5", "lee, full"),
        ("manifest", "lee", "no split schemes"),
    ):
        with pytest.raises(ParameterError, match=f"dataset '{name}' has no split '{split}'.*{known}"):
            load_dataset(name, tmp_path, split=split)
    with pytest.raises(ParameterError, match="has no split 'banana'"):
        ExperimentConfig(dataset="jamendo", root=str(tmp_path), split="banana")
    # and a model's tags meet MTG-Jamendo's across its category prefixes
    assert tag_key("genre---rock") == tag_key("Rock") and tag_key("mood/theme---happy") == "happy"


def test_jamendo_real_split_files(shared_data, tmp_path):
    clips = load_dataset("jamendo", tmp_path, split_dir=shared_data / "splits" / "mtg-jamendo")
    assert len(clips.tags) == 50
    assert all(clips.labels[clips.indices(s)].sum(axis=0).min() > 0 for s in ("train", "valid", "test"))


def test_every_adapter_is_listed():
    assert {"corpus", "manifest", "folders", "mtat", "msd", "tagtraum", "gtzan", "jamendo"} <= set(DATASETS)


@pytest.mark.slow
def test_cli_runs_the_three_stages_on_a_dataset_by_name(tmp_path):
    """`tagstack run --dataset gtzan ...` on generated GTZAN-format audio."""
    import soundfile as sf
    import tomli_w

    from synth import SR, TEST_FRONTEND, render
    from tagstack.cli import main
    from tagstack.config import TrainConfig, to_dict
    from tagstack.experiments.experiment_config import ExperimentConfig
    from tagstack.datasets.gtzan import GENRES

    rng = np.random.default_rng(0)
    content = {"blues": {"low"}, "classical": {"high"}, "country": {"pulse"}}
    for g in GENRES[:3]:
        (tmp_path / "genres" / g).mkdir(parents=True)
        for i in range(10):
            sf.write(tmp_path / "genres" / g / f"{g}.{i:05d}.wav", render(content[g], 5.0, rng), SR)
    cfg = ExperimentConfig(
        dataset="gtzan",
        root=str(tmp_path),
        split="kfold-0-5",
        scales=(27,),
        frontend=TEST_FRONTEND,
        local=TrainConfig(max_epochs=3, lr_stages=1),
        global_=TrainConfig(max_epochs=10, batch_size=8, lr_stages=1),
        cache_dir=str(tmp_path / "cache"),
        workers=1,
    )
    (tmp_path / "config.toml").write_text(tomli_w.dumps(to_dict(cfg)))
    assert main(["run", "--config", str(tmp_path / "config.toml"), "--out", str(tmp_path / "run")]) == 0
    import json

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"] == "gtzan-kfold-0-5" and "accuracy" in metrics["global"]
    assert metrics["global"]["accuracy"] > 0.6  # three separable classes
