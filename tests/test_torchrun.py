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
from tagstack.experiments.config import ExperimentConfig, save_config

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")]


@pytest.fixture(scope="module")
def two_runs(synth_dir, tmp_path_factory):
    """The same experiment on one process and on two (torchrun --nproc-per-node 2)."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfg = ExperimentConfig(dataset="manifest", root=str(synth_dir), scales=(18, 27), frontend=TEST_FRONTEND,
                           local=TrainConfig(max_epochs=4, batch_size=32, lr_stages=2, patience=2),
                           global_=TrainConfig(max_epochs=15, batch_size=8, monitor="roc_auc", patience=4),
                           cache_dir=str(tmp / "cache"), workers=1, device="cpu")
    save_config(cfg, tmp / "cfg.toml")
    one = subprocess.run([sys.executable, "-m", "tagstack", "run", "--config", str(tmp / "cfg.toml"), "--out", str(tmp / "one")],
                         capture_output=True, text=True, timeout=600)
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
