"""How steadily does the global MLP (stage 3) train? The authors' schedule beside warm-up, gradient clipping and a smaller rate.

Takes a finished run (its trained local CNNs and stored features are reused,
through symbolic links, so nothing of stage 1 or 2 is recomputed) and trains the
global classifier under each schedule variant and seed, reporting per variant:
how much validation ROC-AUC moves between consecutive epochs at the first rate
(mean absolute change, and the worst drop), the best validation ROC-AUC, test
ROC-AUC, and epochs run.

    python bench/bench_global_stability.py --run runs/demo --seeds 0,1,2 --out docs/stability/demo
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

import tagstack  # noqa: F401  (sets the OpenMP wait policy before torch starts)
from tagstack.experiments.experiment_config import load_config
from tagstack.experiments.run import Experiment
from tagstack.evaluation.metrics import macro_roc_auc

VARIANTS = {
    "authors (lr 0.01)": {},
    "warm-up 3 epochs": {"warmup_epochs": 3},
    "clip norm 1": {"clip_norm": 1.0},
    "warm-up 3 + clip 1": {"warmup_epochs": 3, "clip_norm": 1.0},
    "lr 0.001": {"lr": 0.001},
}


def swings(history: list[dict]) -> tuple[float, float]:
    """Mean absolute change and worst drop of validation ROC-AUC between consecutive epochs at the first rate."""
    first = [h["val_roc_auc"] for h in history if h["lr"] == history[0]["lr"]]
    d = np.diff(first)
    return (float(np.abs(d).mean()) if len(d) else 0.0), (float(max(0.0, -d.min())) if len(d) else 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a finished run directory (config.toml, 1-local, 2-aggregate)")
    p.add_argument("--out", type=Path, required=True, help="where the variants train and the results go")
    p.add_argument("--seeds", default="0,1,2", help="global-model seeds, comma-separated (default: 0,1,2)")
    p.add_argument("--max-epochs", type=int, default=0, help="cap on epochs (default: the run's own schedule)")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = load_config(a.run / "config.toml")
    seeds = [int(s) for s in a.seeds.split(",")]
    rows, results = [], {}
    for name, change in VARIANTS.items():
        per_seed = []
        for seed in seeds:
            schedule = dataclasses.replace(base.global_, seed=seed, **change, **({"max_epochs": a.max_epochs} if a.max_epochs else {}))
            d = a.out / "runs" / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}-s{seed}"
            d.mkdir(parents=True, exist_ok=True)
            for stage in ("1-local", "2-aggregate"):
                if not (d / stage).exists():
                    os.symlink((a.run / stage).resolve(), d / stage)
            exp = Experiment(dataclasses.replace(base, global_=schedule), d)
            started = time.time()
            model = exp.train_head()
            took = time.time() - started
            history = json.loads((d / "3-global" / "history.json").read_text())
            clips = exp.data.clips
            test = macro_roc_auc(clips.labels[clips.indices("test")], exp.test_probs(model))  # NaN (unknown) labels left out
            mean_swing, worst = swings(history)
            per_seed.append(
                {
                    "seed": seed,
                    "swing": mean_swing,
                    "worst_drop": worst,
                    "best_val": max(h["val_roc_auc"] for h in history),
                    "test_roc_auc": float(test),
                    "epochs": len(history),
                    "seconds": took,
                }
            )
        results[name] = per_seed
        m = {k: np.mean([r[k] for r in per_seed]) for k in ("swing", "worst_drop", "best_val", "test_roc_auc", "epochs")}
        sd = np.std([r["test_roc_auc"] for r in per_seed])
        rows.append(
            f"| {name} | {m['swing']:.4f} | {m['worst_drop']:.4f} | {m['best_val']:.4f} | {m['test_roc_auc']:.4f} ± {sd:.4f} | {m['epochs']:.0f} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            "| global MLP schedule | mean epoch-to-epoch change of val ROC-AUC (first rate) | worst drop | best val ROC-AUC | test ROC-AUC (mean ± sd over seeds) | epochs |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    (a.out / "results.md").write_text(f"Run: {a.run} ({base.dataset}); seeds {seeds}; command: python {' '.join(sys.argv)}\n\n{table}\n")
    (a.out / "results.json").write_text(json.dumps(results, indent=1))
    print(table)


if __name__ == "__main__":
    main()
