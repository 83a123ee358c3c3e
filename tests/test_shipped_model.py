"""The model that ships inside the package: tag and embed on a fresh install, no training first."""

import json

import numpy as np
import pytest
import soundfile as sf

from tagstack.cli import main
from tagstack.inference.tagger import Tagger
from tagstack.models.zoo import resolve_model

DEFAULT_MODEL = resolve_model(None)

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="no shipped model in this checkout")


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("formats")
    rng = np.random.default_rng(0)
    t = np.arange(int(44100 * 12)) / 44100
    y = sum(np.sin(2 * np.pi * f * t) * np.exp(-((t % 0.5) * 4)) for f in (262, 330, 392)) * 0.2 + 0.01 * rng.standard_normal(t.size)
    stereo = np.stack([y, y], axis=1).astype(np.float32)
    for fmt, sub in (("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")):
        sf.write(d / f"piece.{fmt.lower()}", stereo, 44100, format=fmt, subtype=sub)
    return d


def test_default_model_describes_itself():
    from tagstack.models.file import read_metadata

    meta = read_metadata(DEFAULT_MODEL)
    # musicnn MTT read on 3 s segments: its front end (561), three mid-end layers (3 x 64), penultimate layer (200)
    assert list(meta["networks"]) == ["musicnn-mtt"] and [b["scale"] for b in meta["feature_layout"]] == ["musicnn-mtt/187"] * 5
    assert meta["feature_layout"][-1]["stop"] == 953
    assert meta["global"]["n_features"] == 953 and len(meta["tags"]) == meta["global"]["n_outputs"]
    assert meta["info"]["test"]["roc_auc"] > 0.7 and "command" in meta["info"]


def test_tag_every_format_with_the_default_model(audio_files, capsys):
    assert main(["tag", str(audio_files), "--format", "jsonl", "--top-k", "3"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert sorted(l["path"].rsplit(".", 1)[1] for l in lines) == ["flac", "mp3", "ogg", "wav"]
    vocabulary = set(Tagger().tags)
    for l in lines:
        assert len(l["tags"]) == 3 and set(l["tags"]) <= vocabulary and abs(l["seconds"] - 12.0) < 0.1
    probs = {l["path"].rsplit(".", 1)[1]: l["tags"] for l in lines}
    assert list(probs["wav"]) == list(probs["flac"])  # lossless formats agree


def test_embed_with_the_default_model(audio_files, tmp_path):
    assert main(["embed", str(audio_files / "piece.wav"), str(audio_files / "piece.mp3"), "--out", str(tmp_path / "e.npz")]) == 0
    x = np.load(tmp_path / "e.npz")["embeddings"]
    assert x.shape == (2, 953) and np.isfinite(x).all()
    assert np.corrcoef(x[0], x[1])[0, 1] > 0.95  # the same music in two encodings


def test_tag_a_real_dataset_clip(shared_data):
    r = Tagger().predict(shared_data / "fixtures" / "audio" / "mtat-joram-moments_of_clarity-08-solipsism-59-88.mp3")
    assert abs(r.seconds - 29.27) < 0.15 and np.all((r.probs >= 0) & (r.probs <= 1))


@pytest.mark.parametrize("name", ["pretrained", "pretrained-large", "pretrained-xl", "real", "real-4q", "corpus"])
def test_each_shipped_model_loads_by_name_with_its_card(name, capsys):
    from tagstack.models.zoo import zoo_path

    assert zoo_path(name).exists() and zoo_path(name).with_suffix(".md").exists()
    tagger = Tagger(name, device="cpu")
    assert tagger.model.info["name"] == f"tagstack-{name}" and "/home/" not in json.dumps(tagger.model.info)
    assert set(tagger.model.groups) == set(tagger.tags)  # every tag has its group (--per-group)
    assert main(["info", name]) == 0 and f"tagstack-{name}" in capsys.readouterr().out


def test_the_default_model_was_trained_on_real_recordings():
    meta = Tagger(device="cpu").model.info
    assert meta["name"] == "tagstack-pretrained" and "Real recordings" in meta["data"] and "GTZAN is never used" in meta["data"]


def test_the_default_model_speaks_magnatagatune_and_4q():
    """The teacher's 50 MTAT tags (minus the six named like 4Q tags) beside 4Q's 152 human tags."""
    tags = set(Tagger(device="cpu").tags)
    assert {"guitar", "piano", "drums", "female vocal", "techno", "classical", "rock"} <= tags
    assert {"q1", "q4", "angry", "calm", "pop/rock", "jazz"} <= tags and len(tags) == 196
    assert set(Tagger("real-4q", device="cpu").tags) <= tags and set(Tagger("real", device="cpu").tags) == tags
