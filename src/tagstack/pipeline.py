"""The three stages run into one run directory that mirrors them.

::

    RUN/
      config.toml            the resolved ExperimentConfig
      dataset.txt            clips and positives per tag per split
      1-local/<frames>/      stage 1: last.pt (resume point), best.pt, history.json
      2-aggregate/           stage 2: features.npy (all layers, all scales), clips.npy,
                             local_probs_<frames>.npy, layout.json
      3-global/              stage 3: last.pt, best.pt, history.json
      model.safetensors      the whole tagger as one self-describing file
      metrics.json           local and global test metrics (macro, per tag, per group)
      report.md, plots/      the report and its figures

Each stage skips the work already on disk, so an interrupted run started
again with the same command continues where it stopped.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .aggregation import extract_features, feature_layout, select_columns
from .artifact import TaggingModel, load_model
from .config import ExperimentConfig, save_config, to_dict
from .datasets import ClipSet, load_dataset
from .errors import DatasetError
from .evaluation import bootstrap_ci, evaluate
from .fileio import atomic_save_npy, atomic_write_json, atomic_write_text
from .global_classifier import GlobalArch, GlobalMLP
from .local_models import build_local_cnn
from .melcache import MelCache
from .training import choose_device, train_global, train_local


def tagstack_home() -> Path:
    """Where corpora and mel caches live: ``$TAGSTACK_HOME`` or ``~/.cache/tagstack``."""
    return Path(os.environ.get("TAGSTACK_HOME", Path.home() / ".cache" / "tagstack"))


@dataclass
class Prepared:
    """A dataset with its mel cache, restricted to the clips whose frames are cached."""

    clips: ClipSet
    mels: np.ndarray
    rows: np.ndarray  # row of each clip in ``mels``
    report: dict

    def split(self, name: str) -> np.ndarray:
        """Rows in ``mels`` of one split's clips."""
        return self.rows[self.clips.indices(name)]

    def labels_full(self) -> np.ndarray:
        """Labels indexed by mel-cache row (rows of skipped clips are zero)."""
        y = np.zeros((self.mels.shape[0], len(self.clips.tags)), np.float32)
        y[self.rows] = self.clips.labels
        return y


def prepare(config: ExperimentConfig, clips: ClipSet | None = None) -> Prepared:
    """Load the dataset and build (or resume) its mel cache; skipped files are reported, not fatal."""
    if clips is None:
        clips = load_dataset(config.dataset, config.root, split=config.split, split_dir=config.split_dir, merge=config.merge_synonyms)
    cache = MelCache(clips, cache_dir=config.cache_dir or tagstack_home() / "mels", frontend=config.frontend)
    report = cache.build(workers=config.workers, device=choose_device(config.device))
    valid = cache.valid
    kept = clips.subset(valid)
    for split in ("train", "valid", "test"):
        if len(kept.indices(split)) < 2:
            raise DatasetError(f"{clips.name}: only {len(kept.indices(split))} usable clips in split '{split}'")
    return Prepared(clips=kept, mels=cache.mels, rows=np.flatnonzero(valid), report=report)


def run_local(config: ExperimentConfig, run_dir: Path, data: Prepared) -> dict[int, torch.nn.Module]:
    """Stage 1: train (or resume, or reuse) one local CNN per scale."""
    device = choose_device(config.device)
    labels = data.labels_full()
    models = {}
    for scale in config.scales:
        torch.manual_seed(config.local.seed)
        model = build_local_cnn(scale, n_tags=len(data.clips.tags), n_mels=config.frontend.n_mels)
        train_local(model, data.mels, labels, train_idx=data.split("train"), valid_idx=data.split("valid"),
                    config=config.local, workdir=run_dir / "1-local" / str(scale), device=device)
        models[scale] = model.cpu()
    return models


def run_aggregate(config: ExperimentConfig, run_dir: Path, data: Prepared, models: dict) -> dict:
    """Stage 2: features of every layer and scale for every clip, extracted once and stored."""
    out = run_dir / "2-aggregate"
    f_path = out / "features.npy"
    if not f_path.exists():
        feats, probs = extract_features(models, data.mels, data.rows, device=choose_device(config.device))
        for s, p in probs.items():
            atomic_save_npy(out / f"local_probs_{s}.npy", p.astype(np.float32))
        atomic_save_npy(out / "clips.npy", data.rows)
        atomic_write_json(out / "layout.json", [b.__dict__ for b in feature_layout(models)])
        atomic_save_npy(f_path, feats.astype(np.float32))
    return {
        "features": np.load(f_path),
        "local_probs": {s: np.load(out / f"local_probs_{s}.npy") for s in sorted(models)},
    }


def run_global(config: ExperimentConfig, run_dir: Path, data: Prepared, features: np.ndarray, models: dict,
               *, workdir: Path | None = None, scales=None, layers=None) -> tuple[GlobalMLP, np.ndarray]:
    """Stage 3: train the global classifier on the chosen slice of the stored features.

    Returns the model and its test-set predictions.
    """
    cols = select_columns(feature_layout(models), scales=scales if scales is not None else config.scales,
                          layers=layers if layers is not None else config.layers)
    x = features[:, cols]
    task = data.clips.task
    torch.manual_seed(config.global_.seed)
    model = GlobalMLP(GlobalArch(n_features=len(cols), n_outputs=len(data.clips.tags), hidden=config.global_hidden, task=task))
    device = choose_device(config.device)
    tr, va, te = (data.clips.indices(s) for s in ("train", "valid", "test"))
    train_global(model, x, data.clips.labels, train_idx=tr, valid_idx=va, config=config.global_,
                 workdir=workdir or run_dir / "3-global", device=device)
    with torch.inference_mode():
        probs = model.predict_proba(torch.from_numpy(x[te]).to(device)).cpu().numpy()
    return model.cpu(), probs


def group_metrics(clips: ClipSet, per_tag: list[float]) -> dict[str, float]:
    """Mean per-tag ROC-AUC of each tag group (instrument, style ...)."""
    by: dict[str, list[float]] = {}
    for t, v in zip(clips.tags, per_tag):
        if t in clips.groups and v == v:
            by.setdefault(clips.groups[t], []).append(v)
    return {g: float(np.mean(v)) for g, v in sorted(by.items())}


def run_all(config: ExperimentConfig, run_dir: str | Path, *, clips: ClipSet | None = None) -> dict:
    """All three stages into ``run_dir``; returns the metrics also written to ``metrics.json``."""
    from .report import write_report

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.toml")
    data = prepare(config, clips)
    atomic_write_text(run_dir / "dataset.txt", data.clips.summary() + "\n")
    models = run_local(config, run_dir, data)
    agg = run_aggregate(config, run_dir, data, models)
    g, global_probs = run_global(config, run_dir, data, agg["features"], models)
    test = data.clips.indices("test")
    y = data.clips.labels[test]
    task = data.clips.task
    metrics = {"dataset": data.clips.name, "n_clips": {s: int(len(data.clips.indices(s))) for s in ("train", "valid", "test")},
               "tags": data.clips.tags, "skipped_files": data.report["skipped"], "local": {}, "global": {}}
    for s, p in agg["local_probs"].items():
        m = evaluate(y, p[test], task="multilabel")
        m["groups"] = group_metrics(data.clips, m["per_tag"]["roc_auc"])
        metrics["local"][str(s)] = m
    gm = evaluate(y, global_probs, task=task)
    gm["groups"] = group_metrics(data.clips, gm["per_tag"]["roc_auc"])
    gm["roc_auc_ci95"] = bootstrap_ci(y, global_probs)
    metrics["global"] = gm
    model = TaggingModel(local=models, global_model=g, tags=data.clips.tags, frontend=config.frontend,
                         scales=tuple(config.scales), layers=config.layers,
                         info={"dataset": data.clips.name, "config": to_dict(config),
                               "test": {"roc_auc": gm["roc_auc"], "pr_auc": gm["pr_auc"],
                                        "per_tag_roc_auc": dict(zip(data.clips.tags, gm["per_tag"]["roc_auc"])),
                                        "per_tag_pr_auc": dict(zip(data.clips.tags, gm["per_tag"]["pr_auc"]))}})
    model.save(run_dir / "model.safetensors")
    atomic_write_json(run_dir / "metrics.json", metrics)
    write_report(run_dir, metrics, data.clips)
    return metrics


def load_run_model(run_dir: str | Path) -> TaggingModel:
    """The tagger a finished run saved."""
    return load_model(Path(run_dir) / "model.safetensors")
