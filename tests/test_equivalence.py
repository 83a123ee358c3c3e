"""One computation behind every path: the equivalences a redesign must keep.

- the decoder: ``load`` equals the concatenated ``stream`` for every backend
  and format; a stereo m4a (FFmpeg) reaches the networks at the level of the
  same music in wav (libsndfile); an array equals its file;
- the model: the features stage 2 stores for training equal the features
  inference computes for the same audio; the module joint fine-tuning trains
  starts from exactly the staged tagger's outputs;
- the entry points: the CLI and the Python API give the same tags.

No test here trains a network: random weights exercise the same paths.
"""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from synth import SR, TAGS, TEST_FRONTEND, render
from tagstack.audio.frontend import ClipMel
from tagstack.audio.io import load, stream
from tagstack.cli import main
from tagstack.errors import ParameterError, TagstackError
from tagstack.inference.tagger import Tagger
from tagstack.models.classifier import GlobalArch, GlobalMLP
from tagstack.models.file import load_model, save_model
from tagstack.models.local import build_local_cnn
from tagstack.models.tagging_model import TaggingModel


def music(sr: int, seconds: float, channels: int = 2) -> np.ndarray:
    """A few seconds of stereo 'music': two tones and noise, different in each channel."""
    rng = np.random.default_rng(0)
    t = np.arange(int(sr * seconds)) / sr
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    right = 0.3 * np.sin(2 * np.pi * 330 * t + 1.0) + 0.05 * rng.standard_normal(t.size)
    return np.stack([left, right][:channels], axis=1).astype(np.float32)


def write_m4a(path, y: np.ndarray, sr: int) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=sr)
        s.layout = "stereo"
        s.bit_rate = 256_000
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(y.T), format="fltp", layout="stereo")
        frame.sample_rate = sr
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """The same stereo music at 44.1 kHz as wav, flac, ogg, mp3 and m4a."""
    d = tmp_path_factory.mktemp("encoded")
    y = music(44100, 6.0)
    files = {}
    for ext, fmt, subtype in (
        ("wav", "WAV", "FLOAT"),
        ("flac", "FLAC", "PCM_24"),
        ("ogg", "OGG", "VORBIS"),
        ("mp3", "MP3", "MPEG_LAYER_III"),
    ):
        if fmt in sf.available_formats():
            sf.write(d / f"m.{ext}", y, 44100, format=fmt, subtype=subtype)
            files[ext] = d / f"m.{ext}"
    write_m4a(d / "m.m4a", y, 44100)
    files["m4a"] = d / "m.m4a"
    return y, files


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3", "m4a"])
@pytest.mark.parametrize("block_seconds", [0.37, 2.0, 60.0])
def test_load_equals_the_concatenated_stream(encoded, ext, block_seconds):
    _, files = encoded
    if ext not in files:
        pytest.skip(f"no {ext} encoder here")
    whole = load(files[ext], sr=SR)
    blocks = list(stream(files[ext], sr=SR, block_seconds=block_seconds))
    np.testing.assert_array_equal(np.concatenate(blocks), whole)
    assert all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)


@pytest.mark.parametrize("ext", ["flac", "ogg", "mp3", "m4a"])
def test_every_format_reaches_the_networks_at_the_level_of_wav(encoded, ext):
    _, files = encoded
    if ext not in files:
        pytest.skip(f"no {ext} encoder here")
    ref = load(files["wav"], sr=SR)
    y = load(files[ext], sr=SR)
    ratio = np.sqrt(np.mean(y[SR:-SR] ** 2) / np.mean(ref[SR:-SR] ** 2))
    assert ratio == pytest.approx(1.0, abs=0.05), f"{ext} decodes {20 * np.log10(ratio):+.2f} dB from wav"


def test_an_array_equals_its_file(encoded, tmp_path):
    y, files = encoded
    from_file = load(files["wav"], sr=SR)
    np.testing.assert_array_equal(load(y, sr=SR, source_sr=44100), from_file)  # (samples, channels)
    np.testing.assert_array_equal(load(y.T.copy(), sr=SR, source_sr=44100), from_file)  # (channels, samples)
    pcm = np.round(y * 32767).astype(np.int16)
    sf.write(tmp_path / "pcm.wav", pcm, 44100, subtype="PCM_16")
    np.testing.assert_allclose(load(pcm, sr=SR, source_sr=44100), load(tmp_path / "pcm.wav", sr=SR), atol=1e-6)


def test_offset_and_duration_are_a_slice_of_the_whole(encoded):
    _, files = encoded
    whole = load(files["flac"], sr=44100)
    part = load(files["flac"], sr=44100, offset=1.5, duration=2.0)
    np.testing.assert_array_equal(part, whole[int(1.5 * 44100) : int(3.5 * 44100)])


# ------------------------------------------------------------ the model


def random_tagger(seed: int = 0, scales=(18, 27, 54)) -> TaggingModel:
    torch.manual_seed(seed)
    local = {s: build_local_cnn(s, n_tags=len(TAGS)) for s in scales}
    for m in local.values():
        m.set_normalisation(0.5, 0.7)
        for mod in m.modules():  # non-trivial BatchNorm statistics, as after training
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    n = sum(b.channels for m in local.values() for b in m.arch.blocks)
    head = GlobalMLP(GlobalArch(n_features=n, n_outputs=len(TAGS)))
    head.set_normalisation(torch.rand(n), torch.rand(n) + 0.5)
    return TaggingModel(local, head, tags=TAGS, frontend=TEST_FRONTEND).eval()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "random.safetensors"
    save_model(random_tagger(), path)
    return path


def test_a_saved_model_computes_what_it_computed(model_file):
    model, loaded = random_tagger(), load_model(model_file)
    x = torch.randn(3, TEST_FRONTEND.n_frames, 128)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x))
        torch.testing.assert_close(loaded.forward_features(x), model.forward_features(x))


def test_forward_intermediates_are_the_blocks_of_forward_features():
    model = random_tagger()
    x = torch.randn(2, TEST_FRONTEND.n_frames, 128)
    with torch.inference_mode():
        full = model.forward_features(x)
        parts = model.forward_intermediates(x, scales=[27, 54], layers=[1, 3])
    assert sorted(parts) == [("27", 1), ("27", 3), ("54", 1), ("54", 3)]
    for b in model.layout:
        if (b.scale, b.layer) in parts:
            torch.testing.assert_close(parts[(b.scale, b.layer)], full[:, b.start : b.stop])


def test_training_features_equal_inference_features(tmp_path, model_file):
    """Stage 2 (mel cache -> stored features) and tagging a file (decoder -> windows) agree on the same audio."""
    from synth import make_dataset
    from tagstack.experiments.experiment_config import ExperimentConfig
    from tagstack.experiments.run import Experiment

    clips = make_dataset(tmp_path / "data", n_clips=8, seconds=TEST_FRONTEND.clip_seconds)
    cfg = ExperimentConfig(
        dataset="manifest",
        root=str(tmp_path / "data"),
        scales=(18, 27, 54),
        frontend=TEST_FRONTEND,
        local_from=str(model_file),
        cache_dir=str(tmp_path / "cache"),
        workers=1,
        device="cpu",
    )
    exp = Experiment(cfg, tmp_path / "run")
    stored = exp.features()["features"]
    tagger = Tagger(model_file, device="cpu")
    for i, path in enumerate(exp.data.clips.paths[:4]):
        inferred = tagger.embed(clips.root / path)
        # the cache stores frames as float16: agreement to that precision
        np.testing.assert_allclose(stored[i], inferred, rtol=2e-2, atol=2e-2)
        assert np.corrcoef(stored[i], inferred)[0, 1] > 0.9999


def test_a_clip_shorter_than_the_clip_length_gives_the_same_features_in_training_and_tagging(tmp_path):
    """The mel cache pads a short file; stage 2 aggregates its audio alone, as tagging the file does."""
    from synth import make_dataset
    from tagstack.config import FrontEndConfig
    from tagstack.experiments.experiment_config import ExperimentConfig
    from tagstack.experiments.run import Experiment

    fe = FrontEndConfig(clip_seconds=8.0, n_frames=344)
    model = random_tagger()
    model.frontend = fe
    save_model(model, tmp_path / "m.safetensors")
    clips = make_dataset(tmp_path / "data", n_clips=8, seconds=6.1)  # 6.1 s of audio in clips of 8 s (the cache keeps >= 5 s)
    cfg = ExperimentConfig(
        dataset="manifest",
        root=str(tmp_path / "data"),
        scales=(18, 27, 54),
        frontend=fe,
        local_from=str(tmp_path / "m.safetensors"),
        cache_dir=str(tmp_path / "cache"),
        workers=1,
        device="cpu",
    )
    exp = Experiment(cfg, tmp_path / "run")
    assert (exp.data.frames[exp.data.mel_rows] < fe.n_frames).all()
    stored = exp.features()["features"]
    tagger = Tagger(tmp_path / "m.safetensors", device="cpu")
    for i, path in enumerate(exp.data.clips.paths[:4]):
        inferred = tagger.embed(clips.root / path)
        np.testing.assert_allclose(stored[i], inferred, rtol=2e-2, atol=2e-2)
        assert np.corrcoef(stored[i], inferred)[0, 1] > 0.9999


def test_joint_finetuning_starts_from_the_staged_outputs(model_file):
    """The module joint fine-tuning trains is the staged tagger itself: same outputs before any step."""
    staged = load_model(model_file)
    y = np.stack([render({"low", "pulse"}, TEST_FRONTEND.clip_seconds, np.random.default_rng(i)) for i in range(3)])
    with torch.inference_mode():
        mels = ClipMel(TEST_FRONTEND)(torch.from_numpy(y))
        stage3 = staged.proba_from_features(staged.forward_features(mels))  # stage 3 reads stored features
        joint = staged.train(False)(mels).sigmoid()  # joint fine-tuning's forward on clips
    torch.testing.assert_close(joint, stage3)


def test_cli_and_api_give_the_same_tags(tmp_path, model_file):
    rng = np.random.default_rng(3)
    for i, tags in enumerate(({"low"}, {"high", "noise"})):
        sf.write(tmp_path / f"c{i}.wav", render(tags, 7.3, rng), SR)
    out = tmp_path / "tags.jsonl"
    assert (
        main(
            [
                "tag",
                str(tmp_path / "c0.wav"),
                str(tmp_path / "c1.wav"),
                "--model",
                str(model_file),
                "--format",
                "jsonl",
                "--top-k",
                "0",
                "-o",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    tagger = Tagger(model_file, device="cpu")
    for row in rows:
        api = dict(tagger.tag(row["path"], top_k=None))
        assert row["tags"].keys() == api.keys()
        for t, p in row["tags"].items():
            assert p == pytest.approx(api[t], abs=1e-4)


def test_batched_files_equal_each_file_alone(tmp_path, model_file):
    """predict_batch, and predict_many as on a GPU, share network passes across files; each file's result is predict's."""
    rng = np.random.default_rng(5)
    clip = TEST_FRONTEND.clip_seconds
    lengths = {"long": 3.4 * clip, "short": 0.4 * clip, "exact": clip, "two": 2.2 * clip}
    files = []
    for name, seconds in lengths.items():
        sf.write(tmp_path / f"{name}.wav", render({"low", "pulse"}, seconds, rng), SR)
        files.append(tmp_path / f"{name}.wav")
    (tmp_path / "notes.wav").write_text("not audio")
    files.insert(2, tmp_path / "notes.wav")
    late = render({"low"}, 3.5 * clip, rng)
    late[int(2.5 * clip * SR)] = np.nan  # decodes for two windows, then fails: its pending windows must go
    sf.write(tmp_path / "late.wav", late, SR, subtype="FLOAT")
    files.insert(4, tmp_path / "late.wav")
    tagger = Tagger(model_file, device="cpu")
    for batch_windows in (1, 3, 64):  # passes that split files, span several, hold them all
        got = tagger.predict_batch(files, taggram=True, hop=0.4 * clip, batch_windows=batch_windows)
        assert len(got) == len(files)
        for path, r in zip(files, got):
            if path.name in ("notes.wav", "late.wav"):
                with pytest.raises(TagstackError) as alone:
                    tagger.predict(path)
                assert isinstance(r, TagstackError) and str(r) == str(alone.value)
                continue
            ref = tagger.predict(path, taggram=True, hop=0.4 * clip)
            assert r.path == str(path) and r.seconds == ref.seconds
            np.testing.assert_allclose(r.probs, ref.probs, atol=1e-5)
            np.testing.assert_allclose(r.embedding, ref.embedding, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(r.taggram, ref.taggram, atol=1e-5)
            np.testing.assert_array_equal(r.window_starts, ref.window_starts)
    # predict_many as it runs on CUDA: workers decode whole files, this thread passes 8 windows (the CPU's batch) at a time
    many = list(tagger.predict_many(files, taggram=True, hop=0.4 * clip, workers=2, batched=True))
    alone = list(tagger.predict_many(files, taggram=True, hop=0.4 * clip, workers=2, batched=False))
    for r, ref in zip(many, alone, strict=True):
        if isinstance(ref, TagstackError):
            assert isinstance(r, TagstackError) and str(r) == str(ref)
            continue
        assert r.path == ref.path and r.seconds == ref.seconds
        np.testing.assert_allclose(r.probs, ref.probs, atol=1e-5)
        np.testing.assert_allclose(r.embedding, ref.embedding, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(r.taggram, ref.taggram, atol=1e-5)
    stopped = tagger.predict_many(files * 4, workers=2, batched=True)
    assert next(stopped).path == str(files[0])
    stopped.close()  # a caller that stops early: the decoding threads waiting to hand over windows end too
    embedded_many = list(tagger.predict_many(files[:2], embed_only=True, batched=True))
    np.testing.assert_allclose(embedded_many[1].embedding, tagger.embed(files[1]), rtol=1e-4, atol=1e-5)
    embedded = tagger.predict_batch(files[:2], embed_only=True, batch_windows=2)
    assert embedded[0].tags == [] and embedded[0].taggram is None
    np.testing.assert_allclose(embedded[1].embedding, tagger.embed(files[1]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ParameterError, match="batch_windows"):
        tagger.predict_batch(files, batch_windows=0)


def test_predict_many_keeps_every_input_in_its_place_and_never_holds_the_process(tmp_path, model_file):
    """Either way of predict_many: a result (or error) for every input, even None, in order; a bad hop is one error;
    a script that leaves a batched generator unfinished (a loop that breaks or raises) still exits."""
    import subprocess
    import sys

    clip = TEST_FRONTEND.clip_seconds
    rng = np.random.default_rng(6)
    files = []
    for k in range(3):
        files.append(tmp_path / f"long{k}.wav")
        sf.write(files[-1], render({"low", "pulse"}, 12 * clip, rng), SR)  # 12 windows: more than a CPU pass of 8
    tagger = Tagger(model_file, device="cpu")
    for batched in (False, True):
        got = list(tagger.predict_many([files[0], None, files[1]], workers=2, batched=batched))
        assert [type(r).__name__ for r in got] == ["Result", "ParameterError", "Result"]
        assert [got[0].path, got[2].path] == [str(files[0]), str(files[1])]
        with pytest.raises(ParameterError, match="hop"):
            next(tagger.predict_many(files, taggram=True, hop=-1.0, batched=batched))
    script = (
        "import sys; from tagstack import Tagger\n"
        f"gen = Tagger({str(model_file)!r}, device='cpu').predict_many(sys.argv[1:] * 3, workers=2, batched=True)\n"
        "for r in gen:\n    break\n"
        "print('left', r.path)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *map(str, files)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == f"left {files[0]}\n"


def test_evaluate_scores_a_model_on_a_labelled_split(tmp_path, model_file, synth_dir, capsys):
    """`tagstack evaluate`: the test clips tagged as `tag` does, scored against scikit-learn on the shared tags."""
    from sklearn.metrics import roc_auc_score

    from tagstack.datasets import read_manifest

    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(model_file),
                "--dataset",
                "manifest",
                "--root",
                str(synth_dir),
                "--json",
                str(out),
                "--plot",
                str(tmp_path / "eval.png"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    import matplotlib.pyplot as plt

    picture = plt.imread(tmp_path / "eval.png")  # per-tag bars: a real PNG, wider than tall for the synth tags
    assert picture.ndim == 3 and picture.shape[1] > picture.shape[0] > 200
    clips = read_manifest(synth_dir / "manifest.csv")
    test = clips.indices("test")
    tagger = Tagger(model_file, device="cpu")
    probs = np.stack([tagger.predict(clips.audio_path(i)).probs for i in test])
    y = clips.labels[test] >= 0.5
    cols = [tagger.tags.index(t) for t in clips.tags]
    expected = [roc_auc_score(y[:, j], probs[:, cols[j]]) for j in range(len(clips.tags)) if 0 < y[:, j].sum() < len(y)]
    assert result["clips"] == len(test) and result["tags"] == clips.tags and result["skipped"] == []
    assert result["roc_auc"] == pytest.approx(np.mean(expected), abs=1e-4)
    lo, hi = result["roc_auc_ci"]
    assert 0 <= lo < hi <= 1
    assert f"macro ROC-AUC {result['roc_auc']:.4f}" in capsys.readouterr().out
    # a dataset whose tags the model does not know: one line saying so
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.csv").write_text("path,tags,split\n" + "".join(f"{clips.audio_path(i)},kazoo,test\n" for i in test))
    assert main(["evaluate", "--model", str(model_file), "--dataset", "manifest", "--root", str(other), "--device", "cpu"]) == 1
    assert "no name in common" in capsys.readouterr().err
    # names match whatever their case and spacing (MagnaTagATune's femaleVocal = female vocal)
    (other / "manifest.csv").write_text(
        "path,tags,split\n"
        + "".join(f"{clips.audio_path(i)},{';'.join(t.upper() for t, v in zip(clips.tags, clips.labels[i]) if v)},test\n" for i in test)
    )
    assert (
        main(["evaluate", "--model", str(model_file), "--dataset", "manifest", "--root", str(other), "--device", "cpu", "--json", str(out)])
        == 0
    )
    upper = json.loads(out.read_text())
    for labels in (other / "manifest.csv", other / "tag_groups.csv"):  # --json over the labels read: refused, before any work
        argv = ["evaluate", "--model", str(model_file), "--dataset", "manifest", "--root", str(other), "--json", str(labels)]
        assert main(argv) == 1
        assert f"--json {labels}: the name must end in .json" in capsys.readouterr().err
    assert main(argv[:-2] + ["--plot", str(other / "manifest.csv")]) == 1
    assert f"--plot {other / 'manifest.csv'}: the name must end in .png" in capsys.readouterr().err
    assert upper["tags"] == [t.upper() for t in clips.tags] and upper["roc_auc"] == pytest.approx(result["roc_auc"], abs=1e-4)
