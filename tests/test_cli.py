"""The command line, called in-process."""

import json

import numpy as np
import pytest
import soundfile as sf

from tagstack.cli import main


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, synth_dir):
    out = tmp_path_factory.mktemp("clirun")
    from synth import TEST_FRONTEND
    from tagstack.config import TrainConfig
    from tagstack.experiments.experiment_config import ExperimentConfig
    from tagstack.experiments.run import run_experiment as run_all

    cfg = ExperimentConfig(
        dataset="manifest",
        root=str(synth_dir),
        scales=(18, 27),
        frontend=TEST_FRONTEND,
        local=TrainConfig(max_epochs=2, batch_size=32, lr_stages=1),
        global_=TrainConfig(max_epochs=5, batch_size=8, lr_stages=1, monitor="roc_auc"),
        cache_dir=str(out / "cache"),
        workers=1,
    )
    run_all(cfg, out / "run")
    return out / "run" / "model.safetensors"


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for cmd in ("demo", "run", "local", "aggregate", "global", "tag", "embed", "corpus"):
        assert cmd in text


def test_global_trains_the_configured_model_in_a_folder_named_after_the_flags(trained_model, capsys):
    """``tagstack global`` prints the test scores of the model it trained (reused here: run's own ``3-global``); another
    slice of scales and layers gets a folder of its own, named after it."""
    from tagstack.experiments.experiment_config import load_config
    from tagstack.experiments.run import Experiment

    run = trained_model.parent
    assert main(["global", "--out", str(run), "--config", str(run / "config.toml")]) == 0
    g = json.loads((run / "metrics.json").read_text())["global"]
    assert capsys.readouterr().out == f"global model (3-global): test ROC-AUC {g['roc_auc']:.4f}, PR-AUC {g['pr_auc']:.4f}\n"
    cfg = load_config(run / "config.toml").replace(scales=("27",), layers=(2,))  # what --scales 27 --layers 2 configure
    name, m = Experiment(cfg, run).global_model(scales=("27",), layers=(2,))
    assert name == "3-global-s27-l2" and (run / name / "best.pt").is_file() and 0 <= m["roc_auc"] <= 1


def test_tag_formats_and_bad_files(trained_model, synth_dir, tmp_path, capsys):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.mp3").write_bytes(b"\x00garbage" * 100)
    rc = main(
        [
            "tag",
            str(synth_dir / "clip000.wav"),
            str(tmp_path / "empty.wav"),
            str(tmp_path / "corrupt.mp3"),
            "--model",
            str(trained_model),
            "--format",
            "jsonl",
            "--top-k",
            "2",
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 1
    assert "empty.wav: file is empty" in captured.err
    assert "corrupt.mp3" in captured.err and "2 of 3 files" in captured.err
    lines = [json.loads(l) for l in captured.out.strip().splitlines()]
    assert len(lines) == 1 and len(lines[0]["tags"]) == 2
    assert main(["tag", str(synth_dir / "clip00*.wav"), "--model", str(trained_model), "--format", "csv", "--threshold", "0.0"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0] == "path,tag,probability" and len(rows) == 1 + 10 * 4


def test_per_group_takes_the_best_tags_of_every_group_of_the_model_file(model_file, synth_dir, tmp_path, capsys, caplog):
    from tagstack.inference.tagger import Tagger
    from tagstack.models.file import load_model, read_metadata, save_model

    model = load_model(model_file)
    tags = model.tags
    model.groups = {tags[0]: "a", tags[2]: "a", tags[1]: "b"}  # the rest has no group: "other"
    save_model(model, tmp_path / "grouped.safetensors")
    assert read_metadata(tmp_path / "grouped.safetensors")["tag_groups"] == model.groups
    assert load_model(tmp_path / "grouped.safetensors").groups == model.groups  # round trip
    clip = synth_dir / "clip000.wav"
    probs = Tagger(model_file, device="cpu").predict(clip).probs
    members = {"a": [0, 2], "b": [1], "other": list(range(3, len(tags)))}
    expected = [(tags[max(ix, key=lambda i: probs[i])], g) for g, ix in members.items()]
    assert (
        main(
            [
                "tag",
                str(clip),
                "--model",
                str(tmp_path / "grouped.safetensors"),
                "--per-group",
                "--top-k",
                "1",
                "--format",
                "csv",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0] == "path,tag,probability,group"
    assert [tuple(r.split(",")[i] for i in (1, 3)) for r in rows[1:]] == expected
    assert (
        main(
            [
                "tag",
                str(clip),
                "--model",
                str(tmp_path / "grouped.safetensors"),
                "--per-group",
                "--threshold",
                "0",
                "--top-k",
                "1",
                "--format",
                "jsonl",
                "--device",
                "cpu",
            ]
        )
        == 0
    )  # a threshold replaces the top k
    line = json.loads(capsys.readouterr().out)
    assert len(line["tags"]) == len(tags) and line["groups"][tags[1]] == "b" and line["groups"][tags[3]] == "other"
    caplog.clear()
    assert (
        main(["tag", str(clip), "--model", str(model_file), "--per-group", "--top-k", "1", "--format", "csv", "--device", "cpu"]) == 0
    )  # a model without groups: one group, and a warning saying so
    assert [r.split(",")[3] for r in capsys.readouterr().out.strip().splitlines()[1:]] == ["other"]
    assert "has no tag groups" in caplog.text
    assert main(["info", str(tmp_path / "grouped.safetensors")]) == 0
    assert f"tag groups (--per-group): a (2), b (1), other ({len(tags) - 3})" in capsys.readouterr().out


def test_tag_writes_taggram_plot_and_data(trained_model, synth_dir, tmp_path):
    assert main(["tag", str(synth_dir / "clip001.wav"), "--model", str(trained_model), "--taggram", str(tmp_path)]) == 0
    for suffix in (".taggram.npy", ".taggram.csv", ".taggram.png"):
        assert (tmp_path / f"clip001{suffix}").exists()
    assert np.load(tmp_path / "clip001.taggram.npy").shape == (1, 4)


def test_taggram_hop_and_files_sharing_a_name(trained_model, synth_dir, tmp_path, capsys):

    y, sr = sf.read(synth_dir / "clip001.wav")
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        sf.write(tmp_path / sub / "song.wav", np.concatenate([y, y]), sr)  # 10 s: two clips of the test model
    out = tmp_path / "grams"
    assert (
        main(["tag", str(tmp_path / "a"), str(tmp_path / "b"), "--model", str(trained_model), "--taggram", str(out), "--hop", "2.5"]) == 0
    )
    assert sorted(p.name for p in out.glob("*.npy")) == ["song-2.taggram.npy", "song.taggram.npy"]
    lines = (out / "song.taggram.csv").read_text().splitlines()
    assert lines[0].startswith("start_s,end_s,")
    assert [l.split(",")[:2] for l in lines[1:]] == [["0.00", "5.00"], ["2.50", "7.50"], ["5.00", "10.00"]]
    # a --hop that cannot be used is one error up front, not one per file
    assert main(["tag", str(tmp_path / "a"), "--model", str(trained_model), "--hop", "2.5"]) == 1
    assert (
        main(["tag", str(tmp_path / "a"), "--model", str(trained_model), "--taggram", str(out), "--hop", "-1"]) == 2
    )  # argparse's usage error
    assert "--hop" in capsys.readouterr().err


def test_embed_npz_and_parquet_record_their_scales_and_layers(trained_model, synth_dir, tmp_path):
    assert (
        main(["embed", str(synth_dir), "--model", str(trained_model), "--out", str(tmp_path / "e.npz"), "--scales", "27", "--layers", "3"])
        == 0
    )
    with np.load(tmp_path / "e.npz") as f:
        x, names = f["embeddings"], list(f["paths"])
        assert list(f["scales"]) == ["27"] and list(f["layers"]) == [3]
    assert x.shape == (64, 256) and len(names) == 64 and names[0].endswith("clip000.wav")
    pq = pytest.importorskip("pyarrow.parquet")
    assert main(["embed", str(synth_dir / "clip000.wav"), "--model", str(trained_model), "--out", str(tmp_path / "e.parquet")]) == 0
    t = pq.read_table(tmp_path / "e.parquet")
    assert t.num_rows == 1 and len(t.column("embedding")[0]) == 1024
    assert json.loads(t.schema.metadata[b"tagstack.scales"]) == ["18", "27"]
    assert main(["embed", str(synth_dir / "clip000.wav"), "--model", str(trained_model), "--out", str(tmp_path / "e.npy")]) == 1


def test_errors_are_one_line_with_nonzero_status(tmp_path, capsys):
    assert main(["tag", str(tmp_path / "missing.wav"), "--model", str(tmp_path / "nomodel.safetensors")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tagstack: error:") and "nomodel.safetensors" in err and "Traceback" not in err
    assert main(["run", "--dataset", "nope", "--out", str(tmp_path)]) == 1
    assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_ray_flags_without_the_ray_engine_are_refused(synth_dir, tmp_path, capsys):
    clip = str(synth_dir / "clip000.wav")
    assert main(["tag", clip, "--workers", "2", "--decode-in", "tasks"]) == 1
    assert "--workers, --decode-in: for --engine ray only" in capsys.readouterr().err
    assert main(["embed", clip, "-o", str(tmp_path / "e.npz"), "--ray-address", "auto"]) == 1
    assert "--ray-address: for --engine ray only" in capsys.readouterr().err
    assert not (tmp_path / "e.npz").exists()


def test_a_reader_that_goes_away_ends_the_output_quietly(model_file, synth_dir):
    """`tagstack tag ... | head -1`: no traceback when the pipe closes."""
    import subprocess
    import sys

    files = [str(p) for p in sorted(synth_dir.glob("clip00*.wav"))]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tagstack", "tag", *files, "--model", str(model_file), "--format", "csv", "--top-k", "0", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and "Traceback" not in err and "BrokenPipe" not in err


def test_the_cli_defaults_are_the_configuration_dataclasses():
    """One home per default: a flag left out means the dataclass's value, for training, serving and tagging alike."""
    import inspect

    from tagstack import checks
    from tagstack.cli.commands import config_from_args
    from tagstack.cli.parser import build_parser
    from tagstack.experiments.experiment_config import ExperimentConfig
    from tagstack.inference.outputs import tag_files
    from tagstack.inference.tagger import Tagger
    from tagstack.service.limits import ServiceLimits

    parser = build_parser()
    assert config_from_args(parser.parse_args(["run", "--out", "x"])) == ExperimentConfig()
    a = parser.parse_args(["serve"])
    for name, value in vars(ServiceLimits()).items():
        assert getattr(a, name) == value, name
    top_k = {
        parser.parse_args(["tag", "x"]).top_k,
        inspect.signature(Tagger.tag).parameters["top_k"].default,
        inspect.signature(tag_files).parameters["top_k"].default,
    }
    assert top_k == {checks.DEFAULT_TOP_K}


@pytest.mark.parametrize(
    ("section", "text", "words"),
    [
        ("[local]", "seed = -1", "seed must be a whole number >= 0"),
        ("[local]", "max_epochs = 2.5", "max_epochs must be a whole number >= 1"),
        ("[global_]", "lr = nan", "lr must be a number > 0"),
        ("[global_]", "batch_size = true", "batch_size must be a whole number >= 1"),
        ("[global_]", "lr_decay = 1.0", "lr_decay must be a number > 0 and < 1, got 1.0"),
        ("", "layers = [1.5]", "layers must be a whole number >= 1"),
        ("", "seeds = [0, -3]", "seeds must be a whole number >= 0"),
        ("", "global_hidden = 0", "global_hidden must be a whole number >= 1"),
    ],
)
def test_a_config_file_gets_the_flags_checks(tmp_path, capsys, section, text, words):
    """A config.toml (or Python) is held to the ranges its flags have: a value the CLI refuses is refused here too,
    in one line naming the field, before any work."""
    path = tmp_path / "config.toml"
    path.write_text(f"{text}\n" if not section else f"{section}\n{text}\n")
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tagstack: error:") and words in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_config_written_for_a_gpu_loads_anywhere_and_runs_where_the_device_flag_says(tmp_path, capsys):
    from tagstack.cli.commands import config_from_args
    from tagstack.cli.parser import build_parser
    from tagstack.errors import ParameterError
    from tagstack.experiments.experiment_config import ExperimentConfig, load_config, save_config

    path = tmp_path / "config.toml"
    save_config(ExperimentConfig(device="cuda:1"), path)
    assert load_config(path).device == "cuda:1"  # a name torch knows: loads on a machine without it
    parser = build_parser()
    assert config_from_args(parser.parse_args(["run", "--config", str(path), "--out", "x", "--device", "cpu"])).device == "cpu"
    assert config_from_args(parser.parse_args(["run", "--config", str(path), "--out", "x", "--device", "auto"])).device == "auto"
    assert config_from_args(parser.parse_args(["run", "--config", str(path), "--out", "x"])).device == "cuda:1"
    with pytest.raises(ParameterError, match="'gpu0' is not a torch device"):
        ExperimentConfig(device="gpu0")


def test_help_usage_errors_and_the_model_list_answer_without_torch():
    """`--help` of every command, a usage error and `info --list` read no model and run nothing, so they answer at
    once: importing torch alone takes longer than the rest of the command (bench/bench_startup.py). Run in a fresh
    interpreter, since this one has imported torch already."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import tagstack

    code = """
import contextlib, io, sys
from tagstack.cli import build_parser, main
parser = build_parser()
commands = [None, *parser._subparsers._group_actions[0].choices]
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    for command in commands:
        try:
            main([command, "--help"] if command else ["--help"])
        except SystemExit as e:
            assert e.code == 0, (command, e.code)
    assert main(["tag"]) == 2 and main(["run", "--hidden", "0", "--out", "x"]) == 2 and main(["frobnicate"]) == 2
    assert main(["info", "--list"]) == 0
assert len(commands) > 10, commands
print("torch" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(tagstack.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "False\n"
