"""`tagstack reproduce` on generated clips: every table, figure and the report."""

import json

import pytest

from synth import TEST_FRONTEND
from tagstack.config import TrainConfig
from tagstack.experiments.experiment_config import ExperimentConfig
from tagstack.experiments.reproduce import ablations


def test_ablation_plan_matches_the_paper():
    plan = ablations(("18", "27", "54", "108", "216"), {"18": 3, "27": 3, "54": 4, "108": 5, "216": 6})
    assert [a.key for a in plan["fig2"]] == ["18", "27", "54", "108", "216"]
    assert [a.label for a in plan["fig3"]] == ["L1 (27)", "L2 (27)", "L3 (27)", "L1+L2 (27)", "L1+L3 (27)", "L2+L3 (27)", "L1+L2+L3 (27)"]
    assert {"18+27+54", "18+27+54+108+216"} <= {a.key for a in plan["fig4"]}


@pytest.mark.slow
def test_reproduce_writes_tables_figures_and_report(tmp_path, synth_dir):
    from tagstack.experiments.reproduce import reproduce

    cfg = ExperimentConfig(
        dataset="manifest",
        root=str(synth_dir),
        scales=(18, 27, 54),
        frontend=TEST_FRONTEND,
        local=TrainConfig(max_epochs=2, batch_size=32, lr_stages=1),
        global_=TrainConfig(max_epochs=4, batch_size=8, lr_stages=1, monitor="roc_auc"),
        cache_dir=str(tmp_path / "cache"),
        workers=1,
    )
    joint = TrainConfig(lr=0.001, batch_size=8, max_epochs=1, lr_stages=1, monitor="roc_auc")
    res = reproduce(cfg.replace(seeds=(0, 1), joint=joint, n_boot=20), tmp_path / "rep")
    out = tmp_path / "rep"
    for name in ("fig2_local_vs_global", "fig3_levels", "fig4_scales", "fig5_levels", "fig5_scales", "table2_measured", "table2_published"):
        assert (out / "tables" / f"{name}.csv").exists() and (out / "tables" / f"{name}.md").exists(), name
    for name in ("fig2_local_vs_global", "fig3_levels", "fig4_scales", "fig5_levels", "fig5_scales"):
        assert (out / "figures" / f"{name}.png").exists(), name
    report = (out / "report.md").read_text()
    assert "published" in report and "Joint fine-tuning" in report and "±" in report
    assert set(res["global"]["27:L123"]["seeds"]) == {0, 1}
    assert res["joint"]["roc_auc"] > 0.5
    # stage 1 ran once: one checkpoint per scale, not one per ablation
    assert sorted(p.name for p in (out / "1-local").iterdir()) == ["18", "27", "54"]
    # transfer: reuse those CNNs from a model file on the same data
    from tagstack.models.file import save_model
    from tagstack.models.tagging_model import TaggingModel
    import torch

    models = {}
    from tagstack.models.local import build_local_cnn

    for s in (18, 27, 54):
        m = build_local_cnn(s, n_tags=4)
        m.load_state_dict(torch.load(out / "1-local" / str(s) / "best.pt", weights_only=True))
        models[s] = m
    save_model(TaggingModel(models, None, tags=["a", "b", "c", "d"], frontend=TEST_FRONTEND), tmp_path / "cnns.safetensors")
    reproduce(cfg.replace(seeds=(0,), local_from=str(tmp_path / "cnns.safetensors"), joint=None, n_boot=10), tmp_path / "transfer")
    assert (tmp_path / "transfer" / "tables" / "table1_transfer.md").exists()
    assert not (tmp_path / "transfer" / "1-local").exists()
    assert json.loads((tmp_path / "transfer" / "results.json").read_text())["local_from"]


@pytest.mark.slow
def test_transfer_from_cnns_of_another_vocabulary(tmp_path, synth_dir):
    """Table I's case: CNNs trained on one dataset's tags, the global model on another's (here 7 -> 4 tags).
    The CNNs' own outputs are not scored on the new tags; everything else is."""
    from synth import TEST_FRONTEND
    from tagstack.experiments.reproduce import reproduce
    from tagstack.experiments.run import Experiment
    from tagstack.models.file import load_model, save_model
    from tagstack.models.local import build_local_cnn
    from tagstack.models.tagging_model import TaggingModel

    cnns = tmp_path / "cnns.safetensors"
    save_model(
        TaggingModel({s: build_local_cnn(s, n_tags=7) for s in (18, 27, 54)}, None, tags=list("abcdefg"), frontend=TEST_FRONTEND), cnns
    )
    cfg = ExperimentConfig(
        dataset="manifest",
        root=str(synth_dir),
        scales=(18, 27, 54),
        frontend=TEST_FRONTEND,
        global_=TrainConfig(max_epochs=3, batch_size=8, lr_stages=1, monitor="roc_auc"),
        cache_dir=str(tmp_path / "cache"),
        workers=1,
        local_from=str(cnns),
        n_boot=10,
    )
    exp = Experiment(cfg, tmp_path / "run")
    metrics = exp.run()
    assert not exp.local_scored and metrics["local"] == {}
    assert len(metrics["global"]["per_tag"]["roc_auc"]) == len(exp.data.clips.tags) == 4
    model = load_model(tmp_path / "run" / "model.safetensors")
    assert model.tags == exp.data.clips.tags and model.local_models["27"].arch.n_tags == 7
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| global, multi-level multi-scale |" in report and "local, 27 frames" not in report

    # the same tag names as this dataset on the model file, but CNNs that output more (as --distill's do)
    wider = tmp_path / "wider.safetensors"
    save_model(
        TaggingModel({s: build_local_cnn(s, n_tags=7) for s in (18, 27, 54)}, None, tags=exp.data.clips.tags, frontend=TEST_FRONTEND), wider
    )
    assert not Experiment(cfg.replace(local_from=str(wider)), tmp_path / "wider").local_scored

    res = reproduce(cfg.replace(seeds=(0,), joint=None), tmp_path / "rep")
    assert res["local"] == {} and res["local_from"] == [str(cnns)]
    fig2 = (tmp_path / "rep" / "tables" / "fig2_local_vs_global.md").read_text()
    assert "–" in fig2 and (tmp_path / "rep" / "figures" / "fig2_local_vs_global.png").exists()
    assert (
        "## Fig. 2: global models per input size (the local CNNs output another vocabulary" in (tmp_path / "rep" / "report.md").read_text()
    )
    assert "local model" not in (tmp_path / "rep" / "tables" / "table2_measured.md").read_text()
    assert (tmp_path / "rep" / "tables" / "table1_transfer.md").exists()


@pytest.mark.slow
def test_a_single_label_reproduction_reports_accuracy_beside_the_papers(tmp_path, synth_dir):
    """GTZAN and Tagtraum are compared by accuracy in the paper: a single-label run's Table II has it, and every
    published column says which measure it holds."""
    import shutil

    import numpy as np

    from tagstack.experiments.reproduce import reproduce
    from tagstack.models.file import save_model
    from tagstack.models.local import build_local_cnn
    from tagstack.models.tagging_model import TaggingModel

    root = tmp_path / "folders"
    for i, f in enumerate(sorted(synth_dir.glob("clip*.wav"))):
        (root / ("even" if i % 2 == 0 else "odd")).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / ("even" if i % 2 == 0 else "odd") / f.name)
    cnns = tmp_path / "cnns.safetensors"
    save_model(TaggingModel({s: build_local_cnn(s, n_tags=3) for s in (18, 27)}, None, tags=list("abc"), frontend=TEST_FRONTEND), cnns)
    cfg = ExperimentConfig(
        dataset="folders",
        root=str(root),
        scales=(18, 27),
        frontend=TEST_FRONTEND,
        local_from=str(cnns),
        global_=TrainConfig(max_epochs=2, batch_size=8, lr_stages=1, monitor="roc_auc"),
        cache_dir=str(tmp_path / "cache"),
        workers=1,
        n_boot=10,
    )
    res = reproduce(cfg, tmp_path / "rep")
    table = (tmp_path / "rep" / "tables" / "table2_measured.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert header.rstrip().endswith("| ROC-AUC | PR-AUC | accuracy |")
    accuracy = np.mean([v["accuracy"] for v in res["global"]["18+27"]["seeds"].values()])
    assert f"{accuracy:.4f}" in table
    published = (tmp_path / "rep" / "tables" / "table2_published.md").read_text()
    assert "GTZAN (accuracy)" in published and "MTAT (ROC-AUC)" in published
