"""scripts/train_default_model.py --distill: CNNs trained on tags plus a teacher's features, the global model on the tags alone."""

import csv
import importlib.util
import shutil
from pathlib import Path

import pytest

from synth import TEST_FRONTEND
from tagstack.config import TrainConfig
from tagstack.experiments.experiment_config import ExperimentConfig
from tagstack.experiments.run import Experiment
from tagstack.models.file import load_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_default_model.py"
spec = importlib.util.spec_from_file_location("train_default_model", SCRIPT)
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)


@pytest.mark.slow
def test_distilled_cnns_then_a_global_model_on_the_tags_alone(tmp_path, synth_dir):
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    with open(data / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, r in enumerate(rows):  # two feature labels, as build_teacher_data.py --penultimate MSD_musicnn writes them
        r["tags"] += f";msd penultimate 000={(i % 7) / 7:.3f};msd penultimate 001={(i % 3) / 3:.3f}"
    with open(data / "manifest-distill.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = ExperimentConfig(
        dataset="manifest",
        root=str(data / "manifest.csv"),
        scales=(18, 27),
        frontend=TEST_FRONTEND,
        local=TrainConfig(max_epochs=1, batch_size=32, lr_stages=1),
        global_=TrainConfig(max_epochs=2, batch_size=8, lr_stages=1, monitor="roc_auc"),
        cache_dir=str(tmp_path / "cache"),
        workers=1,
        n_boot=10,
    )
    out = tmp_path / "run"
    second, sentence = train.distilled_cnns(cfg, data / "manifest-distill.csv", out)
    assert "musicnn's MSD model" in sentence and second.local_from == (str(out / "distilled-cnns.safetensors"),)
    cnns = load_model(second.local_from[0])
    assert cnns.head is None and {"msd penultimate 000", "msd penultimate 001"} < set(cnns.tags) and len(cnns.tags) == 6
    stamp = Path(second.local_from[0]).stat().st_mtime_ns
    assert train.distilled_cnns(cfg, data / "manifest-distill.csv", out)[0] == second  # resumed, not retrained
    assert Path(second.local_from[0]).stat().st_mtime_ns == stamp

    rows[0]["split"] = "test" if rows[0]["split"] != "test" else "train"  # a distillation manifest of other splits
    with open(data / "manifest-distill.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(SystemExit, match="different clips or splits"):
        train.distilled_cnns(cfg, data / "manifest-distill.csv", tmp_path / "other")

    exp = Experiment(second, out)
    exp.run()
    model = load_model(out / "model.safetensors")
    assert model.tags == exp.data.clips.tags and not [t for t in model.tags if "penultimate" in t]
    assert model.local_models["27"].arch.n_tags == len(model.tags) + 2  # the CNNs learned the features too
    assert not exp.local_scored  # their outputs are not these tags, so they are not scored on them
    for s in ("18", "27"):
        mine, theirs = model.local_models[s].state_dict(), cnns.local_models[s].state_dict()
        assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)
