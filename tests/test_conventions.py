"""Contracts every dataset adapter and every shipped model keeps (scikit-learn checks every estimator; timm every model).

A new adapter registered in ``DATASETS`` or a new model in ``ZOO`` is checked here without a line of test code: an
adapter needs only a small generated dataset in its own format in ``BUILDERS``.
"""

import inspect
import json
import pickle

import numpy as np
import pytest

from tagstack.datasets import DATASETS, SPLITS, load_dataset
from tagstack.errors import DatasetError
from tagstack.inference.tagger import Tagger
from tagstack.models.file import read_metadata, save_model
from tagstack.models.zoo import ZOO, zoo_path


def _dump(obj, path):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _manifest(root):
    rows = [f"clips/{i}.wav,{'rock;loud' if i % 2 else 'calm'},{['train', 'valid', 'test'][i % 3]}" for i in range(12)]
    (root / "manifest.csv").write_text("path,tags,split\n" + "\n".join(rows) + "\n")
    return {}


def _folders(root):
    for label in ("jazz", "rock"):
        (root / label).mkdir()
        for i in range(10):
            (root / label / f"{i}.wav").write_bytes(b"x")
    return {}


def _gtzan(root):
    from tagstack.datasets.gtzan import GENRES

    for g in GENRES:
        (root / "genres" / g).mkdir(parents=True)
        for i in range(5):
            (root / "genres" / g / f"{g}.{i:05d}.au").write_bytes(b"x")
    return {"split": "kfold-0-5"}


def _jamendo(root):
    header = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"
    for name in ("train", "validation", "test"):
        rows = [f"track_{name}{i}\tartist\talbum\t{i:02d}/{name}{i}.mp3\t200.0\tgenre---rock\tmood/theme---happy" for i in range(3)]
        (root / f"autotagging_top50tags-{name}.tsv").write_text("\n".join([header, *rows]))
    return {}


def _mtat(root):
    tags = [f"tag{i}" for i in range(55)]
    rng = np.random.default_rng(0)
    lines = ["\t".join(f'"{h}"' for h in ["clip_id", *tags, "mp3_path"])]
    for i in range(64):
        row = (rng.random(len(tags)) < 0.3).astype(int)
        lines.append("\t".join(f'"{v}"' for v in [i + 1, *row, f"{'0123456789abcdef'[i % 16]}/a-b-{i:02d}-t-0-29.mp3"]))
    (root / "annotations_final.csv").write_text("\n".join(lines) + "\n")
    return {"split": "full"}


def _msd_common(root, ids):
    _dump({t: 1000 + i for i, t in enumerate(ids)}, root / "MSD_id_to_7D_id.pkl")
    _dump({1000 + i: f"{i % 10}/{i}/{1000 + i}.clip.mp3" for i in range(len(ids))}, root / "7D_id_to_path.pkl")


def _msd(root):
    ids = [f"TR{i:016d}" for i in range(12)]
    (root / "50tagList.txt").write_text("\n".join(f"t{i}" for i in range(50)))
    _dump(ids[:8], root / "filtered_list_train.cP")
    _dump(ids[8:], root / "filtered_list_test.cP")
    _dump({t: np.arange(50) % (i + 2) == 0 for i, t in enumerate(ids)}, root / "msd_id_to_tag_vector.cP")
    _msd_common(root, ids)
    return {}


def _tagtraum(root):
    ids = [f"TR{i:016d}" for i in range(10)]
    (root / "msd_tagtraum_cd2c.cls").write_text("\n".join(f"{t}\t{['Rock', 'Jazz'][i % 2]}" for i, t in enumerate(ids)))
    _dump(ids[:7], root / "train_list.cP")
    _dump(ids[7:], root / "test_list.cP")
    _msd_common(root, ids)
    return {}


def _corpus(root):
    _manifest(root)
    return {}


#: adapter -> a function writing a small dataset in its published format under a folder, returning load options
BUILDERS = {
    "manifest": _manifest,
    "folders": _folders,
    "gtzan": _gtzan,
    "jamendo": _jamendo,
    "mtat": _mtat,
    "msd": _msd,
    "tagtraum": _tagtraum,
    "corpus": _corpus,
}


def test_every_registered_adapter_has_a_builder_here():
    assert set(BUILDERS) == set(DATASETS)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_adapter_signature_and_docstring(name):
    """``loader(root, split, *, options...)``: the options it declares are keyword-only parameters, any other has a default."""
    adapter = DATASETS[name]
    params = inspect.signature(adapter.loader).parameters.values()
    assert [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD] == ["root", "split"]
    keyword = {p.name: p for p in params if p.kind == p.KEYWORD_ONLY}
    assert adapter.options <= set(keyword)
    assert all(p.default is not p.empty for n, p in keyword.items() if n not in adapter.options)
    assert (adapter.loader.__doc__ or "").strip() and adapter.description


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_adapter_on_an_empty_folder_is_one_line_naming_it(name, tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    with pytest.raises(DatasetError) as e:
        load_dataset(name, empty)
    assert "nothing-here" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_adapter_returns_a_clip_set_that_keeps_the_contract(name, tmp_path):
    options = BUILDERS[name](tmp_path)
    clips = load_dataset(name, tmp_path, **options)
    n, k = len(clips), len(clips.tags)
    assert n > 0 and clips.labels.shape == (n, k) and clips.labels.dtype == np.float32
    assert len(set(clips.tags)) == k and all(isinstance(t, str) and t for t in clips.tags)
    assert set(clips.splits) <= set(SPLITS) | {""} and len(clips.indices("train")) > 0
    known = clips.labels[~np.isnan(clips.labels)]
    assert ((known >= 0) & (known <= 1)).all()
    if clips.task == "multiclass":
        assert (clips.labels.sum(axis=1) == 1).all()
    assert set(clips.groups) <= set(clips.tags)
    assert all(clips.audio_path(i).is_absolute() or str(clips.audio_path(i)).startswith(str(tmp_path)) for i in range(n))
    again = load_dataset(name, tmp_path, **options)  # deterministic: the same clips, labels and split every time
    assert again.paths == clips.paths and np.array_equal(again.splits, clips.splits)
    assert np.array_equal(again.labels, clips.labels, equal_nan=True)


SHIPPED = [name for name in ZOO if zoo_path(name).exists()]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_describes_itself_and_round_trips(name, tmp_path):
    """Every shipped file: a card beside it, a header that names it and its sources, outputs finite and of the
    declared sizes on real-length audio, and the same outputs after a save and a load."""
    path = zoo_path(name)
    assert path.with_suffix(".md").is_file()
    meta = read_metadata(path)
    json.dumps(meta, allow_nan=False)  # strict JSON
    assert meta["info"]["name"] == f"tagstack-{name}"
    tagger = Tagger(path, device="cpu")
    y = (0.1 * np.random.default_rng(0).standard_normal(22050 * 6)).astype(np.float32)  # 6 s of noise at 22.05 kHz
    vector = tagger.embed(y, sr=22050)
    assert vector.shape == (meta["feature_layout"][-1]["stop"],) and np.isfinite(vector).all()
    if tagger.tags:  # a global classifier, or the network's own outputs
        probs = tagger.predict(y, sr=22050).probs
        assert probs.shape == (len(tagger.tags),) and ((probs >= 0) & (probs <= 1)).all()
    save_model(tagger.model, tmp_path / "again.safetensors")
    assert np.array_equal(Tagger(tmp_path / "again.safetensors", device="cpu").embed(y, sr=22050), vector)
    if name.startswith(("musicnn", "artist")):  # converted networks carry their provenance
        info = meta["info"]
        assert info["source"]["sha256"] and info["licence"] and info["citation"] and info["converted_by"]
