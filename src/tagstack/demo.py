"""The README's main job: default corpus -> three stages -> metrics, report, plots -> tags of a few test clips.

The demo uses the paper's architecture and schedule with a shortened budget
(at most :data:`DEMO_LOCAL_EPOCHS` epochs per local CNN and two learning
rates) so that it finishes in minutes on two CPU cores; `tagstack run`
trains with the authors' full schedule.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .config import ExperimentConfig, TrainConfig
from .corpus import build_corpus, corpus_clips
from .pipeline import run_all, tagstack_home

DEMO_LOCAL_EPOCHS = 5
DEMO_GLOBAL_EPOCHS = 60


def demo_config(corpus_dir: Path, *, device: str = "auto", workers: int = 0) -> ExperimentConfig:
    """The demo's experiment: all five scales, all layers, short schedule."""
    return ExperimentConfig(
        dataset="corpus", root=str(corpus_dir), device=device, workers=workers,
        local=TrainConfig(batch_size=64, max_epochs=DEMO_LOCAL_EPOCHS, lr_stages=2, patience=2),
        global_=TrainConfig(batch_size=16, max_epochs=DEMO_GLOBAL_EPOCHS, lr_stages=3, patience=6, monitor="roc_auc"),
    )


def run_demo(*, out: str | Path = "runs/demo", device: str = "auto", workers: int = 0, corpus_dir: Path | None = None) -> dict:
    """Build the default corpus if needed, run the three stages, print scores, tag three test clips."""
    from .cli import _print_metrics
    from .inference import Tagger

    started = time.time()
    corpus_dir = corpus_dir or tagstack_home() / "corpus" / "default"
    if not (corpus_dir / "manifest.csv").exists():
        print(f"building the default corpus in {corpus_dir} (once) ...")
        build_corpus(corpus_dir, size="default", workers=workers)
    metrics = run_all(demo_config(corpus_dir, device=device, workers=workers), out)
    _print_metrics(metrics)
    clips = corpus_clips(corpus_dir)
    tagger = Tagger(Path(out) / "model.safetensors", device=device)
    print("\ntags of three test clips (predicted top 5 | true tags):")
    for i in clips.indices("test")[:: max(1, len(clips.indices("test")) // 3)][:3]:
        top = tagger.tag(clips.audio_path(i), top_k=5)
        true = [clips.tags[j] for j in np.flatnonzero(clips.labels[i])]
        print(f"  {clips.paths[i]}\n    predicted: {', '.join(f'{t} {p:.2f}' for t, p in top)}\n    true:      {', '.join(true)}")
    print(f"\nrun directory: {out} (report.md, metrics.json, model.safetensors, plots/); {time.time() - started:.0f} s in all")
    return metrics
