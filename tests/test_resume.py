"""An interrupted ``tag -o`` or ``embed`` job: the same command again does only the files it had not done, and its
output is the one an uninterrupted run writes (``kill -9`` mid-run: tests/test_kill.py)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tagstack.errors import OutputError, ParameterError
from tagstack.inference.journal import Journal, decode_vector, encode_vector, journal_path
from tagstack.inference.outputs import tag_files


def _tagstack(*args: str) -> list[str]:
    return [sys.executable, "-m", "tagstack", *args, "--device", "cpu"]


def _interrupt_when_recorded(cmd: list[str], journal, records: int, cwd=None) -> subprocess.CompletedProcess:
    """Run ``cmd`` (in ``cwd``) and press Ctrl-C (SIGINT) once its journal holds ``records`` files."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.is_file() and len(journal.read_bytes().splitlines()) > records:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.01)
    _, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, "", err)


@pytest.mark.parametrize("job", ["tag", "embed"])
def test_ctrl_c_then_the_same_command_does_only_the_rest_and_writes_what_one_run_writes(job, model_file, synth_dir, tmp_path):
    out = tmp_path / ("tags.jsonl" if job == "tag" else "e.npz")
    args = (
        ["tag", str(synth_dir), "--model", str(model_file), "--format", "jsonl", "-o", str(out)]
        if job == "tag"
        else ["embed", str(synth_dir), "--model", str(model_file), "--out", str(out)]
    )
    stopped = _interrupt_when_recorded(_tagstack(*args), journal_path(out), records=3)
    assert stopped.returncode == 130 and "run the same command again to resume" in stopped.stderr, stopped.stderr[-2000:]
    assert not out.exists()  # the output is whole or absent: only the journal holds the work so far
    kept = len(journal_path(out).read_bytes().splitlines()) - 1
    assert 3 <= kept < 64
    with open(journal_path(out), "ab") as fh:  # as if the process had died in the middle of recording a file
        fh.write(b'{"path": "' + str(synth_dir).encode() + b"/clip")

    shown_progress = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    again = subprocess.run(_tagstack(*args), capture_output=True, text=True, timeout=300, env=shown_progress)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming: {kept} files were done by an earlier run" in again.stderr
    assert "its last line was cut short when the run stopped" in again.stderr
    assert f"{job}: 0/{64 - kept} file" in again.stderr  # the progress counts only the files left
    assert not journal_path(out).exists()

    whole = tmp_path / ("whole" + out.suffix)
    assert subprocess.run(_tagstack(*[whole if a == str(out) else a for a in map(str, args)]), capture_output=True).returncode == 0
    if job == "tag":
        assert out.read_text() == whole.read_text()
    else:
        with np.load(out, allow_pickle=False) as a, np.load(whole, allow_pickle=False) as b:
            assert list(a["paths"]) == list(b["paths"]) and len(a["paths"]) == 64
            np.testing.assert_allclose(a["embeddings"], b["embeddings"], rtol=1e-5, atol=1e-6)


def test_another_jobs_journal_is_never_mixed_in_nor_destroyed(model_file, synth_dir, tmp_path):
    files = sorted(synth_dir.glob("clip0*.wav"))[:2]
    out = tmp_path / "tags.jsonl"

    with Journal.open(out, {"job": "tag", "format": "csv"}):  # a job still running on the same output
        with pytest.raises(ParameterError, match=r"another tagstack job is writing this output now .*tags\.jsonl\.partial is locked"):
            tag_files(files, model=model_file, device="cpu", fmt="jsonl", output=out)
    # the same journal, its job stopped: its settings were other ones
    with pytest.raises(
        ParameterError, match=r"tags\.jsonl\.partial: holds the work of an interrupted run with other settings \(.*format csv -> jsonl"
    ):
        tag_files(files, model=model_file, device="cpu", fmt="jsonl", output=out)
    assert not out.exists()

    journal_path(out).write_text("my own notes\n")  # a file of the user's that happens to have that name
    with pytest.raises(ParameterError, match=r"tags\.jsonl\.partial: not a tagstack progress file"):
        tag_files(files, model=model_file, device="cpu", fmt="jsonl", output=out)
    assert journal_path(out).read_text() == "my own notes\n"


@pytest.mark.parametrize("job", ["tag", "embed"])
def test_a_second_job_refused_for_the_lock_leaves_what_the_first_is_writing(job, model_file, synth_dir, tmp_path):
    """The first job's output (and taggrams) go through temporary files, which a later run removes as a killed run's
    leftovers; a job refused because the first still holds the output must not remove them under its feet."""
    from tagstack.fileio import TEMP_PREFIX
    from tagstack.inference.outputs import embed_files

    files = sorted(synth_dir.glob("clip0*.wav"))[:1]
    out, grams = tmp_path / ("tags.jsonl" if job == "tag" else "e.npz"), tmp_path / "grams"
    grams.mkdir()
    writing = [tmp_path / f"{TEMP_PREFIX}{out.name}.abc123.tmp", grams / f"{TEMP_PREFIX}clip0.taggram.npy.q.tmp"]
    for p in writing:
        p.write_bytes(b"the first job is writing this")
    with Journal.open(out, {"job": job}), pytest.raises(ParameterError, match="another tagstack job is writing this output now"):
        if job == "tag":
            tag_files(files, model=model_file, device="cpu", fmt="jsonl", output=out, taggram_dir=grams)
        else:
            embed_files(files, out, model=model_file, device="cpu")
    assert all(p.read_bytes() == b"the first job is writing this" for p in writing)


def test_embedding_vectors_survive_the_journal_exactly_and_a_wrong_length_is_not_one():
    x = np.random.default_rng(0).standard_normal(37).astype(np.float32)
    assert np.array_equal(decode_vector(encode_vector(x), 37), x)
    assert decode_vector(encode_vector(x), 36) is None and decode_vector("not base64!", 37) is None and decode_vector(None, 37) is None


def test_a_full_disk_while_recording_is_one_line_and_the_work_so_far_stays(full_disk):
    folder, fill = full_disk
    out = folder / "e.npz"
    journal = Journal.open(out, {"job": "embed"})
    journal.add("a.mp3", vector=encode_vector(np.ones(8)))
    fill()
    with pytest.raises(
        OutputError, match=r"e\.npz\.partial: cannot record the job's progress \(No space left on device\); the files done so far"
    ):
        journal.add("b.mp3", vector=encode_vector(np.ones(4000)))  # more than the rest of the file's last page
    journal.close()
    (folder / "filler").unlink()
    with Journal.open(out, {"job": "embed"}) as again:  # room again: the same command resumes
        assert list(again.done) == ["a.mp3"] and decode_vector(again.done["a.mp3"]["vector"], 8).tolist() == [1.0] * 8


def test_ctrl_c_of_a_job_that_keeps_nothing_does_not_promise_a_resume(model_file, synth_dir):
    proc = subprocess.Popen(
        _tagstack("tag", *[str(synth_dir)] * 4, "--model", str(model_file), "--format", "jsonl"),  # long enough to interrupt
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().startswith('{"path": ')  # tagging has begun; its results go to standard output
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "tagstack: interrupted", err[-2000:]


def _stopping_after(tagger, n: int):
    """``tagger`` whose ``predict_many`` is interrupted (as by Ctrl-C) once it has given ``n`` results."""
    whole = tagger.predict_many

    def predict_many(files, **kw):
        for k, r in enumerate(whole(files, **kw)):
            if k == n:
                raise KeyboardInterrupt
            yield r

    tagger.predict_many = predict_many
    return tagger


def test_a_file_changed_before_the_rerun_is_done_again(model_file, synth_dir, tmp_path):
    from tagstack.inference.tagger import Tagger

    a, b, c = (tmp_path / f"{x}.wav" for x in "abc")
    for dst, src in zip((a, b), sorted(synth_dir.glob("clip0*.wav"))):
        dst.write_bytes(src.read_bytes())
    files, out, whole = [a, b], tmp_path / "tags.jsonl", tmp_path / "whole.jsonl"
    with pytest.raises(KeyboardInterrupt):
        tag_files(files, tagger=_stopping_after(Tagger(model_file, device="cpu"), 1), fmt="jsonl", output=out)
    a.write_bytes(sorted(synth_dir.glob("clip0*.wav"))[5].read_bytes())  # replaced (a download completed, a re-encoding ...)
    os.utime(a, ns=(1, 1))
    tag_files(files, model=model_file, device="cpu", fmt="jsonl", output=out)
    tag_files(files, model=model_file, device="cpu", fmt="jsonl", output=whole)
    assert out.read_text() == whole.read_text()  # not the tags of what a.wav held before


def test_a_file_listed_twice_gets_both_its_taggrams_after_a_resume(model_file, synth_dir, tmp_path):
    from tagstack.inference.tagger import Tagger

    a, b = sorted(synth_dir.glob("clip0*.wav"))[:2]
    out, taggrams = tmp_path / "tags.jsonl", tmp_path / "tg"
    with pytest.raises(KeyboardInterrupt):
        tag_files([a, b, a], tagger=_stopping_after(Tagger(model_file, device="cpu"), 1), fmt="jsonl", output=out, taggram_dir=taggrams)
    tag_files([a, b, a], model=model_file, device="cpu", fmt="jsonl", output=out, taggram_dir=taggrams)
    assert sorted(p.name for p in taggrams.glob("*.npy")) == [f"{a.stem}-2.taggram.npy", f"{a.stem}.taggram.npy", f"{b.stem}.taggram.npy"]


@pytest.mark.parametrize("kind", ["fifo", "folder", "link"])
def test_a_pipe_folder_or_link_under_the_journals_name_is_refused_at_once(kind, tmp_path):
    import threading

    out = tmp_path / "tags.jsonl"
    if kind == "fifo":
        os.mkfifo(journal_path(out))
    elif kind == "folder":
        journal_path(out).mkdir()
    else:
        journal_path(out).symlink_to(tmp_path / "elsewhere")
    raised = []

    def attempt():
        try:
            Journal.open(out, {"job": "tag"}).close()
        except (ParameterError, OutputError) as e:
            raised.append(e)

    t = threading.Thread(target=attempt, daemon=True)  # reading a pipe that no one writes would wait for ever
    t.start()
    t.join(20)
    assert not t.is_alive() and len(raised) == 1 and "not a tagstack progress file" in str(raised[0])
    assert not (tmp_path / "elsewhere").exists()


def test_a_long_output_name_in_bytes_still_gets_a_journal(tmp_path):
    out = tmp_path / ("a" * 100 + "音" * 50 + ".csv")  # 254 bytes: a name the filesystem takes
    assert len(os.fsencode(journal_path(out).name)) <= 255
    with Journal.open(out, {"job": "tag"}) as journal:
        journal.add("x.mp3", text="x\n")
    assert list(Journal.open(out, {"job": "tag"}).done) == ["x.mp3"]


def test_a_job_that_finds_the_journal_locked_never_removes_it(tmp_path, monkeypatch):
    from pathlib import Path

    out = tmp_path / "tags.jsonl"
    first = Journal.open(out, {"job": "tag"})  # created it, runs
    path = str(journal_path(out))
    # the second job started at the same moment, and looked before the first had created the file
    real_lstat, real_exists = os.lstat, Path.exists

    def lstat(p, *a, **kw):
        if os.fspath(p) == path:
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_lstat(p, *a, **kw)

    monkeypatch.setattr(os, "lstat", lstat)
    monkeypatch.setattr(Path, "exists", lambda p, *a, **kw: False if str(p) == path else real_exists(p, *a, **kw))
    with pytest.raises(ParameterError, match="another tagstack job is writing this output now"):
        Journal.open(out, {"job": "tag"})
    monkeypatch.undo()
    assert journal_path(out).is_file()  # the first job's progress is still there, and still refuses a third job
    with pytest.raises(ParameterError, match="another tagstack job is writing this output now"):
        Journal.open(out, {"job": "tag"})
    first.close()


def test_recording_a_file_keeps_nothing_of_it_in_memory(tmp_path):
    import tracemalloc

    x = np.ones(4096, dtype=np.float32)
    with Journal.open(tmp_path / "e.npz", {"job": "embed"}) as journal:
        tracemalloc.start()
        for i in range(300):  # 300 embeddings of 4096 values: about 6.6 MB as journal lines
            journal.add(f"{i}.mp3", vector=encode_vector(x))
        kept, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert kept < 1_000_000
    assert len(Journal.open(tmp_path / "e.npz", {"job": "embed"}).done) == 300


def test_long_output_names_get_journals_of_their_own_within_the_name_limit(tmp_path):
    short = tmp_path / "tags.csv"
    assert journal_path(short) == tmp_path / "tags.csv.partial"
    stem = "a" * 120 + "音" * 40  # 240 bytes: with the suffix, over the usual 255-byte limit on a name
    one, two = (journal_path(tmp_path / f"{stem}-{k}.csv") for k in (1, 2))
    assert one != two and one.name.endswith(".partial") and two.name.endswith(".partial")
    assert all(len(p.name.encode()) <= 255 for p in (one, two))
    with Journal.open(tmp_path / f"{stem}-1.csv", {"job": "tag"}):  # the name the filesystem takes
        with Journal.open(tmp_path / f"{stem}-2.csv", {"job": "tag"}):  # and another job beside it: not the same file
            pass


def test_a_rerun_from_another_folder_with_the_same_relative_taggram_folder_is_another_job(model_file, synth_dir, tmp_path, monkeypatch):
    """``--taggram grams`` names another folder when run from elsewhere: the files done before would have no taggrams
    there, so the rerun is refused as a job with other settings, naming the taggram folder."""
    out = tmp_path / "tags.csv"
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    args = ["tag", str(synth_dir), "--model", str(model_file), "--format", "csv", "-o", str(out), "--taggram", "grams"]
    stopped = _interrupt_when_recorded(_tagstack(*args), journal_path(out), records=2, cwd=tmp_path / "a")
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(ParameterError, match=r"holds the work of an interrupted run with other settings \(taggram\)"):
        tag_files([synth_dir], model=model_file, device="cpu", fmt="csv", output=out, taggram_dir="grams")
    monkeypatch.chdir(tmp_path / "a")  # from where it started, it resumes
    assert tag_files([synth_dir], model=model_file, device="cpu", fmt="csv", output=out, taggram_dir="grams").done == 64
    assert len(list((tmp_path / "a" / "grams").glob("*.taggram.npy"))) == 64 and not (tmp_path / "b" / "grams").exists()
