"""The paper's experiments with one command (``tagstack reproduce``).

Stage-1 CNNs are trained once (or taken from another run with
``local_from``, for transfer learning) and stage-2 features are extracted
once with every layer and scale; each ablation then trains only a global
classifier on a slice of the stored features:

- Fig. 2: local vs global model for each input size;
- Fig. 3: every combination of the levels L1, L2, L3 of the 27-frame model;
- Fig. 4: combinations of scales (each alone, 18+27+54, all five ...);
- Fig. 5: per-tag ROC-AUC of single levels / scales against their concatenation;
- Table I: transfer learning (CNNs from ``local_from``, global model here);
- Table II: local, multi-level, multi-level + multi-scale (and jointly
  fine-tuned) next to the paper's published numbers, marked as published;
- joint fine-tuning of the local CNNs and the global network end to end.

Global models are trained with every seed asked for (mean ± standard
deviation) and test ROC-AUC gets a 95% bootstrap interval. Everything lands
in one run directory: tables as Markdown and CSV, figures as PNG, a report,
and the configuration.
"""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_json
from ..train.evaluation import binary_targets, bootstrap_ci, evaluate
from .config import ExperimentConfig
from ..report import bar_figure, best_local_scale, per_tag_gain_figure, write_reproduction_report, write_table
from .run import Experiment

#: Published results (Lee & Nam 2017, Tables I and II): ROC-AUC for MTAT/MSD, accuracy for GTZAN/Tagtraum.
PUBLISHED: list[tuple[str, dict[str, float]]] = [
    ("Bag of multi-scaled features (Dieleman & Schrauwen)", {"MTAT": 0.898}),
    ("1-D CNN (Dieleman & Schrauwen)", {"MTAT": 0.8815}),
    ("Transfer learning (van den Oord et al.)", {"MTAT": 0.88}),
    ("Persistent CNN", {"MTAT": 0.9013}),
    ("Time-frequency CNN", {"MTAT": 0.9007}),
    ("2-D CNN (Choi et al.)", {"MTAT": 0.894, "MSD": 0.851}),
    ("CRNN (Choi et al.)", {"MSD": 0.862}),
    ("2-D CNN (Kereliuk et al.)", {"GTZAN": 0.632}),
    ("Temporal features", {"GTZAN": 0.659}),
    ("Lee & Nam: local model", {"MTAT": 0.8981, "MSD": 0.8783}),
    ("Lee & Nam: global, multi-level", {"MTAT": 0.9002, "MSD": 0.8853}),
    ("Lee & Nam: global, multi-level + multi-scale", {"MTAT": 0.9017, "MSD": 0.8878}),
    ("Lee & Nam: global, both, CNNs pretrained on MSD", {"MTAT": 0.9021, "Tagtraum": 0.766, "GTZAN": 0.720}),
]


@dataclasses.dataclass(frozen=True)
class Ablation:
    """One global model: which scales and layers of the stored features it reads."""

    scales: tuple[int, ...]
    layers: tuple[int, ...] | None = None

    @property
    def key(self) -> str:
        s = "+".join(map(str, self.scales))
        return s if self.layers is None else f"{s}:L{''.join(map(str, self.layers))}"

    @property
    def label(self) -> str:
        if self.layers is None:
            return f"{'+'.join(map(str, self.scales))} frames"
        return "+".join(f"L{l}" for l in self.layers) + f" ({'+'.join(map(str, self.scales))})"


def ablations(scales: tuple[int, ...]) -> dict[str, list[Ablation]]:
    """The global models each figure needs, for the scales at hand."""
    s = tuple(sorted(scales))
    fig2 = [Ablation((x,)) for x in s]
    fig3 = []
    if 27 in s:
        for r in (1, 2, 3):
            fig3 += [Ablation((27,), c) for c in itertools.combinations((1, 2, 3), r)]
    combos = [c for c in ((18, 27), (18, 27, 54), (27, 54, 108), (54, 108, 216)) if set(c) <= set(s) and c != s]
    fig4 = fig2 + [Ablation(c) for c in combos] + ([Ablation(s)] if len(s) > 1 else [])
    return {"fig2": fig2, "fig3": fig3, "fig4": fig4}


def _pm(r: dict, key: str = "roc_auc") -> str:
    vals = [v[key] for v in r["seeds"].values()]
    return f"{np.mean(vals):.4f}" + (f" ± {np.std(vals):.4f}" if len(vals) > 1 else "")


def reproduce(config: ExperimentConfig, out: str | Path) -> dict:
    """Run every comparison of the paper on ``config``'s dataset into ``out``; returns the results.

    The configuration carries everything (seeds, ``local_from``, the joint
    schedule, bootstrap draws) and is saved in ``out`` as it ran.
    """
    config = config.replace(layers=None)  # every ablation chooses its own layers
    exp = Experiment(config, out)
    out = exp.dir
    seeds, local_from, n_boot = config.seeds, config.local_from, config.n_boot
    agg = exp.features()
    clips = exp.data.clips
    test = clips.indices("test")
    y = binary_targets(clips.labels[test])
    task = clips.task
    multiclass = task == "multiclass"

    plan = ablations(tuple(config.scales))
    results: dict[str, dict] = {}
    staged = None
    all_key = "+".join(map(str, sorted(config.scales)))
    for ab in {a.key: a for fig in plan.values() for a in fig}.values():
        r = {"label": ab.label, "scales": list(ab.scales), "layers": ab.layers, "seeds": {}}
        for seed in seeds:
            model = exp.train_head(scales=ab.scales, layers=ab.layers or None, seed=seed,
                                   name=f"3-global/{ab.key.replace(':', '_')}/seed{seed}")
            probs = exp.test_probs(model)
            m = evaluate(y, probs, task=task)
            r["seeds"][seed] = {"roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"], "per_tag_roc_auc": m["per_tag"]["roc_auc"],
                                **({"accuracy": m["accuracy"]} if multiclass else {})}
            if seed == seeds[0]:
                r["roc_auc_ci95"] = bootstrap_ci(y, probs, n_boot=n_boot)
                if ab.key == all_key:
                    staged = model
        results[ab.key] = r

    # CNNs taken from a model of another vocabulary (the paper's transfer learning) cannot be scored on these tags
    local = {str(s): evaluate(y, p[test], task="multilabel") for s, p in agg["local_probs"].items()} if exp.local_scored else {}
    md: dict[str, str] = {}
    seed_note = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"

    # Fig. 2
    scales = sorted(config.scales)
    rows = [[s, *((local[str(s)]["roc_auc"], local[str(s)]["pr_auc"]) if local else ("–", "–")),
             _pm(results[str(s)]), _pm(results[str(s)], "pr_auc")] for s in scales]
    md["fig2"] = write_table(out, "fig2_local_vs_global", ["input frames", "local ROC-AUC", "local PR-AUC", "global ROC-AUC", "global PR-AUC"], rows)
    bar_figure(out, "fig2_local_vs_global", [f"{s} frames" for s in scales],
          {**({"local": ([local[str(s)]["roc_auc"] for s in scales], [0] * len(scales))} if local else {}),
           "global": ([np.mean([v["roc_auc"] for v in results[str(s)]["seeds"].values()]) for s in scales],
                      [np.std([v["roc_auc"] for v in results[str(s)]["seeds"].values()]) for s in scales])},
          "Fig. 2: local vs global models" if local else "Fig. 2: global models per scale (local CNNs from another vocabulary)")

    def fig_rows(abl: list[Ablation]) -> list[list]:
        return [[a.label, _pm(results[a.key]), _pm(results[a.key], "pr_auc"),
                 "{:.4f}-{:.4f}".format(*results[a.key]["roc_auc_ci95"])] for a in abl]

    header = ["features", "ROC-AUC", "PR-AUC", "ROC-AUC 95% CI (seed 0)"]
    for fig, title in (("fig3", "Fig. 3: levels of the 27-frame model"), ("fig4", "Fig. 4: combinations of scales")):
        if not plan[fig]:
            continue
        name = {"fig3": "fig3_levels", "fig4": "fig4_scales"}[fig]
        md[fig] = write_table(out, name, header, fig_rows(plan[fig]))
        bar_figure(out, name, [a.label for a in plan[fig]],
              {"global": ([np.mean([v["roc_auc"] for v in results[a.key]["seeds"].values()]) for a in plan[fig]],
                          [np.std([v["roc_auc"] for v in results[a.key]["seeds"].values()]) for a in plan[fig]])}, title)

    # Fig. 5
    s0 = seeds[0]
    pt = {k: np.array(r["seeds"][s0]["per_tag_roc_auc"], dtype=float) for k, r in results.items()}
    if plan["fig3"]:
        singles = {f"L{l}": pt[f"27:L{l}"] for l in (1, 2, 3)}
        rows = per_tag_gain_figure(out, "fig5_levels", clips.tags, singles, pt["27:L123"], "Fig. 5 (top): levels of the 27-frame model, per tag")
        md["fig5_levels"] = write_table(out, "fig5_levels", ["tag", "L1", "L2", "L3", "L1+L2+L3", "gain over L1"], rows)
    small = [s for s in (18, 27, 54) if s in config.scales]
    if len(small) > 1:
        concat_key = "+".join(map(str, small))
        if concat_key not in pt:
            concat_key = "+".join(map(str, sorted(config.scales)))
        singles = {f"{s} frames": pt[str(s)] for s in small}
        rows = per_tag_gain_figure(out, "fig5_scales", clips.tags, singles, pt[concat_key], f"Fig. 5 (bottom): scales, per tag ({concat_key} concatenated)")
        md["fig5_scales"] = write_table(out, "fig5_scales", ["tag", *singles, concat_key.replace("+", " + "), f"gain over {small[0]} frames"], rows)

    # Joint fine-tuning of the multi-level, multi-scale model (the same TaggingModel, trained end to end)
    joint_result = None
    if config.joint is not None and staged is not None:
        _, probs = exp.finetune(staged)
        m = evaluate(y, probs, task=task)
        joint_result = {"roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"], "roc_auc_ci95": bootstrap_ci(y, probs, n_boot=n_boot),
                        **({"accuracy": m["accuracy"]} if multiclass else {})}

    # Table II (and I)
    best_local = best_local_scale(local)
    ml_key = "27:L123" if "27:L123" in results else str(sorted(config.scales)[0])
    # single-label sets (GTZAN, Tagtraum) are compared by accuracy in the paper: measured here too (the local CNNs' outputs
    # are independent sigmoids, so they have none)
    acc = (lambda r: [_pm(r, "accuracy")]) if multiclass else (lambda r: [])
    rows = [*([[f"local model ({best_local} frames)", "measured", f"{local[best_local]['roc_auc']:.4f}", f"{local[best_local]['pr_auc']:.4f}",
                *(["–"] if multiclass else [])]] if best_local else []),
            [f"global, multi-level ({results[ml_key]['label']})", "measured", _pm(results[ml_key]), _pm(results[ml_key], "pr_auc"),
             *acc(results[ml_key])],
            [f"global, multi-level + multi-scale ({all_key})", "measured", _pm(results[all_key]), _pm(results[all_key], "pr_auc"),
             *acc(results[all_key])]]
    if joint_result:
        rows.append(["global, jointly fine-tuned end to end", "measured", f"{joint_result['roc_auc']:.4f}", f"{joint_result['pr_auc']:.4f}",
                     *([f"{joint_result['accuracy']:.4f}"] if multiclass else [])])
    md["table2"] = write_table(out, "table2_measured", [f"model ({clips.name}, test)", "source", "ROC-AUC", "PR-AUC",
                                                        *(["accuracy"] if multiclass else [])], rows)
    pub_cols = ["MTAT", "MSD", "GTZAN", "Tagtraum"]
    pub_names = ["MTAT (ROC-AUC)", "MSD (ROC-AUC)", "GTZAN (accuracy)", "Tagtraum (accuracy)"]
    md["table2_published"] = write_table(out, "table2_published", ["model", "source", *pub_names],
                                    [[name, "published", *(f"{v[c]:.4f}" if c in v else "–" for c in pub_cols)] for name, v in PUBLISHED])
    if local_from:
        measure = "accuracy" if multiclass else "ROC-AUC"
        value = np.mean([v["accuracy" if multiclass else "roc_auc"] for v in results[all_key]["seeds"].values()])
        md["table1"] = write_table(out, "table1_transfer", ["dataset", "task", "CNNs from", "measurement", "value"],
                              [[clips.name, "genre classification" if multiclass else "auto-tagging", str(local_from), measure, f"{value:.4f}"]])

    summary = {"dataset": clips.name, "seeds": list(seeds), "local": {s: {"roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"]} for s, m in local.items()},
               "global": results, "joint": joint_result, "local_from": str(local_from) if local_from else None}
    atomic_write_json(out / "results.json", summary)
    exp.save_config()
    write_reproduction_report(out, clips.name, md, seed_note, joint_result, results[all_key], local_from, local_scored=bool(local))
    return summary


