"""Bad inputs get one clear line naming the file and the reason; nothing wrong gets out.

Covers the validation paths shared by the CLI, the API and training: audio
(non-finite, empty, not audio, folders), arrays, model files (headers and
weights from strangers), dataset files (pickles that would run code,
manifests that would lose clips) and output destinations.
"""

import json
import os
import pickle
import stat

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from safetensors.torch import load_file, save_file

from synth import SR, render
from tagstack.audio.io import load
from tagstack.cli import main
from tagstack.datasets.files import read_pickle
from tagstack.datasets.manifest import read_manifest
from tagstack.errors import AudioError, DatasetError, ModelFileError, ParameterError
from tagstack.inference.tagger import Tagger
from tagstack.models.file import load_model, read_metadata, save_model
from test_equivalence import random_tagger


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    sf.write(d / "good.wav", render({"low"}, 6.0, rng), SR)
    sf.write(d / "ünïcode ñame.flac", render({"high"}, 6.0, rng), SR)
    y = render({"noise"}, 6.0, rng)
    y[1000:1010] = np.nan
    sf.write(d / "nan.wav", y, SR, subtype="FLOAT")
    y = render({"noise"}, 6.0, rng)
    y[5] = np.inf
    sf.write(d / "inf.wav", y, SR, subtype="FLOAT")
    (d / "empty.mp3").write_bytes(b"")
    (d / "text.ogg").write_text("this is not audio\n" * 50)
    sf.write(d / "truncated.flac", render({"low"}, 6.0, rng), SR)
    data = (d / "truncated.flac").read_bytes()
    (d / "truncated.flac").write_bytes(data[: len(data) // 3])
    sf.write(d / "silent.wav", np.zeros(SR * 3, np.float32), SR)
    sf.write(d / "tiny.wav", render({"low"}, 0.05, rng), SR)
    sf.write(d / "8k.wav", soxr.resample(render({"low"}, 4.0, rng), SR, 8000), 8000)
    sf.write(d / "96k-8ch.wav", np.tile(soxr.resample(render({"high"}, 3.0, rng), SR, 96000)[:, None] * 0.5, (1, 8)), 96000)
    return d


def test_tag_skips_every_bad_file_with_one_line_and_tags_the_rest(folder, model_file, tmp_path, capsys):
    out = tmp_path / "tags.jsonl"
    status = main(["tag", str(folder), "--model", str(model_file), "--format", "jsonl", "-o", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]  # strict JSON: a NaN token would fail here
    tagged = {os.path.basename(r["path"]) for r in rows}
    assert tagged == {"good.wav", "ünïcode ñame.flac", "silent.wav", "tiny.wav", "8k.wav", "96k-8ch.wav"}
    for r in rows:
        assert all(np.isfinite(v) for v in r["tags"].values())
    for name, reason in (
        ("nan.wav", "NaN or infinite"),
        ("inf.wav", "NaN or infinite"),
        ("empty.mp3", "empty"),
        ("text.ogg", "cannot decode"),
        ("truncated.flac", ""),
    ):
        line = next(l for l in err.splitlines() if name in l)
        assert reason in line, line
    assert "5 of 11 files could not be tagged" in err


def test_embed_skips_bad_files_and_every_vector_is_finite(folder, model_file, tmp_path):
    out = tmp_path / "e.npz"
    assert main(["embed", str(folder), "--model", str(model_file), "--out", str(out), "--device", "cpu"]) == 1
    with np.load(out) as z:
        assert len(z["paths"]) == 6 and np.isfinite(z["embeddings"]).all()


def test_non_finite_arrays_are_refused_by_the_api(model_file):
    tagger = Tagger(model_file, device="cpu")
    y = render({"low"}, 3.0, np.random.default_rng(1))
    y[100] = np.nan
    with pytest.raises(AudioError, match="NaN or infinite"):
        tagger.tag(y, sr=SR)
    with pytest.raises(AudioError, match="NaN or infinite"):
        tagger.embed(np.full(SR, np.inf, np.float32), sr=SR)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(y=np.zeros((2, 3, 1000), np.float32), sr=SR), "1-D .mono. or 2-D"),
        (dict(y=np.zeros(1000, np.float32), sr=0), "sample rate must be an integer"),
        (dict(y=np.zeros(1000, np.float32), sr=None), "sr is required"),
        (dict(y=np.zeros(0, np.float32), sr=SR), "empty"),
        (dict(y=np.array(["a", "b"]), sr=SR), "floats or integer PCM"),
    ],
)
def test_malformed_arrays_are_parameter_errors(model_file, kwargs, message):
    with pytest.raises(ParameterError, match=message):
        Tagger(model_file, device="cpu").tag(kwargs["y"], sr=kwargs["sr"])


def test_integer_pcm_is_scaled_as_soundfile_reads_it():
    y = (np.sin(np.arange(SR) / 10) * 20000).astype(np.int16)
    np.testing.assert_allclose(load(y, sr=SR, source_sr=SR), y / 32768.0, atol=1e-7)


@pytest.mark.parametrize("top_k,threshold", [(-1, None), (2.5, None), (None, 1.5), (None, -0.1)])
def test_meaningless_tag_selections_are_refused(model_file, top_k, threshold):
    with pytest.raises(ParameterError):
        Tagger(model_file, device="cpu").tag(np.zeros(SR * 6, np.float32) + 0.01, sr=SR, top_k=top_k, threshold=threshold)


def test_folders_and_missing_files_are_named_for_what_they_are(tmp_path, model_file):
    tagger = Tagger(model_file, device="cpu")
    with pytest.raises(AudioError, match="is a folder"):
        tagger.tag(tmp_path)
    with pytest.raises(AudioError, match="file not found"):
        tagger.tag(tmp_path / "nope.wav")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(AudioError, match="loop"):
        tagger.tag(tmp_path / "loop")


# ------------------------------------------------------------ model files


def rewrite(src, dst, *, meta=None, tensors=None, raw_meta=None):
    t = load_file(str(src))
    m = read_metadata(src)
    if tensors:
        tensors(t)
    if meta:
        meta(m)
    save_file(t, str(dst), metadata={"tagstack": raw_meta if raw_meta is not None else json.dumps(m)})
    return dst


def set_in(path_keys, value):
    def change(m):
        d = m
        for k in path_keys[:-1]:
            d = d[k]
        d[path_keys[-1]] = value

    return change


@pytest.mark.parametrize(
    "case,kwargs,field",
    [
        ("not-json", dict(raw_meta="{not json"), "not valid JSON"),
        ("a-list", dict(raw_meta="[1, 2, 3]"), "field 'tagstack' must be a JSON object"),
        ("deep", dict(raw_meta="[" * 100000 + "]" * 100000), "not valid JSON|must be a JSON object"),
        ("huge-hidden", dict(meta=set_in(["global", "hidden"], 40000)), "global.hidden"),
        ("huge-fft", dict(meta=set_in(["frontend", "n_fft"], 2**24)), "frontend.n_fft"),
        ("huge-rate", dict(meta=set_in(["frontend", "sample_rate"], 10**9)), "frontend.sample_rate"),
        ("short-tags", dict(meta=set_in(["tags"], ["a", "b"])), "global.n_outputs"),
        ("tags-not-strings", dict(meta=set_in(["tags"], [1, 2, 3, 4])), "field 'tags'"),
        ("channels", dict(meta=set_in(["networks", "27", "arch", "blocks", 0, "channels"], 64)), "tensors"),
        ("unknown-kind", dict(meta=set_in(["networks", "27", "kind"], "vgg")), "networks.27.kind"),
        ("huge-backbone", dict(meta=set_in(["networks", "27", "arch", "blocks", 0, "kernel"], 10**9)), "networks.27.arch"),
        ("branch-of-nothing", dict(meta=set_in(["branches", 0, "network"], "nope")), "branches.0."),
        ("bad-scale", dict(meta=set_in(["scales"], ["99"])), "field 'scales'"),
        ("groups-of-no-tag", dict(meta=set_in(["tag_groups"], {"no such tag": "mood"})), "field 'tag_groups'"),
        ("groups-not-names", dict(meta=set_in(["tag_groups"], [1, 2])), "field 'tag_groups'"),
        ("groups-empty-name", dict(meta=set_in(["tag_groups"], {"low": ""})), "field 'tag_groups'"),
        ("groups-long-name", dict(meta=set_in(["tag_groups"], {"low": "x" * 101})), "field 'tag_groups'"),
    ],
)
def test_broken_model_headers_are_one_model_file_error_naming_the_field(model_file, tmp_path, case, kwargs, field):
    bad = rewrite(model_file, tmp_path / f"{case}.safetensors", **kwargs)
    with pytest.raises(ModelFileError, match=f"{case}.safetensors") as e:
        load_model(bad)
    assert __import__("re").search(field, str(e.value)), str(e.value)
    assert main(["tag", str(tmp_path), "--model", str(bad)]) == 1


def test_non_finite_weights_are_refused_when_loading(model_file, tmp_path):
    def poison(t):
        t["global.net.0.weight"][0, 0] = float("nan")

    bad = rewrite(model_file, tmp_path / "nan.safetensors", tensors=poison)
    with pytest.raises(ModelFileError, match="nan.safetensors.*NaN or infinite.*global.net.0.weight"):
        load_model(bad)


def test_model_headers_are_strict_json(tmp_path):
    model = random_tagger()
    model.info["test"] = {"per_tag_roc_auc": {"low": float("nan")}}
    save_model(model, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        text = f.metadata()["tagstack"]
    assert "NaN" not in text and json.loads(text)["info"]["test"]["per_tag_roc_auc"]["low"] is None


# ------------------------------------------------------------ dataset files


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_split_file_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "train_list_pub.cP"
    with open(path, "wb") as f:
        pickle.dump(["0/a.npy", RunsCode()], f, protocol=2)
    with pytest.raises(DatasetError, match="train_list_pub.cP.*posix.system|train_list_pub.cP.*system"):
        read_pickle(path)
    assert not (tmp_path / "PWNED").exists()
    with open(path, "wb") as f:
        pickle.dump({"ids": ["a", "b"], "y": np.eye(2, dtype=np.float32)}, f, protocol=2)
    assert read_pickle(path)["ids"] == ["a", "b"]


@pytest.mark.parametrize(
    "text,message",
    [
        ('path,tags,split\na.wav,x,train\n"b.wav,y,test\nc.wav,z,valid\n', "unterminated quote|line"),
        ("path,tags,split\na.wav,x,train\nb.wav,y,\nc.wav,z,test\n", "1 rows have no split"),
        ("path,tags,split\na.wav,x,train\na.wav,y,test\n", "line 3: a.wav is already listed on line 2"),
        ("path,tags,split\naudio/a.wav,x,train\n./audio//a.wav,y,test\n", "line 3: ./audio//a.wav is already listed on line 2"),
        ("path,tags,split\na.wav,x=1.5,train\n", "line 2: tag 'x=1.5'"),
        ("path,tags,split\na.wav,x,training\n", "line 2: unknown split 'training'"),
    ],
)
def test_manifests_that_would_lose_clips_name_the_line(tmp_path, text, message):
    (tmp_path / "manifest.csv").write_text(text)
    with pytest.raises(DatasetError, match=message):
        read_manifest(tmp_path / "manifest.csv")


def test_the_same_file_by_an_absolute_path_is_a_duplicate_and_a_relative_manifest_has_its_folder_name(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "manifest.csv").write_text(f"path,tags,split\na.wav,x,train\n{tmp_path / 'mine' / 'a.wav'},y,test\n")
    with pytest.raises(DatasetError, match="line 3: .*a.wav is already listed on line 2"):
        read_manifest(tmp_path / "mine" / "manifest.csv")
    (tmp_path / "mine" / "manifest.csv").write_text("path,tags,split\na.wav,x,train\nb.wav,y,test\n")
    monkeypatch.chdir(tmp_path / "mine")
    assert read_manifest("manifest.csv").name == "mine"


def test_a_manifest_saved_by_excel_with_a_byte_order_mark_is_read(tmp_path):
    (tmp_path / "manifest.csv").write_bytes("\ufeffpath,tags,split\na.wav,x;y=0.25,train\n".encode("utf-8"))
    clips = read_manifest(tmp_path / "manifest.csv")
    assert clips.paths == ["a.wav"] and clips.tags == ["x", "y"] and clips.labels.tolist() == [[1.0, 0.25]]


# ------------------------------------------------------------ outputs


def test_unwritable_or_missing_destinations_fail_before_any_work(folder, model_file, tmp_path, capsys):
    assert main(["embed", str(folder / "good.wav"), "--model", str(model_file), "--out", str(tmp_path / "no" / "such" / "e.npz")]) == 1
    assert "does not exist" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert main(["tag", str(folder / "good.wav"), "--model", str(model_file), "-o", str(ro / "t.csv")]) == 1
    assert main(["tag", str(folder / "good.wav"), "--model", str(model_file), "-o", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err


def test_a_failed_tag_run_leaves_the_previous_output_whole(folder, model_file, tmp_path):
    out = tmp_path / "tags.csv"
    assert main(["tag", str(folder / "good.wav"), "--model", str(model_file), "--format", "csv", "-o", str(out)]) == 0
    before = out.read_text()
    assert main(["tag", str(folder / "good.wav"), "--model", str(tmp_path / "missing.safetensors"), "-o", str(out)]) == 1
    assert out.read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tagstack-tmp-")]


def test_metrics_json_holds_null_not_nan(tmp_path):
    from tagstack.fileio import atomic_write_json

    atomic_write_json(tmp_path / "m.json", {"per_tag": [0.5, float("nan")], "x": np.float32("inf")})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text and json.loads(text) == {"per_tag": [0.5, None], "x": None}


def test_a_damaged_checkpoint_is_named_and_leftovers_of_killed_writes_are_removed(tmp_path):
    from tagstack.config import TrainConfig
    from tagstack.errors import TagstackError
    from tagstack.fileio import TEMP_PREFIX, remove_leftovers
    from tagstack.models.local import build_local_cnn
    from tagstack.train.loop import fit

    work = tmp_path / "1-local" / "27"
    work.mkdir(parents=True)
    (work / "last.pt").write_bytes(b"\x00garbage, not a checkpoint")
    with pytest.raises(TagstackError, match="last.pt: cannot resume from this checkpoint.*delete it"):
        fit(
            build_local_cnn(27, n_tags=2),
            train_batches=lambda e: iter(()),
            n_batches=0,
            validate=lambda m: {},
            loss_fn=torch.nn.BCEWithLogitsLoss(),
            config=TrainConfig(),
            workdir=work,
            device=torch.device("cpu"),
        )
    (work / f"{TEMP_PREFIX}best.pt.abc123.tmp").write_bytes(b"x" * 1000)
    (tmp_path / f"{TEMP_PREFIX}features.npy.xyz.npy").write_bytes(b"x")
    assert remove_leftovers(tmp_path) == 2
    assert not list(tmp_path.rglob(f"{TEMP_PREFIX}*")) and (work / "last.pt").exists()


@pytest.mark.slow
def test_an_hour_long_file_is_tagged_embedded_and_taggrammed_whole(model_file, tmp_path, capsys):
    """One hour of audio (written block by block, 8 kHz 16-bit) through ``tag``, ``embed`` and the API: finite, complete."""
    path = tmp_path / "hour long.wav"
    rng = np.random.default_rng(7)
    minutes = [soxr.resample(render(tags, 60.0, rng), SR, 8000) * 0.5 for tags in ({"low"}, {"high", "pulse"})]
    with sf.SoundFile(path, "w", samplerate=8000, channels=1, subtype="PCM_16") as f:
        for minute in range(60):
            f.write(minutes[minute % 2])
    out = tmp_path / "tags.jsonl"
    assert main(["tag", str(path), "--model", str(model_file), "--format", "jsonl", "-o", str(out), "--device", "cpu"]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(np.isfinite(v) for v in row["tags"].values())
    emb = tmp_path / "e.npz"
    assert main(["embed", str(path), "--model", str(model_file), "--out", str(emb), "--device", "cpu"]) == 0
    with np.load(emb) as z:
        assert z["embeddings"].shape[0] == 1 and np.isfinite(z["embeddings"]).all()
    assert "Traceback" not in capsys.readouterr().err
    result = Tagger(model_file, device="cpu").predict(path, taggram=True)
    assert result.seconds == pytest.approx(3600.0)
    clip = Tagger(model_file, device="cpu").cfg.clip_seconds
    assert len(result.window_starts) == int(3600 // clip) and result.window_starts[-1] + clip <= 3600.0
    assert np.isfinite(result.taggram).all() and np.isfinite(result.probs).all()


def test_names_with_glob_characters_long_names_and_limits(model_file, tmp_path, capsys):
    """A file named "Song [Live].wav" is tagged (not read as a pattern), a name near the 255-byte limit still gets its
    taggram, an infinite hop is one line, and audio longer than ``max_seconds`` is refused while decoding."""
    from tagstack.errors import AudioTooLongError

    y = render({"low"}, 6.0, np.random.default_rng(2))
    sf.write(tmp_path / "Song [Live].wav", y, SR)
    long_name = tmp_path / ("y" * 230 + ".wav")
    sf.write(long_name, y, SR)
    out, grams = tmp_path / "tags.jsonl", tmp_path / "grams"
    assert (
        main(
            [
                "tag",
                str(tmp_path / "Song [Live].wav"),
                str(long_name),
                "--model",
                str(model_file),
                "--format",
                "jsonl",
                "-o",
                str(out),
                "--taggram",
                str(grams),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert [os.path.basename(json.loads(line)["path"]) for line in out.read_text().splitlines()] == ["Song [Live].wav", long_name.name]
    assert sorted(p.name for p in grams.glob("*.npy")) == ["Song [Live].taggram.npy", "y" * 180 + ".taggram.npy"]
    capsys.readouterr()
    assert main(["tag", str(long_name), "--model", str(model_file), "--taggram", str(grams), "--hop", "inf", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "argument --hop: hop must be a number > 0" in err and "Traceback" not in err and len(err.splitlines()) == 1
    tagger = Tagger(model_file, device="cpu")
    with pytest.raises(AudioTooLongError, match=r"Song \[Live\]\.wav: more than 2 s of audio"):
        tagger.predict(tmp_path / "Song [Live].wav", max_seconds=2)
    assert tagger.predict(tmp_path / "Song [Live].wav", max_seconds=7).seconds == pytest.approx(6.0, abs=0.01)


def test_split_and_label_files_of_the_wrong_kind_are_one_line_naming_the_file(tmp_path):
    from tagstack.datasets.files import read_npy

    (tmp_path / "y_valid_pub.npy").write_text("garbage")
    with pytest.raises(DatasetError, match=r"y_valid_pub.npy: cannot read this array"):
        read_npy(tmp_path / "y_valid_pub.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DatasetError, match=r"objects.npy: cannot read this array \(ValueError"):
        read_npy(tmp_path / "objects.npy")  # object arrays would unpickle: refused
    with open(tmp_path / "train_list.cP", "wb") as f:
        pickle.dump({"not": "a list"}, f, protocol=2)
    with pytest.raises(DatasetError, match=r"train_list.cP: expected a list, found a dict"):
        read_pickle(tmp_path / "train_list.cP", list)


def test_tag_and_embed_remove_what_killed_writes_of_their_outputs_left(folder, model_file, tmp_path):
    from tagstack.fileio import TEMP_PREFIX

    good = str(folder / "good.wav")
    left = [
        tmp_path / f"{TEMP_PREFIX}tags.jsonl.abc123.tmp",
        tmp_path / f"{TEMP_PREFIX}emb.npz.x1.npz",
        tmp_path / "grams" / f"{TEMP_PREFIX}good.taggram.csv.q.tmp",
    ]
    (tmp_path / "grams").mkdir()
    for p in left:
        p.write_bytes(b"half")
    (tmp_path / "mine.txt").write_text("not ours")
    assert (
        main(
            [
                "tag",
                good,
                "--model",
                str(model_file),
                "-o",
                str(tmp_path / "tags.jsonl"),
                "--format",
                "jsonl",
                "--taggram",
                str(tmp_path / "grams"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert main(["embed", good, "--model", str(model_file), "--out", str(tmp_path / "emb.npz"), "--device", "cpu"]) == 0
    assert not any(p.exists() for p in left) and (tmp_path / "mine.txt").exists()


def test_a_file_of_a_few_samples_is_refused_and_numpy_numbers_and_model_names_work(model_file, tmp_path, monkeypatch):
    from tagstack.models.zoo import resolve_model, zoo_path

    sf.write(tmp_path / "click.wav", np.full(10, 0.5, np.float32), SR)
    tagger = Tagger(model_file, device="cpu")
    with pytest.raises(AudioError, match=r"click.wav: 10 samples at 22050 Hz, too short to tag \(at least 1024"):
        tagger.predict(tmp_path / "click.wav")
    y = np.zeros(SR * 6, np.float32) + 0.01
    assert tagger.tag(y, sr=SR, threshold=np.float32(0.0)) == tagger.tag(y, sr=SR, threshold=0.0)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus").mkdir()  # a folder of that name does not hide the shipped model
    assert resolve_model("corpus") == zoo_path("corpus")


# ------------------------------------------------------------ hostile and careless use (issue 26)


def test_a_full_disk_is_one_line_and_the_earlier_output_stays(folder, model_file, full_disk, capsys):
    mount, fill = full_disk
    good = str(folder / "good.wav")
    outputs = {"tags.csv": ["tag", good, "--format", "csv", "-o"], "e.npz": ["embed", good, "--out"], "e.parquet": ["embed", good, "--out"]}
    before = {}
    for name, argv in outputs.items():
        assert main([*argv, str(mount / name), "--model", str(model_file), "--device", "cpu"]) == 0
        before[name] = (mount / name).read_bytes()
    fill()
    capsys.readouterr()
    for name, argv in outputs.items():
        assert main([*argv, str(mount / name), "--model", str(model_file), "--device", "cpu"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        # no room even to record the job's progress: refused before any work (a disk that fills during the job:
        # test_resume.py::test_a_full_disk_while_recording_is_one_line_and_the_work_so_far_stays)
        assert err == [f"tagstack: error: {mount / name}.partial: cannot keep the job's progress here (No space left on device)"]
        assert not any("Traceback" in line for line in err)
        assert (mount / name).read_bytes() == before[name]
    assert sorted(p.name for p in mount.iterdir()) == sorted([*outputs, "filler"])  # no temporary file left


def test_every_kind_of_file_tagstack_writes_reports_a_full_disk_in_one_line(full_disk, tmp_path):
    """Model files, checkpoints, arrays and figures: each library's own writer reports a full disk its own way
    (safetensors' SafetensorError, torch's RuntimeError "unexpected pos", numpy's "N requested and M written"),
    which were tracebacks or riddles; all are one OutputError naming the file and the disk."""
    from tagstack.config import TrainConfig
    from tagstack.errors import OutputError
    from tagstack.fileio import atomic_save_npy
    from tagstack.report import plt_module, save_figure
    from tagstack.train.loop import fit

    mount, fill = full_disk
    fill()
    full = r"cannot write this file \((No space left on device|.*: no space left on device)\); what it held before is unchanged$"
    with pytest.raises(OutputError, match=r"small/m\.safetensors: " + full):
        save_model(random_tagger(), mount / "m.safetensors")
    with pytest.raises(OutputError, match=r"small/a\.npy: " + full):
        atomic_save_npy(mount / "a.npy", np.zeros(100_000, np.float32))
    with pytest.raises(OutputError, match=r"small/f\.png: " + full):
        save_figure(plt_module().figure(figsize=(8, 8)), mount / "f.png")
    model = torch.nn.Linear(4, 2)
    batches = [(torch.randn(8, 4), (torch.rand(8, 2) > 0.5).float())]
    with pytest.raises(OutputError, match=r"small/net/(best|last)\.pt: " + full):
        fit(
            model,
            train_batches=lambda epoch: batches,
            n_batches=1,
            validate=lambda m: {"loss": 0.0, "roc_auc": 0.5},
            loss_fn=torch.nn.BCEWithLogitsLoss(),
            config=TrainConfig(max_epochs=1),
            workdir=mount / "net",
            device=torch.device("cpu"),
        )
    assert sorted(p.name for p in mount.iterdir()) in (["filler"], ["filler", "net"])  # no temporary file left


def test_a_mel_cache_that_does_not_fit_on_its_disk_is_one_line_before_any_work(synth_dir, full_disk, tmp_path):
    """The cache is written through a memory map, which meets a full disk with SIGBUS (a bare "Bus error", exit 135)
    unless its room is asked for first; in a subprocess so that a regression cannot kill the test run itself."""
    import subprocess
    import sys

    mount, _ = full_disk  # 2 MB; the 64 clips' frames need more
    cmd = [sys.executable, "-m", "tagstack", "run", "--dataset", "manifest", "--root", str(synth_dir / "manifest.csv")]
    got = subprocess.run(
        [*cmd, "--cache-dir", str(mount), "--out", str(tmp_path / "run"), "--device", "cpu"], capture_output=True, text=True
    )
    last = (got.stderr.strip().splitlines() or [f"no message, exit status {got.returncode}"])[-1]
    assert got.returncode == 1 and last.startswith(f"tagstack: error: {mount}/") and "Traceback" not in got.stderr, got.stderr[-2000:]
    assert "/mels.f16: cannot reserve the " in last and "it needs (No space left on device; 2.1 MB free there)" in last
    assert not list(mount.iterdir())  # the new cache is gone again, leaving the disk as it found it


def test_room_asked_for_in_a_folder_that_is_gone_is_one_line_naming_the_file(tmp_path):
    """A mel cache whose folder something else removed: the error names the file, and the message about it does not
    itself fail for want of the free space it would quote (it did: UnboundLocalError)."""
    from tagstack.errors import OutputError
    from tagstack.fileio import reserve

    with pytest.raises(OutputError, match=r"gone/mels\.f16: cannot reserve the 1\.0 MB it needs \(No such file or directory\); make"):
        reserve(tmp_path / "gone" / "mels.f16", 1_000_000)


def test_an_output_that_is_an_input_or_an_audio_file_is_refused(folder, model_file, tmp_path, capsys):
    song = tmp_path / "a.mp3"
    song.write_bytes((folder / "good.wav").read_bytes())  # a WAV named .mp3: the decoders sniff it
    other = tmp_path / "b.ogg"
    other.write_bytes((folder / "good.wav").read_bytes())
    untouched = song.read_bytes()
    assert main(["tag", "-o", str(song), str(other), str(song), "--model", str(model_file), "--device", "cpu"]) == 1
    assert "a.mp3: is an audio file; tagstack will not write its output over it" in capsys.readouterr().err
    assert main(["tag", "-o", str(song), str(other), str(song), "--force", "--model", str(model_file), "--device", "cpu"]) == 1
    assert "a.mp3: is also an input file" in capsys.readouterr().err
    renamed = tmp_path / "song-without-extension"
    renamed.write_bytes(untouched)  # no audio extension: found by its first bytes
    assert main(["tag", str(other), "-o", str(renamed), "--model", str(model_file), "--device", "cpu"]) == 1
    assert song.read_bytes() == untouched and renamed.read_bytes() == untouched
    manifest = tmp_path / "list.npz"
    manifest.write_bytes(b"x")
    assert main(["embed", str(manifest), str(other), "--out", str(manifest), "--model", str(model_file), "--device", "cpu"]) == 1
    assert "list.npz: is also an input file" in capsys.readouterr().err and manifest.read_bytes() == b"x"
    assert main(["tag", str(other), "-o", str(renamed), "--force", "--model", str(model_file), "--device", "cpu"]) == 0
    assert "b.ogg" in renamed.read_text()


def test_an_output_through_a_link_keeps_the_link_and_pipes_and_devices_are_refused(folder, model_file, tmp_path, capsys):
    """`-o` on a symbolic link writes (atomically) its target and leaves the link; on a named pipe or a device it is
    refused before any work: renaming a finished file over them would put a regular file where /dev/null was."""
    good, opts = str(folder / "good.wav"), ["--model", str(model_file), "--device", "cpu"]
    target = tmp_path / "dated" / "tags-2026.csv"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "latest.csv"
    link.symlink_to(target)
    killed = target.with_name(".tagstack-tmp-tags-2026.csv.abc123.tmp")  # what a killed run writing through it left
    killed.write_text("half")
    assert main(["tag", good, "--format", "csv", "-o", str(link), *opts]) == 0
    assert link.is_symlink() and target.read_text().startswith("path,tag,probability") and not killed.exists()
    if os.geteuid() == 0:  # a link another user planted in a folder all write to (as /tmp) is not followed
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o1777)
        os.chmod(shared, 0o1777)
        planted = shared / "tags.csv"
        planted.symlink_to(target)
        os.lchown(planted, 65534, 65534)  # nobody's
        capsys.readouterr()
        assert main(["tag", good, "--format", "csv", "-o", str(planted), *opts]) == 1
        assert "a symbolic link of another user in a folder all users write to" in capsys.readouterr().err
    fifo = tmp_path / "pipe.npz"  # (a name embed takes)
    os.mkfifo(fifo)
    (tmp_path / "to-pipe.npz").symlink_to(fifo)
    outputs = [fifo, tmp_path / "to-pipe.npz"]
    if os.geteuid() == 0:  # a device node of our own (root only), not the system's /dev/null
        os.mknod(tmp_path / "null.npz", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        outputs.append(tmp_path / "null.npz")
    capsys.readouterr()
    for out in outputs:
        for argv in (["tag", good, "-o", str(out)], ["embed", good, "--out", str(out)]):
            assert main([*argv, *opts]) == 1
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "is a device, pipe or socket, not a file" in err[0], err
        assert out.is_symlink() or not out.is_file()  # still what it was


def test_an_output_over_the_manifest_read_or_its_tag_groups_is_refused(folder, model_file, tmp_path, capsys):
    (tmp_path / "good.wav").write_bytes((folder / "good.wav").read_bytes())
    manifest, groups = tmp_path / "m.csv", tmp_path / "tag_groups.csv"
    manifest.write_text("path,tags,split\ngood.wav,low,train\n")
    groups.write_text("tag,group\nlow,register\n")
    before = manifest.read_bytes(), groups.read_bytes()
    opts = ["--model", str(model_file), "--device", "cpu"]
    for out in (manifest, groups):  # (embeddings go to .npz or .parquet only)
        assert main(["tag", str(manifest), "--format", "csv", "-o", str(out), *opts]) == 1
        assert f"{out}: is also an input file" in capsys.readouterr().err
    assert (manifest.read_bytes(), groups.read_bytes()) == before
    assert main(["tag", str(manifest), "--format", "csv", "-o", str(tmp_path / "tags.csv"), *opts]) == 0


def test_standard_output_closed_or_full_is_one_line_naming_it(folder, model_file, tmp_path):
    import subprocess
    import sys

    tag = [sys.executable, "-m", "tagstack", "tag", str(folder / "good.wav"), "--model", str(model_file), "--device", "cpu"]
    closed = subprocess.run(["bash", "-c", '"$@" >&-', "bash", *tag], capture_output=True, text=True, timeout=300)
    assert closed.returncode == 1 and closed.stderr.strip().splitlines() == [
        "tagstack: error: standard output is closed; write the results to a file (-o FILE)"
    ]
    with open("/dev/full", "w") as full:
        got = subprocess.run(tag, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert got.returncode == 1 and got.stderr.strip().splitlines()[-1] == "tagstack: error: standard output: No space left on device"


def test_names_that_are_not_utf8_are_written_escaped_in_every_format(folder, model_file, tmp_path, capsys):
    """A latin-1 name among good files: every file is tagged, every format is written (with one warning line for the
    name), the taggram files keep the name's own bytes, and a name over 255 bytes is one skipped file."""
    pa = pytest.importorskip("pyarrow.parquet")
    music = tmp_path / "music"
    music.mkdir()
    (music / "good.wav").write_bytes((folder / "good.wav").read_bytes())
    with open(os.fsencode(music) + b"/Beyonc\xe9.wav", "wb") as f:
        f.write((folder / "good.wav").read_bytes())
    escaped = f"{music}/Beyonc\\xe9.wav"
    too_long = str(music / ("x" * 300 + ".wav"))
    for fmt in ("csv", "table", "jsonl"):
        out = tmp_path / f"tags.{fmt}"
        assert (
            main(
                [
                    "tag",
                    str(music),
                    too_long,
                    "--format",
                    fmt,
                    "-o",
                    str(out),
                    "--taggram",
                    str(tmp_path / "grams"),
                    "--model",
                    str(model_file),
                    "--device",
                    "cpu",
                ]
            )
            == 1
        )
        text = out.read_text(encoding="utf-8")
        assert (json.dumps(escaped) if fmt == "jsonl" else escaped) in text and str(music / "good.wav") in text
        err = capsys.readouterr().err
        assert f"{escaped}: the name is not valid UTF-8" in err and "File name too long" in err and "Traceback" not in err
    rows = [json.loads(line) for line in (tmp_path / "tags.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == [escaped, str(music / "good.wav")]
    assert b"Beyonc\xe9.taggram.png" in os.listdir(os.fsencode(tmp_path / "grams"))
    assert main(["embed", str(music), "--out", str(tmp_path / "e.parquet"), "--model", str(model_file), "--device", "cpu"]) == 0
    assert pa.read_table(tmp_path / "e.parquet").column("path").to_pylist() == [escaped, str(music / "good.wav")]


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["tag", "x.wav", "--taggram", "g", "--hop", "1e308"],
            "argument --hop: hop must be a number > 0 and <= 10,000,000 (seconds), got '1e308'",
        ),
        (["tag", "x.wav", "--top-k", "-1"], "argument --top-k: top_k must be a whole number >= 0"),
        (["tag", "x.wav", "--threshold", "nan"], "argument --threshold: threshold must be a number >= 0 and <= 1, got 'nan'"),
        (["serve", "--port", "70000"], "argument --port: port must be a whole number >= 1 and <= 65,535, got '70000'"),
        (["serve", "--max-upload-mb", "1e400"], "argument --max-upload-mb: max_upload_mb must be a number > 0"),
        (["serve", "--concurrency", "-3"], "argument --concurrency: concurrency must be a whole number >= 0"),
        (["run", "--out", "r", "--local-epochs", "0"], "argument --local-epochs: epochs must be a whole number >= 1"),
        (["reproduce", "--out", "r", "--seeds", "0,-1"], "argument --seeds: seed must be a whole number >= 0"),
        (["embed", "x.wav", "--out", "e.npz", "--workers", "1e9"], "argument --workers: workers must be a whole number"),
    ],
)
def test_numeric_options_are_range_checked_where_they_are_parsed(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1


def test_the_python_api_checks_the_same_ranges(model_file):
    from tagstack.distributed.ray_batch import run_on_ray
    from tagstack.service.limits import ServiceLimits

    tagger = Tagger(model_file, device="cpu")
    y = np.zeros(SR * 3, np.float32) + 0.01
    for call, message in (
        (lambda: tagger.taggram(y, sr=SR, hop=1e308), "hop must be a number > 0 and <= 10,000,000"),
        (lambda: tagger.predict(y, sr=SR, max_seconds=float("inf")), "max_seconds must be a number > 0"),
        (lambda: tagger.predict_batch([y], sr=SR, batch_windows=0), "batch_windows must be a whole number >= 1"),
        (lambda: tagger.tag(y, sr=SR, top_k=True), "top_k must be a whole number"),
        (lambda: ServiceLimits(max_upload_mb=float("nan")), "max_upload_mb must be a number > 0"),
        (lambda: run_on_ray([], "out", model=model_file, hop=1e308, taggram=True), "hop must be a number > 0"),
        (lambda: run_on_ray([], "out", model=model_file, hop=5.0), "needs a taggram"),
    ):
        with pytest.raises(ParameterError, match=message):
            call()


def test_tensors_lists_and_either_channel_order_are_audio_and_anything_else_a_parameter_error(model_file):
    tagger = Tagger(model_file, device="cpu")
    y = render({"low"}, 4.0, np.random.default_rng(5))
    expected = tagger.predict(y, sr=SR).probs
    stereo = np.stack([y, y])
    for source in (
        torch.from_numpy(stereo),
        torch.from_numpy(stereo.T.copy()),
        stereo.T,
        [float(v) for v in y],
        torch.from_numpy(y).double(),
        tuple(map(list, stereo)),
    ):
        np.testing.assert_allclose(tagger.predict(source, sr=SR).probs, expected, atol=1e-6)
    assert np.isfinite(tagger.predict(torch.from_numpy(y).to(torch.bfloat16), sr=SR).probs).all()
    for bad, message in (
        ([str(folder_) for folder_ in ("a.mp3", "b.mp3")], "list of file names"),
        (np.zeros((2, 0)), "empty"),
        (torch.zeros(2, 0), "empty"),
        ([[0.1, 0.2], [0.1]], "rows of one length"),
        ({"audio": y}, "got dict"),
        (None, "got NoneType"),
        ([True, False] * 100, "floats or integer PCM"),
        (torch.zeros(100, dtype=torch.complex64), "floats or integer PCM"),
    ):
        with pytest.raises(ParameterError, match=message):
            tagger.tag(bad, sr=SR)


def test_many_channels_at_a_high_rate_are_downmixed_in_blocks(tmp_path):
    """255 channels at 96 kHz: decoding holds about a megasample at a time, not every channel of a block (196 MB before)."""
    import tracemalloc

    path = tmp_path / "many.wav"
    x = (np.random.default_rng(0).standard_normal((96_000, 255)) * 3000).astype(np.int16)
    sf.write(path, x, 96_000, subtype="PCM_16")
    expected = x.astype(np.float64).mean(axis=1) / 32768
    del x
    tracemalloc.start()
    try:
        y = load(path, sr=96_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(y, expected, atol=1e-6)
    assert peak < 16e6, f"{peak / 1e6:.0f} MB"  # the file's samples as float32 are 98 MB


def test_a_damaged_shard_is_moved_aside_and_named_by_the_resume_scan(tmp_path, caplog):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from tagstack.distributed.ray_batch import done_paths, read_results

    pq.write_table(pa.table({"path": ["a.wav", "b.wav"], "seconds": [1.0, 2.0]}), tmp_path / "tags-1.parquet")
    pq.write_table(pa.table({"path": ["c.wav"], "seconds": [3.0]}), tmp_path / "tags-2.parquet")
    pq.write_table(pa.table({"path": ["d.wav"], "reason": ["d.wav: cannot decode"]}), tmp_path / "failures-1.parquet")
    data = (tmp_path / "tags-2.parquet").read_bytes()
    (tmp_path / "tags-2.parquet").write_bytes(data[: len(data) // 2])
    assert done_paths(tmp_path) == {"a.wav", "b.wav", "d.wav"}  # c.wav is to be done again
    assert "tags-2.parquet: damaged shard" in caplog.text and "moved aside as tags-2.parquet.damaged" in caplog.text
    assert (tmp_path / "tags-2.parquet.damaged").read_bytes() == data[: len(data) // 2]
    tags, failures = read_results(tmp_path)
    assert tags.column("path").to_pylist() == ["a.wav", "b.wav"] and failures.column("path").to_pylist() == ["d.wav"]


def test_an_analysis_stops_at_the_next_window_when_asked(model_file):
    import threading

    from tagstack.errors import StoppedError

    tagger, y = Tagger(model_file, device="cpu"), np.zeros(SR * 120, np.float32) + 0.01
    stop = threading.Event()
    assert tagger.predict(y, sr=SR, stop=stop).probs.shape == (len(tagger.tags),)  # not set: the whole analysis
    stop.set()
    with pytest.raises(StoppedError, match=r"<array>: stopped before its end"):
        tagger.predict(y, sr=SR, taggram=True, stop=stop)
