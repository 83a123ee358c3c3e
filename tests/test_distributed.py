"""Batch tagging and embedding on a real local Ray cluster (workers are separate processes): results, failures, kills.

The Ray path must give, file for file, what the single-machine path gives,
report bad files in its failure table, write shards that are each whole, and
survive a killed driver (rerun: nothing lost, nothing twice) and a killed
worker (Ray retries its batch).
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("ray")
pytest.importorskip("pyarrow")

from synth import SR, render  # noqa: E402
from tagstack.distributed.ray_batch import read_results, run_on_ray  # noqa: E402
from tagstack.errors import OutputError  # noqa: E402
from tagstack.fileio import TEMP_PREFIX  # noqa: E402
from tagstack.inference.outputs import audio_files  # noqa: E402
from tagstack.inference.tagger import Tagger  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and SIGKILL")]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """40 good clips (wav, flac, mp3) and two bad files."""
    d = tmp_path_factory.mktemp("catalogue")
    rng = np.random.default_rng(0)
    for i in range(40):
        ext = ("wav", "flac", "mp3")[i % 3]
        sf.write(d / f"c{i:02d}.{ext}", render({"low", "pulse"} if i % 2 else {"high"}, 6.0, rng), SR)
    (d / "text.mp3").write_text("not audio\n" * 100)
    y = render({"noise"}, 3.0, rng)
    y[50] = np.nan
    sf.write(d / "nan.wav", y, SR, subtype="FLOAT")
    return d


@pytest.fixture
def local_ray():
    """Ray started in this process for one test (the CLI tests start their own in their process)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_gives_the_single_machine_results_and_a_failure_table(catalogue, model_file, tmp_path, local_ray):
    out = tmp_path / "out"
    files = audio_files([catalogue])
    report = run_on_ray(files, out, model=model_file, device="cpu", embed=True, workers=2, batch_files=4)
    assert report.done == 40 and report.exit_status == 1
    assert sorted(os.path.basename(p) for p, _ in report.failed) == ["nan.wav", "text.mp3"]
    tags, failures = read_results(out)
    assert Counter(tags.column("path").to_pylist()) == Counter(str(f) for f in files if f.name not in ("nan.wav", "text.mp3"))
    reasons = dict(zip(failures.column("path").to_pylist(), failures.column("reason").to_pylist()))
    assert "NaN or infinite" in reasons[str(catalogue / "nan.wav")] and "cannot decode" in reasons[str(catalogue / "text.mp3")]
    tagger = Tagger(model_file, device="cpu")
    rows = tags.to_pylist()
    for row in rows[::7]:
        expected = tagger.predict(row["path"])
        # the worker's four files share network passes: equal up to float rounding in batched convolutions
        np.testing.assert_allclose([row[t] for t in tagger.tags], expected.probs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(row["embedding"], expected.embedding, rtol=1e-4, atol=1e-5)
        assert row["seconds"] == pytest.approx(expected.seconds)
    again = run_on_ray(files, out, model=model_file, device="cpu", embed=True, workers=2)
    assert again.done == 0 and again.reused == 42 and len(again.failed) == 2  # a rerun does nothing again


def test_decoding_in_cpu_tasks_gives_the_same_results_and_failures(catalogue, model_file, tmp_path, local_ray, caplog):
    """The decode stage that feeds GPU workers (forced on here, on CPUs) changes nothing a user sees."""
    files = [f for f in audio_files([catalogue]) if f.name.startswith("c")][::5] + [catalogue / "nan.wav", catalogue / "text.mp3"]
    grams = tmp_path / "grams"
    with caplog.at_level("INFO", logger="tagstack.distributed.ray_batch"):
        report = run_on_ray(
            files,
            tmp_path / "out",
            model=model_file,
            device="cpu",
            embed=True,
            taggram_dir=grams,
            hop=2,
            workers=1,
            batch_files=6,
            decode_tasks=True,
        )
    assert "decoded by CPU tasks" in caplog.text
    assert report.done == len(files) - 2
    tagger = Tagger(model_file, device="cpu")
    expected = dict(zip(map(str, files), tagger.predict_batch(files, taggram=True, hop=2)))
    assert dict(report.failed) == {p: str(r) for p, r in expected.items() if not hasattr(r, "probs")}  # the decoder's words
    for row in read_results(tmp_path / "out")[0].to_pylist():
        want = expected[row["path"]]
        np.testing.assert_allclose([row[t] for t in tagger.tags], want.probs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(row["embedding"], want.embedding, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.reshape(row["taggram"], (row["taggram_windows"], -1)), want.taggram, atol=1e-5)
        assert row["seconds"] == pytest.approx(want.seconds)
    assert len(list(grams.glob("*.png"))) == report.done


def test_the_decode_stage_and_its_worker_equal_predict_batch(model_file, tmp_path):
    """Without Ray: what the CPU stage sends (audio, a long file left to stream, a reason) and what the worker makes
    of it are, file by file, Tagger.predict_batch's results and error messages (Result.path included)."""
    from tagstack.distributed import ray_batch

    rng = np.random.default_rng(1)
    paths = []
    for name, seconds in (("short.wav", 2.0), ("clip.flac", 6.0), ("long.wav", 13.0)):
        sf.write(tmp_path / name, render({"low", "high"}, seconds, rng), SR)
        paths.append(tmp_path / name)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.mp3").write_text("not audio\n" * 100)
    y = render({"noise"}, 3.0, rng)
    y[10] = np.inf
    sf.write(tmp_path / "inf.wav", y, SR, subtype="FLOAT")
    paths += [tmp_path / "empty.wav", tmp_path / "text.mp3", tmp_path / "inf.wav"]
    tagger = Tagger(model_file, device="cpu")
    batch = {
        "path": np.array([str(p) for p in paths], dtype=object),
        "file": np.array([bytes(p) for p in paths], dtype=object),
        "stem": np.array([bytes(p.stem, "utf-8") for p in paths], dtype=object),
    }
    sent = ray_batch._decode(batch, max_seconds=10.0)
    assert list(sent["status"]) == ["", "", ray_batch.STREAM_HERE, ray_batch.FAILED, ray_batch.FAILED, ray_batch.FAILED]
    worker = ray_batch._Worker.__new__(ray_batch._Worker)  # the actor's object, without the actor
    worker.tagger, worker.taggram, worker.hop = tagger, True, 1.5
    got = worker._predict_decoded(
        [str(p) for p in paths], [str(p) for p in paths], sent["audio"], list(sent["rate"]), list(sent["status"]), list(sent["reason"])
    )
    want = tagger.predict_batch(paths, taggram=True, hop=1.5)
    for g, w in zip(got, want):
        assert type(g) is type(w)
        if hasattr(w, "probs"):
            assert g.path == w.path and g.seconds == w.seconds
            np.testing.assert_allclose(g.probs, w.probs, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(g.taggram, w.taggram, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(g.window_starts, w.window_starts)
        else:
            assert str(g) == str(w)


def shards(out):
    return sorted(out.glob("tags-*.parquet"))


def test_killed_driver_then_rerun_loses_and_repeats_nothing(catalogue, model_file, tmp_path):
    out, grams = tmp_path / "out", tmp_path / "taggrams"
    cmd = [
        sys.executable,
        "-m",
        "tagstack",
        "tag",
        str(catalogue),
        "--engine",
        "ray",
        "-o",
        str(out),
        "--model",
        str(model_file),
        "--device",
        "cpu",
        "--workers",
        "2",
        "--taggram",
        str(grams),
        "--hop",
        "2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and not shards(out) and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None and shards(out), "the job ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)
    written = len(shards(out))
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 1, rerun.stderr[-2000:]  # the two bad files
    assert "already have results" in rerun.stderr and written >= 1
    tags, failures = read_results(out)
    paths = tags.column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 40
    assert sorted(failures.column("path").to_pylist()) == sorted(str(catalogue / n) for n in ("nan.wav", "text.mp3"))
    assert not [p for p in out.iterdir() if p.name.startswith(".tagstack-tmp-")]
    # every tagged file has its taggram files, the single-machine path's windows and values
    assert sorted(p.name for p in grams.iterdir()) == sorted(f"{Path(p).stem}.taggram.{x}" for p in paths for x in ("csv", "npy", "png"))
    expected = Tagger(model_file, device="cpu").predict(paths[0], taggram=True, hop=2)
    np.testing.assert_allclose(np.load(grams / f"{Path(paths[0]).stem}.taggram.npy"), expected.taggram, atol=1e-5)
    row = tags.slice(0, 1).to_pylist()[0]
    np.testing.assert_allclose(np.reshape(row["taggram"], (row["taggram_windows"], -1)), expected.taggram, atol=1e-5)
    np.testing.assert_allclose(row["window_starts"], expected.window_starts, atol=1e-4)


def test_a_killed_worker_is_replaced_and_its_batch_retried(catalogue, model_file, tmp_path):
    """With the decode stage of GPU clusters (--decode-in tasks): its processes or a worker killed, nothing lost or twice."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "tagstack",
        "embed",
        str(catalogue),
        "--engine",
        "ray",
        "-o",
        str(out),
        "--model",
        str(model_file),
        "--device",
        "cpu",
        "--workers",
        "2",
        "--decode-in",
        "tasks",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and not shards(out) and proc.poll() is None:
        time.sleep(0.05)
    victims = ray_workers(under=proc.pid)  # this job's workers only, not another cluster's
    assert victims and proc.poll() is None, "no worker of this job to kill before it ended"
    os.kill(victims[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-2000:]
    tags, _ = read_results(out)
    paths = tags.column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 40


def ray_workers(under: int) -> list[int]:
    """Ray Data worker processes descending from process ``under``."""
    from test_kill import children_of

    descendants, todo = [], [under]
    while todo:
        kids = children_of(todo.pop())
        descendants += kids
        todo += kids
    workers = []
    for pid in descendants:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"MapWorker" in f.read():
                    workers.append(pid)
        except OSError:
            pass
    return workers


def test_a_folder_of_other_settings_is_refused_not_silently_skipped(catalogue, model_file, tmp_path, local_ray):
    from tagstack.errors import ParameterError

    out = tmp_path / "out"
    files = audio_files([catalogue])[:3]
    run_on_ray(files, out, model=model_file, device="cpu", workers=1)
    with pytest.raises(ParameterError, match="other settings.*embed False -> True"):
        run_on_ray(files, out, model=model_file, device="cpu", workers=1, embed=True)  # would skip all three
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ParameterError, match="not a folder"):
        run_on_ray(files, tmp_path / "new", model=model_file, device="cpu", taggram_dir=tmp_path / "taken")
    with pytest.raises(ParameterError, match="hop"):
        run_on_ray(files, tmp_path / "new", model=model_file, device="cpu", taggram=True, hop=0)
    with pytest.raises(ParameterError, match="device cuda: the Ray cluster has no GPU"):  # not CPU numbers labelled GPU
        run_on_ray(files, tmp_path / "gpu", model=model_file, device="cuda", workers=1)


def test_a_rerun_redoes_the_files_of_a_damaged_shard_and_names_it(catalogue, model_file, tmp_path, local_ray, caplog):
    """Cut one shard of a finished job in half: the rerun names it, moves it aside and tags its files again."""
    import pyarrow.parquet as pq

    files = audio_files([catalogue])[:12]
    out = tmp_path / "out"
    run_on_ray(files, out, model=model_file, device="cpu", workers=2, batch_files=4)
    shard = sorted(out.glob("tags-*.parquet"))[0]
    lost = pq.read_table(shard).num_rows
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    again = run_on_ray(files, out, model=model_file, device="cpu", workers=2, batch_files=4)
    assert f"{shard}: damaged shard" in caplog.text and (out / (shard.name + ".damaged")).exists()
    assert again.done == lost and again.reused == len(files) - lost
    tags, _ = read_results(out)
    assert Counter(tags.column("path").to_pylist()) == Counter(str(f) for f in files)


def test_a_worker_that_cannot_write_its_shard_is_one_error_naming_it(catalogue, model_file, full_disk, local_ray):
    """The disk fills under the workers: one OutputError naming the shard and the reason, not Ray's traceback."""
    mount, fill = full_disk
    out = mount / "out"
    out.mkdir()
    fill()
    os.truncate(mount / "filler", (mount / "filler").stat().st_size - 4096)  # one page: job.json fits, no shard
    with pytest.raises(OutputError) as caught:
        run_on_ray(audio_files([catalogue])[:4], out, model=model_file, device="cpu", workers=1, batch_files=4)
    message = str(caught.value)
    assert message.startswith(str(out / "tags-")) and ".parquet: cannot write this file (" in message, message
    assert "\n" not in message and "Traceback" not in message
    assert sorted(p.name for p in out.iterdir()) == ["job.json"]  # no shard, whole or partial, no temporary file
    assert not any(p.name.startswith(TEMP_PREFIX) for p in out.iterdir())


def test_a_name_that_is_not_utf8_goes_through_ray(catalogue, model_file, tmp_path, local_ray):
    music = tmp_path / "music"
    music.mkdir()
    with open(os.fsencode(music) + b"/Beyonc\xe9.wav", "wb") as f:
        f.write((catalogue / "c00.wav").read_bytes())
    report = run_on_ray(audio_files([music]), tmp_path / "out", model=model_file, device="cpu", workers=1, taggram_dir=tmp_path / "grams")
    assert report.done == 1 and not report.failed
    assert read_results(tmp_path / "out")[0].column("path").to_pylist() == [f"{music}/Beyonc\\xe9.wav"]
    assert b"Beyonc\xe9.taggram.npy" in os.listdir(os.fsencode(tmp_path / "grams"))
