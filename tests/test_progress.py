"""Long work shows progress where it runs: log lines when stderr is not a terminal (nohup, a scheduler, a CI log)."""

import logging
import os
import subprocess
import sys
import time

import pytest

from tagstack.cli.main import main
from tagstack.progress import progress


@pytest.fixture(autouse=True)
def _shown(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # the rest of the suite runs quiet (conftest)


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tagstack.progress"]


def test_off_a_terminal_the_bar_is_plain_log_lines_with_counts_rate_and_time_left(caplog):
    caplog.set_level(logging.INFO, logger="tagstack")
    for _ in progress(range(3), desc="stage 2", unit="batch", every=0.0):
        pass
    lines = _lines(caplog)
    assert lines[0].startswith("stage 2: 0/3 batch (0%)")
    assert lines[-1].startswith("stage 2: 3/3 batch (100%), ") and lines[-1].endswith(" left")
    assert "batch/s" in lines[-1] and " elapsed" in lines[-1]
    assert len(lines) == 4  # 0, 1, 2, 3: every step once at every=0, the last not repeated by close
    assert not any("\r" in line or "|" in line for line in lines)  # no bar drawing in a log


def test_lines_come_at_most_every_interval_and_steps_of_a_logged_job_stay_quiet_when_quick(caplog):
    caplog.set_level(logging.INFO, logger="tagstack")
    bar = progress(total=50, desc="mel cache", unit="clip", every=3600.0)
    for _ in range(50):
        bar.update(1)
    bar.close()
    assert [line.split(",")[0] for line in _lines(caplog)] == ["mel cache: 0/50 clip (0%)", "mel cache: 50/50 clip (100%)"]
    caplog.clear()
    for _ in progress(range(5), desc="[global] epoch 1", unit="batch", leave=False, every=0.2):
        pass
    assert _lines(caplog) == []  # an epoch logs its own line; its bar speaks only when it is slow
    for _ in progress(range(3), desc="[global] epoch 2", unit="batch", leave=False, every=0.2):
        time.sleep(0.15)
    assert [line.split(",")[0] for line in _lines(caplog)] == ["[global] epoch 2: 2/3 batch (67%)"]


def test_hidden_progress_says_nothing_and_an_iterator_without_length_counts_up(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="tagstack")
    assert list(progress(range(3), desc="rank 1", unit="batch", hide=True)) == [0, 1, 2]
    assert _lines(caplog) == []
    assert list(progress(iter("ab"), desc="files", unit="file", every=0.0)) == ["a", "b"]
    assert _lines(caplog)[-1].startswith("files: 2 file, ")
    caplog.clear()
    monkeypatch.setenv("TQDM_DISABLE", "1")  # tqdm's switch for everything quiet
    assert list(progress(range(3), desc="quiet", unit="batch", every=0.0)) == [0, 1, 2]
    assert _lines(caplog) == []


def test_tagging_several_files_from_a_script_reports_progress_on_stderr(model_file, synth_dir, capsys):
    """`tagstack tag DIR > tags.jsonl 2> log`: the log says how far it got; the tags alone are on stdout."""
    files = sorted(synth_dir.glob("clip00[0-2].wav"))
    assert main(["tag", *map(str, files), "--model", str(model_file), "--format", "jsonl", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 3 and "file/s" not in out
    assert "tag: 0/3 file (0%)" in err and "tag: 3/3 file (100%)" in err


def _tag_command(model_file, synth_dir, out) -> list[str]:
    files = sorted(synth_dir.glob("clip0[0-1]*.wav"))[:12]
    return [
        sys.executable,
        "-m",
        "tagstack",
        "tag",
        *map(str, files),
        "--model",
        str(model_file),
        "--device",
        "cpu",
        "--format",
        "jsonl",
        "-o",
        str(out),
    ]


def test_a_job_whose_log_reader_went_away_or_without_stderr_still_finishes(model_file, synth_dir, tmp_path):
    """`tagstack tag ... 2>&1 | head -1` and `2>&-`: the progress lines have nowhere to go; the tags are written all the same."""
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    proc = subprocess.Popen(_tag_command(model_file, synth_dir, tmp_path / "a.jsonl"), stderr=subprocess.PIPE, env=env)
    assert proc.stderr.readline().startswith(b"tag: 0/12 file")
    proc.stderr.close()  # the reader goes away
    assert proc.wait(timeout=300) == 0
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 12
    done = subprocess.run(_tag_command(model_file, synth_dir, tmp_path / "b.jsonl"), stderr=subprocess.DEVNULL, env=env, timeout=300)
    assert done.returncode == 0
    closed = subprocess.run(
        _tag_command(model_file, synth_dir, tmp_path / "c.jsonl"),
        stderr=subprocess.DEVNULL,
        env=env,
        timeout=300,
        close_fds=True,
        preexec_fn=lambda: os.close(2),  # started with stderr closed: sys.stderr is None
    )
    assert closed.returncode == 0 and closed.stdout is None
    assert (tmp_path / "b.jsonl").read_text().count("\n") == (tmp_path / "c.jsonl").read_text().count("\n") == 12
