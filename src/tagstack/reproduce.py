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

import copy
import dataclasses
import itertools
from pathlib import Path

import numpy as np
import torch

from .artifact import load_model
from .config import ExperimentConfig, TrainConfig, save_config
from .errors import ParameterError
from .evaluation import bootstrap_ci, evaluate
from .fileio import atomic_write_json, atomic_write_text
from .joint import JointTagger, finetune_joint, predict_joint
from .pipeline import prepare, run_aggregate, run_global, run_local
from .report import _plt, save_figure
from .training import choose_device

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


def _table(out: Path, name: str, header: list[str], rows: list[list]) -> str:
    """Write ``name``.csv and .md; returns the Markdown."""
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    csv_text = "\n".join(",".join(f'"{fmt(v)}"' if "," in fmt(v) else fmt(v) for v in r) for r in [header, *rows]) + "\n"
    md = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]) + "\n"
    atomic_write_text(out / "tables" / f"{name}.csv", csv_text)
    atomic_write_text(out / "tables" / f"{name}.md", md)
    return md


def _pm(r: dict, key: str = "roc_auc") -> str:
    vals = [v[key] for v in r["seeds"].values()]
    return f"{np.mean(vals):.4f}" + (f" ± {np.std(vals):.4f}" if len(vals) > 1 else "")


def _bars(out: Path, name: str, labels: list[str], series: dict[str, tuple[list[float], list[float]]], title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4))
    width = 0.8 / len(series)
    lo = min(min(v) for v, _ in series.values())
    for k, (sname, (vals, errs)) in enumerate(series.items()):
        ax.bar(np.arange(len(labels)) + k * width, vals, width=width, yerr=errs, capsize=3, label=sname)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=30, ha="right")
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(max(v) for v, _ in series.values()) + 0.03))
    ax.set(ylabel="test ROC-AUC", title=title)
    ax.legend(fontsize=8)
    save_figure(fig, out / "figures" / f"{name}.png")


def _per_tag_figure(out: Path, name: str, tags: list[str], singles: dict[str, np.ndarray], concat: np.ndarray, title: str) -> list[list]:
    """Fig. 5 style: absolute ROC-AUC of the concatenation (sorted) and each single model's gap to it."""
    plt = _plt()
    order = [i for i in np.argsort(-np.nan_to_num(concat, nan=-1)) if not np.isnan(concat[i])]
    smallest = list(singles.values())[0]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(8, 0.3 * len(order)), 7), sharex=True)
    a1.bar(range(len(order)), concat[order], color="tab:blue")
    a1.set_ylim(max(0, np.nanmin(concat) - 0.05), 1.0)
    a1.set(ylabel="ROC-AUC (concatenation)", title=title)
    others = list(singles.items())[1:]  # the gain of the smallest over itself is zero
    width = 0.8 / (len(others) + 1)
    for k, (label, v) in enumerate(others):
        a2.bar(np.arange(len(order)) + k * width, v[order] - smallest[order], width=width, label=f"{label} - {list(singles)[0]}")
    a2.bar(np.arange(len(order)) + len(others) * width, concat[order] - smallest[order], width=width, label=f"concatenation - {list(singles)[0]}")
    a2.axhline(0, color="k", lw=0.5)
    a2.set_xticks(range(len(order)), [tags[i] for i in order], rotation=75, fontsize=7)
    a2.set(ylabel="ROC-AUC gain over the smallest")
    a2.legend(fontsize=7)
    save_figure(fig, out / "figures" / f"{name}.png")
    return [[tags[i], *(float(v[i]) for v in singles.values()), float(concat[i]), float(concat[i] - smallest[i])] for i in order]


def reproduce(
    config: ExperimentConfig, out: str | Path, *, seeds: tuple[int, ...] = (0,), local_from: str | Path | None = None,
    joint: TrainConfig | None = None, n_boot: int = 200,
) -> dict:
    """Run every comparison of the paper on ``config``'s dataset into ``out``; returns the results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(config, layers=None)  # every ablation chooses its own layers
    save_config(config, out / "config.toml")
    data = prepare(config)
    device = choose_device(config.device)
    if local_from:
        source = load_model(local_from)
        if source.frontend != config.frontend:
            raise ParameterError(f"{local_from}: its front end {source.frontend} differs from this experiment's {config.frontend}")
        models = {s: source.local[s] for s in config.scales if s in source.local}
        if len(models) != len(config.scales):
            raise ParameterError(f"{local_from} has local CNNs for {sorted(source.local)}, not all of {list(config.scales)}")
    else:
        models = run_local(config, out, data)
    agg = run_aggregate(config, out, data, models)
    feats = agg["features"]
    clips = data.clips
    test = clips.indices("test")
    y = clips.labels[test]
    task = clips.task
    multiclass = task == "multiclass"

    plan = ablations(tuple(config.scales))
    results: dict[str, dict] = {}
    for ab in {a.key: a for fig in plan.values() for a in fig}.values():
        r = {"label": ab.label, "scales": list(ab.scales), "layers": ab.layers, "seeds": {}}
        for seed in seeds:
            cfg = dataclasses.replace(config, global_=dataclasses.replace(config.global_, seed=seed))
            _, probs = run_global(cfg, out, data, feats, models, workdir=out / "3-global" / ab.key.replace(":", "_") / f"seed{seed}",
                                  scales=ab.scales, layers=ab.layers)
            m = evaluate(y, probs, task=task)
            r["seeds"][seed] = {"roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"], "per_tag_roc_auc": m["per_tag"]["roc_auc"],
                                **({"accuracy": m["accuracy"]} if multiclass else {})}
            if seed == seeds[0]:
                r["roc_auc_ci95"] = bootstrap_ci(y, probs, n_boot=n_boot)
        results[ab.key] = r

    local = {str(s): evaluate(y, p[test], task="multilabel") for s, p in agg["local_probs"].items()}
    md: dict[str, str] = {}
    seed_note = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})"

    # Fig. 2
    rows = [[s, local[str(s)]["roc_auc"], local[str(s)]["pr_auc"], _pm(results[str(s)]), _pm(results[str(s)], "pr_auc")] for s in sorted(config.scales)]
    md["fig2"] = _table(out, "fig2_local_vs_global", ["input frames", "local ROC-AUC", "local PR-AUC", "global ROC-AUC", "global PR-AUC"], rows)
    _bars(out, "fig2_local_vs_global", [f"{s} frames" for s in sorted(config.scales)],
          {"local": ([local[str(s)]["roc_auc"] for s in sorted(config.scales)], [0] * len(config.scales)),
           "global": ([np.mean([v["roc_auc"] for v in results[str(s)]["seeds"].values()]) for s in sorted(config.scales)],
                      [np.std([v["roc_auc"] for v in results[str(s)]["seeds"].values()]) for s in sorted(config.scales)])},
          "Fig. 2: local vs global models")

    def fig_rows(abl: list[Ablation]) -> list[list]:
        return [[a.label, _pm(results[a.key]), _pm(results[a.key], "pr_auc"),
                 "{:.4f}-{:.4f}".format(*results[a.key]["roc_auc_ci95"])] for a in abl]

    header = ["features", "ROC-AUC", "PR-AUC", "ROC-AUC 95% CI (seed 0)"]
    for fig, title in (("fig3", "Fig. 3: levels of the 27-frame model"), ("fig4", "Fig. 4: combinations of scales")):
        if not plan[fig]:
            continue
        name = {"fig3": "fig3_levels", "fig4": "fig4_scales"}[fig]
        md[fig] = _table(out, name, header, fig_rows(plan[fig]))
        _bars(out, name, [a.label for a in plan[fig]],
              {"global": ([np.mean([v["roc_auc"] for v in results[a.key]["seeds"].values()]) for a in plan[fig]],
                          [np.std([v["roc_auc"] for v in results[a.key]["seeds"].values()]) for a in plan[fig]])}, title)

    # Fig. 5
    s0 = seeds[0]
    pt = {k: np.array(r["seeds"][s0]["per_tag_roc_auc"], dtype=float) for k, r in results.items()}
    if plan["fig3"]:
        singles = {f"L{l}": pt[f"27:L{l}"] for l in (1, 2, 3)}
        rows = _per_tag_figure(out, "fig5_levels", clips.tags, singles, pt["27:L123"], "Fig. 5 (top): levels of the 27-frame model, per tag")
        md["fig5_levels"] = _table(out, "fig5_levels", ["tag", "L1", "L2", "L3", "L1+L2+L3", "gain over L1"], rows)
    small = [s for s in (18, 27, 54) if s in config.scales]
    if len(small) > 1:
        concat_key = "+".join(map(str, small))
        if concat_key not in pt:
            concat_key = "+".join(map(str, sorted(config.scales)))
        singles = {f"{s} frames": pt[str(s)] for s in small}
        rows = _per_tag_figure(out, "fig5_scales", clips.tags, singles, pt[concat_key], f"Fig. 5 (bottom): scales, per tag ({concat_key} concatenated)")
        md["fig5_scales"] = _table(out, "fig5_scales", ["tag", *singles, concat_key.replace("+", " + "), f"gain over {small[0]} frames"], rows)

    # Joint fine-tuning of the multi-level, multi-scale model
    all_key = "+".join(map(str, sorted(config.scales)))
    joint_result = None
    if joint is not None:
        from .global_classifier import GlobalArch, GlobalMLP

        g = GlobalMLP(GlobalArch(n_features=feats.shape[1], n_outputs=len(clips.tags), hidden=config.global_hidden, task=task))
        g.load_state_dict(torch.load(out / "3-global" / all_key / f"seed{s0}" / "best.pt", map_location="cpu", weights_only=True))
        jm = JointTagger({s: copy.deepcopy(m) for s, m in models.items()}, g, scales=config.scales, layers=None)
        labels = data.labels_full()
        finetune_joint(jm, data.mels, labels, train_rows=data.split("train"), valid_rows=data.split("valid"),
                       config=joint, workdir=out / "4-joint", device=device)
        probs = predict_joint(jm, data.mels, data.split("test"), device=device)
        m = evaluate(y, probs, task=task)
        joint_result = {"roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"], "roc_auc_ci95": bootstrap_ci(y, probs, n_boot=n_boot),
                        **({"accuracy": m["accuracy"]} if multiclass else {})}

    # Table II (and I)
    best_local = max(local, key=lambda s: local[s]["roc_auc"])
    ml_key = "27:L123" if "27:L123" in results else str(sorted(config.scales)[0])
    rows = [[f"local model ({best_local} frames)", "measured", f"{local[best_local]['roc_auc']:.4f}", f"{local[best_local]['pr_auc']:.4f}"],
            [f"global, multi-level ({results[ml_key]['label']})", "measured", _pm(results[ml_key]), _pm(results[ml_key], "pr_auc")],
            [f"global, multi-level + multi-scale ({all_key})", "measured", _pm(results[all_key]), _pm(results[all_key], "pr_auc")]]
    if joint_result:
        rows.append(["global, jointly fine-tuned end to end", "measured", f"{joint_result['roc_auc']:.4f}", f"{joint_result['pr_auc']:.4f}"])
    md["table2"] = _table(out, "table2_measured", [f"model ({clips.name}, test)", "source", "ROC-AUC", "PR-AUC"], rows)
    pub_cols = ["MTAT", "MSD", "GTZAN", "Tagtraum"]
    md["table2_published"] = _table(out, "table2_published", ["model", "source", *pub_cols],
                                    [[name, "published", *(f"{v[c]:.4f}" if c in v else "–" for c in pub_cols)] for name, v in PUBLISHED])
    if local_from:
        measure = "accuracy" if multiclass else "ROC-AUC"
        value = np.mean([v["accuracy" if multiclass else "roc_auc"] for v in results[all_key]["seeds"].values()])
        md["table1"] = _table(out, "table1_transfer", ["dataset", "task", "CNNs from", "measurement", "value"],
                              [[clips.name, "genre classification" if multiclass else "auto-tagging", str(local_from), measure, f"{value:.4f}"]])

    summary = {"dataset": clips.name, "seeds": list(seeds), "local": {s: {"roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"]} for s, m in local.items()},
               "global": results, "joint": joint_result, "local_from": str(local_from) if local_from else None}
    atomic_write_json(out / "results.json", summary)
    _write_report(out, clips.name, md, seed_note, joint_result, results[all_key], local_from)
    return summary


def _write_report(out: Path, name: str, md: dict[str, str], seed_note: str, joint_result, staged: dict, local_from) -> None:
    parts = [f"# Reproduction of Lee & Nam (2017) on {name}", "",
             f"Global models trained with {seed_note}; ± is the standard deviation over seeds; intervals are 95% bootstrap "
             "intervals over test clips. Configuration: `config.toml`. Local CNNs: "
             + (f"taken from `{local_from}` (transfer learning)." if local_from else "trained here once, reused by every ablation."), ""]
    sections = [("fig2", "Fig. 2: local vs global models per input size", "fig2_local_vs_global"),
                ("fig3", "Fig. 3: levels of the 27-frame model", "fig3_levels"),
                ("fig4", "Fig. 4: combinations of scales", "fig4_scales"),
                ("fig5_levels", "Fig. 5 (top): per-tag ROC-AUC, levels", "fig5_levels"),
                ("fig5_scales", "Fig. 5 (bottom): per-tag ROC-AUC, scales", "fig5_scales")]
    for key, title, fig in sections:
        if key in md:
            parts += [f"## {title}", "", f"![{fig}](figures/{fig}.png)", "", md[key]]
    if "table1" in md:
        parts += ["## Table I: transfer learning", "", md["table1"]]
    parts += ["## Table II: this run (measured)", "", md["table2"], "### The paper's Table II and Table I (published, not measured here)", "", md["table2_published"]]
    if joint_result:
        staged_roc = np.mean([v["roc_auc"] for v in staged["seeds"].values()])
        verdict = "beats" if joint_result["roc_auc"] > staged_roc else "does not beat"
        parts += ["## Joint fine-tuning", "",
                  f"Fine-tuning the local CNNs and the global network together end to end {verdict} the staged model: "
                  f"test ROC-AUC {joint_result['roc_auc']:.4f} (95% CI {joint_result['roc_auc_ci95'][0]:.4f}-{joint_result['roc_auc_ci95'][1]:.4f}) "
                  f"against {staged_roc:.4f} (CI {staged['roc_auc_ci95'][0]:.4f}-{staged['roc_auc_ci95'][1]:.4f}).", ""]
    atomic_write_text(out / "report.md", "\n".join(parts))
