"""The README's main job: default corpus -> three stages -> metrics, report, plots -> tags of a few test clips.

The demo uses the paper's architecture and schedule with a shortened budget
(:func:`~.config.demo_config`) so that it finishes in minutes on two CPU
cores; ``tagstack run`` trains with the authors' full schedule.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..config import tagstack_home
from ..corpus import build_corpus
from ..datasets.corpus import corpus_clips
from ..inference.tagger import Tagger
from ..report import metrics_table
from .experiment_config import demo_config
from .run import Experiment

log = logging.getLogger(__name__)


def run_demo(*, out: str | Path = "runs/demo", device: str = "auto", workers: int = 0, corpus_dir: Path | None = None) -> dict:
    """Build the default corpus if needed, run the three stages, print scores, tag three test clips."""
    started = time.time()
    corpus_dir = corpus_dir or tagstack_home() / "corpus" / "default"
    if (corpus_dir / "manifest.csv").exists():
        log.info("corpus: reusing %s", corpus_dir)
    else:
        log.info("building the default corpus in %s (once) ...", corpus_dir)
        build_corpus(corpus_dir, size="default", workers=workers)
    metrics = Experiment(demo_config(corpus_dir, device=device, workers=workers), out).run()
    print(metrics_table(metrics))
    clips = corpus_clips(corpus_dir)
    tagger = Tagger(Path(out) / "model.safetensors", device=device)
    print("\ntags of three test clips (predicted top 5 | true tags):")
    for i in clips.indices("test")[:: max(1, len(clips.indices("test")) // 3)][:3]:
        top = tagger.tag(clips.audio_path(i), top_k=5)
        true = [clips.tags[j] for j in np.flatnonzero(clips.labels[i] >= 0.5)]
        print(f"  {clips.paths[i]}\n    predicted: {', '.join(f'{t} {p:.2f}' for t, p in top)}\n    true:      {', '.join(true)}")
    print(f"\nrun directory: {out} (report.md, metrics.json, model.safetensors, plots/); {time.time() - started:.0f} s in all")
    return metrics
