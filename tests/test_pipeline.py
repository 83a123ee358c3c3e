"""End to end: the three stages on generated clips whose tags are learnable."""

import json

import numpy as np
import pytest
import torch

from synth import TEST_FRONTEND
from tagstack.models.file import load_model, read_metadata, save_model
from tagstack.config import TrainConfig
from tagstack.experiments.experiment_config import ExperimentConfig, load_config
from tagstack.errors import ModelFileError, ParameterError
from tagstack.experiments.run import Experiment
from tagstack.inference.tagger import Tagger

SCALES = (18, 27, 54)


@pytest.fixture(scope="module")
def run(tmp_path_factory, synth_dir):
    from tagstack.experiments.run import run_experiment as run_all

    out = tmp_path_factory.mktemp("run")
    cfg = ExperimentConfig(
        dataset="manifest",
        root=str(synth_dir),
        scales=SCALES,
        frontend=TEST_FRONTEND,
        local=TrainConfig(max_epochs=5, batch_size=32, lr_stages=2, patience=2),
        global_=TrainConfig(max_epochs=30, batch_size=8, monitor="roc_auc", patience=5),
        cache_dir=str(out / "cache"),
        workers=1,
    )
    metrics = run_all(cfg, out / "run")
    return cfg, out / "run", metrics


def test_local_and_global_models_learn_far_above_chance(run):
    _, _, metrics = run
    for s in SCALES:
        assert metrics["local"][str(s)]["roc_auc"] > 0.8
    assert metrics["global"]["roc_auc"] > 0.8
    assert metrics["global"]["n_tags_evaluated"] == 4


def test_run_directory_mirrors_the_stages(run):
    cfg, out, _ = run
    for s in SCALES:
        assert (out / "1-local" / str(s) / "best.pt").exists()
        assert json.loads((out / "1-local" / str(s) / "history.json").read_text())
    features = np.load(out / "2-aggregate" / "features.npy")
    assert features.shape == (64, 512 + 512 + 768)
    for name in ("config.toml", "metrics.json", "report.md", "model.safetensors", "plots/curves.png", "plots/per_tag_roc_auc.png"):
        assert (out / name).exists(), name
    assert load_config(out / "config.toml") == cfg
    assert "| global" in (out / "report.md").read_text()


def test_a_finished_run_is_not_trained_again(run):
    from tagstack.experiments.run import run_experiment as run_all

    cfg, out, metrics = run
    before = {p: p.stat().st_mtime_ns for p in out.glob("1-local/*/best.pt")}
    again = run_all(cfg, out)
    assert {p: p.stat().st_mtime_ns for p in out.glob("1-local/*/best.pt")} == before
    assert again["local"] == metrics["local"]


@pytest.mark.slow
def test_interrupted_training_resumes_from_the_last_epoch(tmp_path, synth_dir, monkeypatch):
    from tagstack.experiments.run import Experiment
    from tagstack.train import loop

    cfg = ExperimentConfig(
        dataset="manifest",
        root=str(synth_dir),
        scales=(27,),
        frontend=TEST_FRONTEND,
        local=TrainConfig(max_epochs=4, batch_size=32, lr_stages=1, patience=10),
        cache_dir=str(tmp_path / "cache"),
        workers=1,
    )
    write = loop.atomic_write_json

    def killed_after_two_epochs(path, data):
        write(path, data)
        if path.name == "history.json" and len(data) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "atomic_write_json", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        Experiment(cfg, tmp_path).local_models()
    monkeypatch.undo()
    hist = tmp_path / "1-local" / "27" / "history.json"
    first = json.loads(hist.read_text())
    assert [r["epoch"] for r in first] == [1, 2]
    Experiment(cfg, tmp_path).local_models()
    again = json.loads(hist.read_text())
    assert [r["epoch"] for r in again] == [1, 2, 3, 4] and again[:2] == first


def _copy_run(out, tmp_path):
    import shutil

    dest = tmp_path / "copy"
    shutil.copytree(out, dest)
    return dest


def test_a_run_folder_refuses_other_settings_or_labels_instead_of_resuming(run, tmp_path, capsys):
    import dataclasses

    from tagstack.cli.main import main
    from tagstack.datasets import load_dataset
    from tagstack.errors import TagstackError
    from tagstack.experiments.experiment_config import save_config
    from tagstack.experiments.run import Experiment

    cfg, out, _ = run
    copy = _copy_run(out, tmp_path)
    longer = cfg.replace(local=dataclasses.replace(cfg.local, max_epochs=6))
    with pytest.raises(TagstackError, match=r"1-local/18: trained with other settings or inputs \(schedule.max_epochs 5 -> 6\)"):
        Experiment(longer, copy).local_models()
    clips = load_dataset("manifest", cfg.root)
    clips.labels[clips.indices("train")[0], 0] = 1 - clips.labels[clips.indices("train")[0], 0]
    with pytest.raises(TagstackError, match=r"1-local/18: trained with other settings or inputs \(data\)"):
        Experiment(cfg, copy, clips=clips).local_models()
    # as a user meets it: one line, exit status 1, and nothing of the run changed
    save_config(longer, tmp_path / "longer.toml")
    before = {p: p.read_bytes() for p in (copy / "1-local" / "18" / "last.pt", copy / "config.toml")}
    assert main(["run", "--config", str(tmp_path / "longer.toml"), "--out", str(copy)]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "schedule.max_epochs 5 -> 6" in errors[0] and "Traceback" not in err
    assert {p: p.read_bytes() for p in before} == before
    # the same command as before still resumes (reuses) everything
    assert Experiment(cfg, copy).run()["global"]["roc_auc"] == pytest.approx(run[2]["global"]["roc_auc"])
    # what an earlier tagstack stored, without a record of its inputs, is refused too
    (copy / "2-aggregate" / "inputs.json").unlink()
    with pytest.raises(ParameterError, match=r"2-aggregate: features extracted by an earlier tagstack"):
        Experiment(cfg, copy).features()
    ckpt = torch.load(copy / "1-local" / "27" / "last.pt", weights_only=True)
    del ckpt["key"]
    torch.save(ckpt, copy / "1-local" / "27" / "last.pt")
    with pytest.raises(TagstackError, match=r"1-local/27: trained by an earlier tagstack, which did not record"):
        Experiment(cfg, copy).local_models()


def test_a_slice_of_scales_reads_its_own_columns_of_the_stored_features(run, tmp_path):
    from tagstack.experiments.run import Experiment
    from tagstack.train.stages import model_clip_probs

    cfg, out, _ = run
    copy = _copy_run(out, tmp_path)
    exp = Experiment(cfg.replace(scales=(27, 54)), copy)
    stored = np.load(out / "2-aggregate" / "features.npy")
    np.testing.assert_array_equal(exp.features()["features"], stored[:, 512:])  # 18 frames: the first 512 columns
    model = exp.train_head(name="3-global-s27-54")
    d = exp.data
    from_audio = model_clip_probs(model, d.mels, rows=d.rows("test"), device=torch.device("cpu"), frames=d.frames)
    np.testing.assert_allclose(exp.test_probs(model), from_audio, atol=1e-5)


def test_stored_features_of_other_cnns_are_refused(run, tmp_path):
    from tagstack.experiments.run import Experiment

    cfg, out, _ = run
    copy = _copy_run(out, tmp_path)
    same = Experiment(cfg.replace(local_from=str(out / "model.safetensors")), copy)
    np.testing.assert_array_equal(same.features()["features"], np.load(out / "2-aggregate" / "features.npy"))
    model = load_model(out / "model.safetensors")
    with torch.no_grad():
        next(model.local_models["27"].parameters()).add_(0.01)
    save_model(model, tmp_path / "other.safetensors")
    with pytest.raises(ParameterError, match=r"2-aggregate: features extracted from other cnns.27;"):
        Experiment(cfg.replace(local_from=str(tmp_path / "other.safetensors")), copy).features()


def test_model_file_round_trip_and_metadata(run, tmp_path):
    _, out, metrics = run
    meta = read_metadata(out / "model.safetensors")
    assert meta["tags"] == ["high", "low", "noise", "pulse"]
    assert meta["frontend"]["n_frames"] == 216
    assert set(meta["networks"]) == {"18", "27", "54"} and meta["global"]["n_features"] == 1792
    assert [b["frames"] for b in meta["branches"]] == [18, 27, 54] and meta["format_version"] == 2
    assert meta["info"]["test"]["roc_auc"] == pytest.approx(metrics["global"]["roc_auc"])
    m = load_model(out / "model.safetensors")
    save_model(m, tmp_path / "copy.safetensors")
    m2 = load_model(tmp_path / "copy.safetensors")
    x = torch.randn(5, 27, 128)
    torch.testing.assert_close(m.local_models["27"](x), m2.local_models["27"](x))
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="junk.safetensors"):
        load_model(tmp_path / "junk.safetensors")


def test_tagger_gives_the_right_tags_on_new_audio(run):
    from synth import SR, render

    _, out, _ = run
    tagger = Tagger(out / "model.safetensors", device="cpu")
    from tagstack.evaluation.metrics import tagging_metrics

    rng = np.random.default_rng(99)
    sets = [{"low"}, {"high", "noise"}, {"pulse", "low"}, {"high"}, {"noise"}, {"pulse", "high"}, {"low", "noise"}, {"pulse"}]
    y = np.array([[t in tags for t in tagger.tags] for tags in sets], dtype=float)
    p = np.stack([tagger.predict(render(tags, 5.0, rng), sr=SR).probs for tags in sets])
    assert tagging_metrics(y, p)["roc_auc"] > 0.8


def test_long_audio_is_streamed_in_windows(run, tmp_path):
    import soundfile as sf
    from synth import SR, render

    _, out, _ = run
    tagger = Tagger(out / "model.safetensors", device="cpu")
    rng = np.random.default_rng(3)
    y = np.concatenate([render({"low"}, 5.0, rng), render({"high"}, 5.0, rng), render({"high"}, 2.5, rng)])
    sf.write(tmp_path / "long.wav", y, SR, subtype="FLOAT")
    r = tagger.predict(tmp_path / "long.wav", taggram=True)
    # 12.5 s in 5 s windows, and one ending at the end: the last 2.5 s hold segments of every scale
    assert r.taggram.shape == (3, 4)
    np.testing.assert_allclose(r.window_starts, [0.0, 5.0, 7.5])
    assert r.seconds == pytest.approx(12.5, abs=0.01)
    high, low = r.tags.index("high"), r.tags.index("low")
    assert r.taggram[0, low] > r.taggram[0, high] and r.taggram[1, high] > r.taggram[1, low]
    assert r.taggram[2, high] > r.taggram[2, low]
    # the whole-file embedding is the segment-weighted mean of the window embeddings
    e = tagger.embed(tmp_path / "long.wav")
    assert e.shape == (1792,)
    e_arr = tagger.embed(y, sr=SR)
    np.testing.assert_allclose(e, e_arr, rtol=1e-4, atol=1e-5)


def test_taggram_hop_gives_each_window_tagged_alone(run, tmp_path):
    import soundfile as sf
    from synth import SR, render

    _, out, _ = run
    tagger = Tagger(out / "model.safetensors", device="cpu")
    rng = np.random.default_rng(4)
    y = np.concatenate([render({"low"}, 6.0, rng), render({"high"}, 6.0, rng), render({"noise"}, 7.8, rng)])  # 19.8 s
    sf.write(tmp_path / "long.wav", y, SR, subtype="FLOAT")
    plain = tagger.predict(tmp_path / "long.wav")
    r = tagger.predict(tmp_path / "long.wav", taggram=True, hop=1.5)
    # windows every 1.5 s while a whole 5 s window fits, then one ending at the end of the file,
    # since the last 1.3 s hold a segment of the largest scale (54 frames, 1.25 s)
    np.testing.assert_allclose(r.window_starts, list(np.arange(0, 13.6, 1.5)) + [14.8], atol=1e-4)
    for start, row in zip(r.window_starts, r.taggram):
        a = int(round(start * SR))
        np.testing.assert_allclose(row, tagger.predict(y[a : a + 5 * SR], sr=SR).probs, atol=1e-4)
    # the file's own tags and embedding do not depend on the taggram
    np.testing.assert_allclose(r.probs, plain.probs, atol=1e-6)
    np.testing.assert_allclose(r.embedding, plain.embedding, atol=1e-6)
    # streamed from a file across block boundaries = the same array in memory
    np.testing.assert_allclose(tagger.taggram(y, sr=SR, hop=1.5)[0], r.taggram, atol=1e-4)
    with pytest.raises(ParameterError, match="hop"):
        tagger.predict(y, sr=SR, taggram=True, hop=0)


def test_a_file_shorter_than_a_clip_is_one_taggram_window(run):
    from synth import SR, render

    _, out, _ = run
    tagger = Tagger(out / "model.safetensors", device="cpu")
    y = render({"low"}, 3.0, np.random.default_rng(5))
    gram, starts = tagger.taggram(y, sr=SR, hop=1.0)
    assert gram.shape == (1, 4) and list(starts) == [0.0]
    np.testing.assert_allclose(gram[0], tagger.predict(y, sr=SR).probs, atol=1e-6)


def test_a_model_file_whose_weights_do_not_match_is_refused(run, tmp_path):
    import json as _json

    from safetensors.torch import load_file, save_file

    _, out, _ = run
    meta = read_metadata(out / "model.safetensors")
    tensors = load_file(str(out / "model.safetensors"))
    del tensors["global.net.0.weight"]
    save_file(tensors, str(tmp_path / "broken.safetensors"), metadata={"tagstack": _json.dumps(meta)})
    with pytest.raises(ModelFileError, match="broken.safetensors.*'tensors'.*global.net.0.weight"):
        load_model(tmp_path / "broken.safetensors")


@pytest.mark.slow
def test_unknown_labels_run_through_every_stage_and_are_left_out_of_the_scores(tmp_path, synth_dir):
    """A manifest whose first tag is unknown on a third of the clips: training runs, and that tag is scored on the others only."""
    import shutil

    from sklearn.metrics import roc_auc_score

    from tagstack.datasets import read_manifest, write_manifest
    from tagstack.experiments.run import Experiment

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    clips = read_manifest(data / "manifest.csv")
    clips.labels[::3, 0] = np.nan  # a third of the clips never annotated for the first tag
    clips.groups = {clips.tags[0]: "sparse", clips.tags[2]: "dense"}  # tag_groups.csv, carried into the model file
    clips.labels[clips.indices("test"), 3] = 0  # and the last tag has no positive in the test split: it cannot be scored
    write_manifest(clips, data / "manifest.csv")
    cfg = ExperimentConfig(
        dataset="manifest",
        root=str(data),
        scales=(27,),
        frontend=TEST_FRONTEND,
        local=TrainConfig(max_epochs=2, batch_size=32, lr_stages=1, patience=5),
        global_=TrainConfig(max_epochs=5, batch_size=8, monitor="roc_auc", patience=5),
        cache_dir=str(tmp_path / "cache"),
        workers=1,
    )
    exp = Experiment(cfg, tmp_path / "run")
    metrics = exp.run()
    assert np.isfinite(metrics["global"]["roc_auc"]) and metrics["global"]["n_tags_evaluated"] == 3
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"| {clips.tags[3]} |  | – | – |" in report and "nan" not in report.lower()
    test = exp.data.clips.indices("test")
    y = exp.data.clips.labels[test]
    known = ~np.isnan(y[:, 0])
    assert 0 < known.sum() < len(test)
    model = load_model(tmp_path / "run" / "model.safetensors")
    assert model.groups == {clips.tags[0]: "sparse", clips.tags[2]: "dense"}
    probs = exp.test_probs(model)
    assert np.isclose(metrics["global"]["per_tag"]["roc_auc"][0], roc_auc_score(y[known, 0], probs[known, 0]), atol=1e-4)


def test_a_split_that_cannot_be_scored_is_refused_before_any_training(tmp_path, synth_dir):
    import shutil

    from tagstack.datasets import read_manifest, write_manifest
    from tagstack.errors import DatasetError
    from tagstack.experiments.run import Experiment

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    clips = read_manifest(data / "manifest.csv")
    clips.labels[clips.indices("test")] = clips.labels[clips.indices("test")[0]]  # every test clip has the same tags
    write_manifest(clips, data / "manifest.csv")
    cfg = ExperimentConfig(
        dataset="manifest", root=str(data), scales=(27,), frontend=TEST_FRONTEND, cache_dir=str(tmp_path / "cache"), workers=1
    )
    with pytest.raises(DatasetError, match=r"no tag has both positive and negative clips in split 'test'"):
        Experiment(cfg, tmp_path / "run").local_models()
    assert not (tmp_path / "run" / "1-local").exists()


def test_building_an_experiment_writes_nothing(tmp_path, synth_dir):
    """Construction is plain data; the run directory appears when a stage first needs it (Experiment.prepare)."""
    cfg = ExperimentConfig(dataset="manifest", root=str(synth_dir), scales=(27,), frontend=TEST_FRONTEND, cache_dir=str(tmp_path / "c"))
    exp = Experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()
    exp.prepare()
    assert (tmp_path / "run" / "config.toml").exists() and not (tmp_path / "c").exists()
