"""Training on several processes with real ``torchrun`` (DistributedDataParallel, gloo on the CPU)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from synth import TEST_FRONTEND
from tagstack.config import TrainConfig
from tagstack.experiments.experiment_config import ExperimentConfig, save_config

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")]


@pytest.fixture(scope="module")
def two_runs(synth_dir, tmp_path_factory):
    """The same experiment on one process and on two (torchrun --nproc-per-node 2)."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = ExperimentConfig(
        dataset="manifest",
        root=str(synth_dir),
        scales=(18, 27),
        frontend=TEST_FRONTEND,
        local=TrainConfig(max_epochs=4, batch_size=32, lr_stages=2, patience=2),
        global_=TrainConfig(max_epochs=15, batch_size=8, monitor="roc_auc", patience=4),
        cache_dir=str(tmp / "cache"),
        workers=1,
        device="cpu",
    )
    save_config(cfg, tmp / "cfg.toml")
    one = subprocess.run(
        [sys.executable, "-m", "tagstack", "run", "--config", str(tmp / "cfg.toml"), "--out", str(tmp / "one")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    cmd = ["torchrun", "--nproc-per-node", "2", "-m", "tagstack", "run", "--config", str(tmp / "cfg.toml"), "--out", str(tmp / "two")]
    two = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    return tmp, cmd, two


def test_two_processes_reach_the_scores_of_one(two_runs):
    tmp, _, two = two_runs
    a, b = (json.loads((tmp / d / "metrics.json").read_text()) for d in ("one", "two"))
    for key in ("18", "27"):
        assert abs(a["local"][key]["roc_auc"] - b["local"][key]["roc_auc"]) < 0.06
    assert abs(a["global"]["roc_auc"] - b["global"]["roc_auc"]) < 0.06 and b["global"]["roc_auc"] > 0.8
    assert "torchrun: 2 processes" in two.stderr and two.stdout.count("global, multi-level multi-scale") == 1  # rank 0 talks


def test_rank_0_alone_writes_the_run_directory(two_runs):
    tmp, _, _ = two_runs
    one = sorted(str(p.relative_to(tmp / "one")) for p in (tmp / "one").rglob("*"))
    two = sorted(str(p.relative_to(tmp / "two")) for p in (tmp / "two").rglob("*"))
    assert two == one  # the same files as one process writes, no second copy, no temporary leftovers
    model = load_file(tmp / "two" / "model.safetensors")
    assert all(np.isfinite(v.astype(np.float32)).all() for v in model.values())


def test_a_finished_distributed_run_is_resumed_not_retrained(two_runs):
    tmp, cmd, _ = two_runs
    before = (tmp / "two" / "metrics.json").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[local 18] already trained, reused" in again.stderr and "[global] already trained, reused" in again.stderr
    assert json.loads((tmp / "two" / "metrics.json").read_text())["global"] == json.loads(before)["global"]


def test_a_killed_distributed_run_resumes_to_the_uninterrupted_result(two_runs):
    """kill -9 torchrun in the middle of stage 1: its workers die with it, and the same command resumes from rank 0's checkpoints."""
    import time

    from test_kill import children_of, kill_and_survivors

    tmp, cmd, _ = two_runs
    killed = [a if a != str(tmp / "two") else str(tmp / "killed") for a in cmd]
    proc = subprocess.Popen(killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp / "killed" / "1-local" / "27" / "last.pt"  # the second CNN has an epoch behind it
    deadline = time.time() + 300
    while time.time() < deadline and not marker.exists() and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    workers = children_of(proc.pid)
    assert workers, "torchrun started no worker"
    # the agent alone is killed: its workers must follow it
    assert not kill_and_survivors(proc, workers), "training processes outlived the killed torchrun"
    again = subprocess.run(killed, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[local 27] resuming after epoch" in again.stderr
    a = json.loads((tmp / "two" / "metrics.json").read_text())
    b = json.loads((tmp / "killed" / "metrics.json").read_text())
    assert b["global"]["roc_auc"] == pytest.approx(a["global"]["roc_auc"], abs=1e-6)
    assert not list((tmp / "killed").rglob(".tagstack-tmp-*"))


def test_stage_2_split_between_processes_equals_one_process(two_runs):
    """Under torchrun each process extracts half the clips and they are gathered: the same array one process computes."""
    from tagstack.experiments.experiment_config import load_config
    from tagstack.experiments.run import Experiment

    tmp, _, _ = two_runs
    shutil.copytree(tmp / "two" / "1-local", tmp / "redo" / "1-local")
    alone = Experiment(load_config(tmp / "cfg.toml"), tmp / "redo").features()
    shared = tmp / "two" / "2-aggregate"
    np.testing.assert_allclose(np.load(shared / "features.npy"), alone["features"], rtol=1e-5, atol=1e-5)
    for s, probs in alone["local_probs"].items():
        np.testing.assert_allclose(np.load(shared / f"local_probs_{s}.npy"), probs, rtol=1e-5, atol=1e-6)
