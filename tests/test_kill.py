"""kill -9 at work: nothing half-written is left, no child outlives its parent, and the rerun finishes the job."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from synth import SR, TEST_FRONTEND, render

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and SIGKILL"), pytest.mark.slow]


def children_of(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_and_survivors(proc, workers: list[int], seconds: float = 5.0) -> list[int]:
    """kill -9 ``proc`` alone, then give its ``workers`` up to ``seconds`` to follow it; the ones still alive."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + seconds
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.05)
    return [w for w in workers if alive(w)]


@pytest.fixture(scope="module")
def many_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(40):
        sf.write(d / f"c{i:02d}.wav", render({"low", "pulse"} if i % 2 else {"high"}, TEST_FRONTEND.clip_seconds, rng), SR)
    return d


def test_killed_mel_cache_leaves_no_worker_and_resumes(many_files, tmp_path):
    script = f"""
import sys
sys.path.insert(0, {str(os.path.dirname(__file__))!r})
from synth import TEST_FRONTEND
from tagstack.datasets import read_folders
from tagstack.datasets.manifest import read_manifest
from tagstack.datasets.base import ClipSet
from tagstack.datasets.melcache import MelCache
import numpy as np, pathlib
root = pathlib.Path({str(many_files)!r})
paths = sorted(p.name for p in root.glob("*.wav"))
clips = ClipSet(name="k", root=root, paths=paths, labels=np.ones((len(paths), 1)), tags=["x"], splits=np.array(["train"] * len(paths), dtype=object))
print(MelCache(clips, cache_dir={str(tmp_path / "cache")!r}, frontend=TEST_FRONTEND).build(workers=2, batch_size=2)["cached"], flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 60
    workers = []
    while time.time() < deadline and len(workers) < 2:
        workers = children_of(proc.pid)
        time.sleep(0.05)
    assert workers, "the cache never started its decoding workers"
    time.sleep(0.5)
    assert not kill_and_survivors(proc, workers), "decoding workers outlived their parent"
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip().splitlines()[-1] == "40"
    assert not list((tmp_path / "cache").rglob(".tagstack-tmp-*"))


def test_killed_tag_run_leaves_the_previous_output_whole(many_files, model_file, tmp_path):
    model = model_file
    out = tmp_path / "tags.csv"
    cmd = [
        sys.executable,
        "-m",
        "tagstack",
        "tag",
        str(many_files),
        "--model",
        str(model),
        "--format",
        "csv",
        "-o",
        str(out),
        "--device",
        "cpu",
    ]
    started = time.time()
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    took = time.time() - started
    assert first.returncode == 0, first.stderr[-2000:]
    whole = out.read_text()
    assert len(whole.splitlines()) == 1 + 40 * 4  # a header, then 4 tags per file
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(took * 0.7)  # well into tagging (model loaded, files being written out), before the end
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert out.read_text() == whole  # the earlier complete result, not a truncated one
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tagstack-tmp-")]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # resumes from what the killed run recorded
    assert again.returncode == 0 and out.read_text() == whole, again.stderr[-2000:]
    assert not (tmp_path / "tags.csv.partial").exists()


def test_killed_embed_leaves_no_partial_file(many_files, model_file, tmp_path):
    model = model_file
    out = tmp_path / "e.npz"
    cmd = [sys.executable, "-m", "tagstack", "embed", str(many_files), "--model", str(model), "--out", str(out), "--device", "cpu"]
    started = time.time()
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    took = time.time() - started
    out.unlink()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(took * 0.7)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tagstack-tmp-")]
    if out.exists():  # the rerun was quick enough to finish writing before the kill: then the file is whole
        with np.load(out, allow_pickle=False) as z:
            assert len(z["paths"]) == len(z["embeddings"]) == 40
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0  # resumes, or finds nothing left to do
    with np.load(out, allow_pickle=False) as z:
        assert len(z["paths"]) == len(z["embeddings"]) == 40
    assert not (tmp_path / "e.npz.partial").exists()


TRAIN_SCRIPT = """
import sys, json, logging
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, {tests!r})
from synth import TEST_FRONTEND
from tagstack.config import TrainConfig
from tagstack.experiments.experiment_config import ExperimentConfig
from tagstack.experiments.run import run_experiment
cfg = ExperimentConfig(dataset="manifest", root={root!r}, scales=(18, 27), frontend=TEST_FRONTEND,
                       local=TrainConfig(max_epochs=6, batch_size=32, lr_stages=2, patience=2),
                       global_=TrainConfig(max_epochs=8, batch_size=8, monitor="roc_auc", patience=3),
                       cache_dir={cache!r}, workers=2)
print(json.dumps(run_experiment(cfg, {out!r})["global"]["roc_auc"]), flush=True)
"""


def test_killed_training_resumes_to_the_same_model(synth_dir, tmp_path):
    """kill -9 in the middle of stage 1; the rerun resumes from the last epoch and ends with the uninterrupted run's model."""
    from safetensors.numpy import load_file

    def script(name: str) -> list[str]:
        code = TRAIN_SCRIPT.format(
            tests=os.path.dirname(__file__), root=str(synth_dir), cache=str(tmp_path / "cache"), out=str(tmp_path / name)
        )
        return [sys.executable, "-c", code]

    whole = subprocess.run(script("whole"), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]

    proc = subprocess.Popen(script("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second_net = tmp_path / "killed" / "1-local" / "27" / "last.pt"  # the first CNN is done, the second has an epoch
    deadline = time.time() + 300
    while time.time() < deadline and not second_net.exists() and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be killed"
    children = children_of(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    assert not any(alive(c) for c in children), "a child process outlived the killed training"
    assert not (tmp_path / "killed" / "model.safetensors").exists()

    again = subprocess.run(script("killed"), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[local 27] resuming after epoch" in again.stderr
    assert "[local 18] already trained, reused" in again.stderr
    assert again.stdout.strip().splitlines()[-1] == whole.stdout.strip().splitlines()[-1]
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "killed").rglob(".tagstack-tmp-*"))
