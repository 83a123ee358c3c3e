"""The pretrained backbones reproduce their originals, and every tagstack path runs them.

References were computed once with the original frameworks (TensorFlow for
musicnn, Keras for the artist CNN) by ``bench/reference_pretrained.py``, and
with Won et al.'s own PyTorch classes and torchaudio by
``bench/reference_won.py``; the fixtures hold their outputs. The network checks feed the networks the
exact inputs the originals received; the file checks decode the real
recordings of ``../shared`` through tagstack's own decoder and front end
(skipped where those files are absent).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from reference_signal import reference_music
from tagstack.audio.frontend import LogMel
from tagstack.inference.tagger import Tagger
from tagstack.models.file import load_model, read_metadata
from tagstack.models.backbones.won import SEGMENT_FRAMES as WON_SEGMENT
from tagstack.models.tagging_model import Branch, TaggingModel
from tagstack.models.zoo import ZOO, zoo_path

FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"
AUDIO = Path(__file__).resolve().parents[2] / "shared" / "data" / "fixtures" / "audio"
RECORDINGS = {
    "msd-preview": AUDIO / "msd-TRWJAZW128F42760DD.mp3",
    "mtat-clip": AUDIO / "mtat-joram-moments_of_clarity-08-solipsism-59-88.mp3",
}
MUSICNN = np.load(FIXTURES / "musicnn_reference.npz", allow_pickle=False)
ARTIST = np.load(FIXTURES / "artist_reference.npz", allow_pickle=False)
WON = np.load(FIXTURES / "won_reference.npz", allow_pickle=False)
LEVELS = {
    "timbral": (0, slice(0, 408)),
    "temporal": (0, slice(408, 561)),
    "cnn1": (1, slice(None)),
    "cnn2": (2, slice(None)),
    "cnn3": (3, slice(None)),
}


def network(name: str, which: str):
    return load_model(zoo_path(name)).local_models[which]


@pytest.mark.parametrize("which", ["msd", "mtt"])
def test_musicnn_gives_tensorflows_tags_and_features_on_the_same_input(which):
    net = network(f"musicnn-{which}", f"musicnn-{which}")
    with torch.inference_mode():
        acts, logits = net.forward_intermediates(torch.from_numpy(MUSICNN["synthetic_mel"]))
    ref = lambda what: MUSICNN[f"{which}_synthetic_{what}"]  # noqa: E731
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), ref("taggram"), atol=1e-4)
    np.testing.assert_allclose(acts[4].numpy(), ref("penultimate"), atol=1e-4)
    np.testing.assert_allclose(logits.numpy(), ref("logits"), atol=1e-4)
    for what, (level, cols) in LEVELS.items():  # per frame, max over each patch; values up to ~60
        np.testing.assert_allclose(acts[level][:, cols].amax(dim=2).numpy(), ref(what), rtol=1e-5, atol=5e-4, err_msg=what)


def literal_block(block, x: torch.Tensor) -> torch.Tensor:
    """A front-end block as TensorFlow's graph computes it: conv over (time, frequency), ReLU, batch norm, max over
    frequency, every filter computed."""
    k = block.weight.shape[2]
    conv = F.conv2d(F.pad(x[:, None], (0, 0, (k - 1) // 2, k // 2)), block.weight, block.bias)
    return block.bn(F.relu(conv)).amax(dim=3)


@pytest.mark.parametrize("which", ["msd", "mtt"])
def test_filters_that_cannot_fire_are_skipped_and_every_output_is_unchanged(which):
    """On log-mels, evaluation skips the many timbral filters of musicnn that cannot respond (training shrank
    their weights to ~1e-28 and left a negative bias); every block's output is what computing every filter gives."""
    net = network(f"musicnn-{which}", f"musicnn-{which}").eval()
    with torch.inference_mode():
        x = net.input_bn(torch.from_numpy(MUSICNN["synthetic_mel"])[:, None])[:, 0]
        for block in [*net.timbral, *net.temporal]:
            torch.testing.assert_close(block(x), literal_block(block, x), rtol=1e-5, atol=1e-5)
        skipped = sum(block.weight.shape[0] - len(block._live(x)) for block in net.timbral)
    assert skipped >= 150  # 152 of MTT's 408 timbral filters, 347 of MSD's


def random_block(kind: str, filters: int, frames: int, bands: int):
    """A front-end block of random weights and batch norm (negative scales too: filters negated for a min)."""
    from tagstack.models.backbones import musicnn

    block = getattr(musicnn, kind)(filters, frames, bands).eval()
    with torch.no_grad():
        block.weight.normal_()
        block.bias.copy_(torch.linspace(-1, 1, filters))
        block.bn.weight.normal_()
        block.bn.running_mean.normal_()
        block.bn.running_var.uniform_(0.5, 2)
    return block


def test_a_filter_is_skipped_only_where_the_inputs_range_rules_it_out():
    """A filter of non-positive weights and a negative bias cannot fire on non-negative inputs, but can on
    negative ones: skipped on the first, computed on the second, the literal output both times; a filter that
    fires only on the zeros padded at the ends is computed; and the output is right when no filter can fire."""
    torch.manual_seed(0)
    block = random_block("_Timbral", 16, 7, 38)
    with torch.no_grad():
        block.weight[:6] = -block.weight[:6].abs()
        block.weight[6], block.bias[6] = -1.0, 100.0  # -266 x [0.5, 0.6] + 100 < 0 inside; > 0 on 3 padded frames
    positive, signed, high = torch.rand(2, 50, 96), torch.randn(2, 50, 96), 0.5 + 0.1 * torch.rand(2, 50, 96)
    with torch.inference_mode():
        assert not set(range(6)) & set(block._live(positive).tolist())
        assert set(range(6)) <= set(block._live(signed).tolist())
        assert 6 in block._live(high).tolist()
        for x in (positive, signed, high):
            torch.testing.assert_close(block(x), literal_block(block, x), rtol=1e-5, atol=1e-5)
        block.weight.copy_(-block.weight.abs())
        block.bias.fill_(-1)
        assert len(block._live(positive)) == 1  # none can fire: one is computed all the same, for the shape
        torch.testing.assert_close(block(positive), literal_block(block, positive), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("budget", [1, 5000, 2**21])
def test_a_map_computed_in_parts_on_a_cpu_equals_the_whole(monkeypatch, budget):
    """On a CPU the blocks compute their maps a few clips, or a stretch of frames, at a time: one frame of one clip
    at a time (budget 1), stretches of 5 frames (5,000), whole clips (2**21): the literal output every time."""
    from tagstack.models.backbones import musicnn

    monkeypatch.setattr(musicnn, "_MAP_BUDGET", budget)
    torch.manual_seed(1)
    x = torch.rand(3, 50, 96)
    with torch.inference_mode():
        for block in (random_block("_Timbral", 16, 7, 38), random_block("_Timbral", 8, 6, 67), random_block("_Temporal", 8, 32, 1)):
            torch.testing.assert_close(block(x), literal_block(block, x), rtol=1e-5, atol=1e-5)
            assert block(x[:0]).shape == (0, block.weight.shape[0], 50)  # an empty batch too
            if isinstance(block, musicnn._Timbral):
                left, right = block.edges(x)  # a segment's first and last frames that its padding reaches
                torch.testing.assert_close(left, literal_block(block, x[:, : block.frames - 1])[:, :, : left.shape[2]])
                torch.testing.assert_close(right, literal_block(block, x[:, 1 - block.frames :])[:, :, -right.shape[2] :])
                assert left.shape[2] + right.shape[2] == block.frames - 1


def test_the_artist_cnn_gives_keras_activations_on_the_same_input():
    net = network("artist", "artist")
    # Park et al.'s log10 frames; the port reads the paper's natural-log frames (x ln 10), see models/backbones/artist.py
    x = torch.from_numpy(ARTIST["synthetic_mel"]) * math.log(10.0)
    with torch.inference_mode():
        acts, logits = net.forward_intermediates(x)
    assert logits is None
    for i, a in enumerate(acts, 1):
        np.testing.assert_allclose(a.amax(dim=2).numpy(), ARTIST[f"synthetic_layer{i}"], rtol=1e-5, atol=2e-4, err_msg=f"layer {i}")


@pytest.mark.parametrize("which", ["fcn", "crnn"])
def test_won_cnns_give_the_original_codes_activations_on_the_same_input(which):
    """Every block of Won et al.'s MSD FCN and CRNN, on the decibel mels their own torchaudio front end computed."""
    net = network(f"won-msd-{which}", f"won-msd-{which}")
    db, size = torch.from_numpy(WON["synthetic_db"]), WON_SEGMENT[which]
    n = len(db) // size
    with torch.inference_mode():
        acts, logits = net.forward_intermediates(db[: n * size].reshape(n, size, db.shape[1]))
    assert logits is None and len(acts) == (5 if which == "fcn" else 4)
    for i, a in enumerate(acts, 1):  # per frame (max over frequency), max over each segment
        np.testing.assert_allclose(a.amax(dim=2).numpy(), WON[f"{which}_synthetic_layer{i}"], rtol=1e-5, atol=1e-5, err_msg=f"layer {i}")


def test_a_won_architecture_that_cannot_be_built_is_refused_with_its_reason():
    from tagstack.errors import ParameterError
    from tagstack.models.backbones.won import Won2d, Won2dArch

    with pytest.raises(ParameterError, match="three positive ints"):
        Won2dArch(blocks=((64, 0, 4), (64, 2, 2)))
    with pytest.raises(ParameterError, match="leave no band"):
        Won2dArch(n_mels=8, blocks=((64, 4, 4), (64, 4, 4), (64, 2, 2)))
    with pytest.raises(ParameterError, match="reads 64 mel bands"):
        Won2d(Won2dArch(n_mels=64))


def test_won_cnns_front_end_is_torchaudios():
    """96 HTK mel bands of the reflect-padded power spectrum in decibels, against the dB mels torchaudio computed."""
    net = network("won-msd-fcn", "won-msd-fcn")
    ours = LogMel(net.frontend).frames_first(torch.from_numpy(reference_music(16000))).numpy()
    assert ours.shape == WON["synthetic_db"].shape
    np.testing.assert_allclose(ours, WON["synthetic_db"], atol=5e-3)  # dB, values from about -100 to +40


def test_the_front_ends_are_the_originals():
    """musicnn's log10(1 + 10^4 mel power) at 16 kHz and the artist CNN's log10(1 + 10 mel magnitude) at 22.05 kHz, against
    librosa (which both originals used)."""
    librosa = pytest.importorskip("librosa")
    net = network("musicnn-msd", "musicnn-msd")
    y = reference_music(16000)
    ours = LogMel(net.frontend).frames_first(torch.from_numpy(y)).numpy()
    ref = np.log10(1 + 1e4 * librosa.feature.melspectrogram(y=y, sr=16000, n_fft=512, hop_length=256, n_mels=96)).T
    np.testing.assert_allclose(ours, ref, atol=5e-5)
    np.testing.assert_allclose(ours[: 2 * 187].reshape(2, 187, 96), MUSICNN["synthetic_mel"], atol=5e-5)
    art = network("artist", "artist")
    y = reference_music(22050)
    ours = LogMel(art.frontend).frames_first(torch.from_numpy(y)).numpy() / math.log(10.0)
    ref = np.log10(1 + 10 * librosa.feature.melspectrogram(y=y, sr=22050, n_fft=1024, hop_length=512, n_mels=128, power=1.0)).T
    np.testing.assert_allclose(ours, ref, atol=5e-5)
    np.testing.assert_allclose(ours[: 2 * 129].reshape(2, 129, 128), ARTIST["synthetic_mel"], atol=5e-5)


@pytest.mark.skipif(not all(p.exists() for p in RECORDINGS.values()), reason="no ../shared audio fixtures")
@pytest.mark.parametrize("recording", sorted(RECORDINGS))
def test_tagging_a_real_recording_gives_the_originals_outputs(recording):
    """From the mp3 file through tagstack's decoder, front end and Tagger: musicnn's own tags and penultimate features
    (musicnn averages them over its 3 s patches; the tagger over the same patches of the file's first 29.1 s window,
    the second window holding no whole patch), and Park et al.'s artist embedding."""
    path = RECORDINGS[recording]
    for which in ("msd", "mtt"):
        result = Tagger(f"musicnn-{which}", device="cpu").predict(path)
        taggram, penultimate = MUSICNN[f"{which}_{recording}_taggram"], MUSICNN[f"{which}_{recording}_penultimate"]
        assert result.tags == list(MUSICNN[f"{which}_tags"])
        np.testing.assert_allclose(result.probs, taggram[:9].mean(0), atol=1e-4)
        np.testing.assert_allclose(result.embedding[-200:], penultimate[:9].mean(0), atol=1e-4)
    artist = Tagger("artist", device="cpu").embed(path)
    np.testing.assert_allclose(artist[-256:], ARTIST[f"{recording}_embedding"][:9].mean(0), atol=1e-4)
    for which, blocks in (("fcn", 5), ("crnn", 4)):  # every whole segment lies in the file's first 29.1 s window
        embedding = Tagger(f"won-msd-{which}", device="cpu").embed(path)
        reference = np.concatenate([WON[f"{which}_{recording}_layer{i}"].mean(0) for i in range(1, blocks + 1)])
        np.testing.assert_allclose(embedding, reference, atol=1e-4, err_msg=which)


def test_a_converted_file_says_where_every_weight_came_from():
    for name in ("musicnn-msd", "musicnn-mtt", "artist", "won-msd-fcn", "won-msd-crnn"):
        meta = read_metadata(zoo_path(name))
        info = meta["info"]
        assert info["licence"].split(".")[0] in ("ISC", "MIT") and info["citation"] and info["source"]["sha256"]
        card = zoo_path(name).with_suffix(".md").read_text()
        assert "copyrighted" in card and info["source"]["where"] in card
        assert name in ZOO


def test_backbones_mix_with_the_papers_cnns_in_one_model(tmp_path):
    """A model of the paper's CNNs, the artist CNN (same front end, computed once) and musicnn (its own, at 16 kHz) at two
    segment lengths: it saves, loads and embeds like any model, each branch as the networks alone compute it."""
    from test_equivalence import random_tagger

    paper = random_tagger()
    art, mus = network("artist", "artist"), network("musicnn-mtt", "musicnn-mtt")
    fe = paper.frontend
    art.frontend, mus.frontend = art.frontend.over_window(fe.clip_seconds), mus.frontend.over_window(fe.clip_seconds)
    nets = {**paper.local_models, "artist": art, "musicnn-mtt": mus}
    branches = paper.branches + [Branch("artist", 129), Branch("musicnn-mtt", 62), Branch("musicnn-mtt", 187)]
    mixed = TaggingModel(nets, None, tags=[], frontend=fe, branches=branches)
    assert len(mixed.frontends) == 2 and mixed.local_scales[-3:] == ("artist/129", "musicnn-mtt/62", "musicnn-mtt/187")
    from tagstack.models.file import save_model

    save_model(mixed, tmp_path / "mixed.safetensors")
    tagger = Tagger(tmp_path / "mixed.safetensors", device="cpu")
    assert tagger.rates == [fe.sample_rate, 16000]
    y = reference_music(44100, 2 * fe.clip_seconds)
    emb = tagger.embed(y, sr=44100)
    assert emb.shape == (mixed.n_features,) and np.isfinite(emb).all()
    # the musicnn/187 block equals musicnn run on the 187-frame segments of each 16 kHz window, averaged over segments
    from tagstack.audio.io import load

    y16 = load(y, sr=16000, source_sr=44100)
    win = int(round(fe.clip_seconds * 16000))
    logmel = LogMel(mus.frontend)
    segs = []
    for start in range(0, len(y16) - win + 1, win):
        mel = logmel.frames_first(torch.from_numpy(y16[start : start + win]))[: mus.frontend.n_frames]
        segs.append(mel[: (len(mel) // 187) * 187].reshape(-1, 187, 96))
    with torch.inference_mode():
        acts, _ = mus.forward_intermediates(torch.cat(segs))
    cols = mixed.columns_of(scales=["musicnn-mtt/187"], layers=[5])
    np.testing.assert_allclose(emb[cols], acts[4].mean(0).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_global_model_on_pretrained_backbones_runs_every_stage(tmp_path, synth_dir, caplog, monkeypatch):
    """`tagstack run --local-from musicnn-mtt,artist --scales ...`: stage 2 reads each backbone's own front end (one mel cache
    each, none for the paper's front end), stage 3 trains a global MLP, and the model file tags new audio the same way."""
    from synth import TEST_FRONTEND
    from tagstack.cli.main import main
    from tagstack.config import TrainConfig
    from tagstack.experiments.experiment_config import ExperimentConfig
    from tagstack.experiments.run import Experiment

    cfg = ExperimentConfig(
        dataset="manifest",
        root=str(synth_dir),
        frontend=TEST_FRONTEND,
        local_from=("musicnn-mtt", "artist"),
        scales=("musicnn-mtt/62", "musicnn-mtt/187", "artist/129"),
        cache_dir=str(tmp_path / "cache"),
        workers=1,
        global_=TrainConfig(max_epochs=3, batch_size=8, lr_stages=1, monitor="roc_auc"),
        n_boot=10,
    )
    exp = Experiment(cfg, tmp_path / "run")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    caplog.set_level(logging.INFO, logger="tagstack")
    metrics = exp.run()
    assert metrics["local"] == {}  # musicnn's own outputs are other tags
    progress = [r.getMessage() for r in caplog.records if r.name == "tagstack.progress"]
    assert any(re.match(r"stage 2: (\d+)/\1 batch \(100%\)", line) for line in progress)  # a log shows stage 2 end to end
    caches = {p.name.split("-fe")[1][:12] for p in (tmp_path / "cache").iterdir()}
    musicnn = network("musicnn-mtt", "musicnn-mtt").frontend.over_window(TEST_FRONTEND.clip_seconds)
    assert caches == {musicnn.key(), TEST_FRONTEND.key()}  # musicnn's, and the paper's that the artist CNN reads
    model = load_model(tmp_path / "run" / "model.safetensors")
    assert model.local_scales == cfg.scales and sorted(model.local_models) == ["artist", "musicnn-mtt"]
    feats = exp.features()["features"]
    test = exp.data.clips.indices("test")
    tagger = Tagger(tmp_path / "run" / "model.safetensors", device="cpu")
    first = exp.data.clips.audio_path(test[0])
    # the mel caches store frames as float16: agreement to that precision (as test_equivalence's paper-CNN check)
    np.testing.assert_allclose(tagger.predict(first).embedding, feats[test[0]], rtol=2e-2, atol=2e-2)
    assert main(["tag", str(first), "--model", str(tmp_path / "run" / "model.safetensors")]) == 0


def test_several_segment_lengths_of_musicnn_share_its_timbral_work_and_equal_each_read_alone():
    """aggregate_sizes computes musicnn's timbral convolutions once over the clip and each segment's 3 edge frames again:
    the same features and outputs as reading the segments of each length one by one."""
    from tagstack.models.aggregation import aggregate, aggregate_sizes

    net = network("musicnn-mtt", "musicnn-mtt").eval()
    mels = torch.from_numpy(np.concatenate([MUSICNN["synthetic_mel"].reshape(-1, 96)] * 2))[None]  # 748 frames
    frames = torch.tensor([700])
    with torch.inference_mode():
        shared = aggregate_sizes(net, mels, sizes=[62, 187, 374], frames=frames)
        for size, (feats, probs) in zip([62, 187, 374], shared):
            alone = aggregate(net, mels, size=size, frames=frames)
            torch.testing.assert_close(feats, alone[0], rtol=1e-6, atol=1e-5)
            torch.testing.assert_close(probs, alone[1], rtol=1e-6, atol=1e-6)
