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
from typing import TYPE_CHECKING

import numpy as np

from ..fileio import atomic_write_json
from ..evaluation.metrics import binary_targets, bootstrap_ci, evaluate
from .experiment_config import ExperimentConfig
from ..report import bar_figure, best_local_scale, per_tag_gain_figure, write_reproduction_report, write_table
from .run import Experiment

if TYPE_CHECKING:
    from ..models.tagging_model import TaggingModel

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

    scales: tuple[str, ...]
    layers: tuple[int, ...] | None = None

    @property
    def key(self) -> str:
        """The ablation's name in results and run folders: ``18+27`` or ``27:L12`` (scales, then levels)."""
        s = "+".join(self.scales)
        return s if self.layers is None else f"{s}:L{''.join(map(str, self.layers))}"

    @property
    def label(self) -> str:
        """The ablation's name in tables and figures: ``18+27 frames``, ``L1+L2 (27)``."""
        scales = "+".join(self.scales) + (" frames" if all(x.isdigit() for x in self.scales) else "")
        if self.layers is None:
            return scales
        return "+".join(f"L{l}" for l in self.layers) + f" ({'+'.join(self.scales)})"


#: The paper's scale combinations of Fig. 4.
PAPER_COMBINATIONS = (("18", "27"), ("18", "27", "54"), ("27", "54", "108"), ("54", "108", "216"))


def level_scale(scales: tuple[str, ...], depth: dict[str, int]) -> str | None:
    """The scale whose levels Fig. 3 combines: the paper's 27-frame CNN, else the first with several levels."""
    return "27" if "27" in scales else next((s for s in scales if depth[s] > 1), None)


def ablations(scales: tuple[str, ...], depth: dict[str, int]) -> dict[str, list[Ablation]]:
    """The global models each figure needs, for the scales at hand (``depth``: levels per scale).

    Fig. 3 takes every combination of up to three levels (the paper's L1-L3
    of the 27-frame CNN); for a deeper network, each level alone and the
    unions L1+L2, L1+L2+L3, ... Fig. 4 takes each scale alone, the paper's
    combinations, every segment length of each network together, and all.
    """
    s = tuple(scales)
    fig2 = [Ablation((x,)) for x in s]
    fig3 = []
    ref = level_scale(s, depth)
    if ref is not None:
        n = depth[ref]
        levels = range(1, n + 1)
        if n <= 3:
            fig3 = [Ablation((ref,), c) for r in levels for c in itertools.combinations(levels, r)]
        else:
            fig3 = [Ablation((ref,), (l,)) for l in levels] + [Ablation((ref,), tuple(range(1, k + 1))) for k in range(2, n + 1)]
    networks: dict[str, list[str]] = {}
    for x in s:
        networks.setdefault(x.split("/")[0] if "/" in x else "paper CNNs", []).append(x)
    combos = [c for c in PAPER_COMBINATIONS if set(c) <= set(s)]
    combos += [tuple(v) for v in networks.values() if len(v) > 1]
    if len(networks) > 1:  # one scale of each network: the networks together at their own segment lengths
        combos.append(tuple(v[0] for v in networks.values()))
    combos = [c for c in dict.fromkeys(combos) if c != s]
    fig4 = fig2 + [Ablation(c) for c in combos] + ([Ablation(s)] if len(s) > 1 else [])
    return {"fig2": fig2, "fig3": fig3, "fig4": fig4}


def own_tag_comparison(
    exp: Experiment, *, local_probs: dict[str, np.ndarray], y: np.ndarray, test: np.ndarray, global_probs: np.ndarray, n_boot: int
) -> list[list]:
    """Does the global model beat a pretrained network's own tags? For each scale whose network has outputs of another
    vocabulary that shares tag names with the dataset (matched as ``tagstack evaluate`` matches them), macro ROC-AUC of its
    own outputs and of the global model on those shared tags, the same test clips, with bootstrap intervals."""
    from ..evaluation.assess import tag_key

    tags = exp.data.clips.tags
    rows = []
    for scale, names in exp.own_outputs().items():
        if not names or names == list(tags):
            continue
        keys = {tag_key(t): j for j, t in enumerate(names)}
        pairs = [(i, keys[tag_key(t)]) for i, t in enumerate(tags) if tag_key(t) in keys]
        mine, theirs = [i for i, _ in pairs], [j for _, j in pairs]
        if not pairs or np.isnan(evaluate(y[:, mine], global_probs[:, mine])["roc_auc"]):
            continue
        own_p = local_probs[scale][test][:, theirs]
        cells = []
        for p in (own_p, global_probs[:, mine]):
            m = evaluate(y[:, mine], p)["roc_auc"]
            lo, hi = bootstrap_ci(y[:, mine], p, n_boot=n_boot)
            cells.append(f"{m:.4f} ({lo:.4f}-{hi:.4f})")
        rows.append([scale, f"{len(pairs)}: " + ", ".join(tags[i] for i in mine[:8]) + (" ..." if len(pairs) > 8 else ""), *cells])
    return rows


def _mean(r: dict, key: str = "roc_auc") -> float:
    return float(np.mean([v[key] for v in r["seeds"].values()]))


def _pm(r: dict, key: str = "roc_auc") -> str:
    vals = [v[key] for v in r["seeds"].values()]
    return f"{np.mean(vals):.4f}" + (f" ± {np.std(vals):.4f}" if len(vals) > 1 else "")


def reproduce(config: ExperimentConfig, out: str | Path) -> dict:
    """Run every comparison of the paper on ``config``'s dataset into ``out``; returns the results.

    The configuration carries everything (seeds, ``local_from``, the joint
    schedule, bootstrap draws) and is saved in ``out`` as it ran.

    Parameters
    ----------
    config : ExperimentConfig
        The dataset, scales (every ablation reads a subset of them), seeds, ``local_from``, ``joint`` and
        ``n_boot``; its ``layers`` are not used (each ablation chooses its own).
    out : str or Path
        The run directory: ``tables/`` (Markdown and CSV), ``figures/`` (PNG), ``report.md``, ``results.json``
        and ``config.toml``, beside the stages' results (reused when the same command runs again).

    Returns
    -------
    results : dict
        What ``results.json`` holds: ``dataset``, ``seeds``, ``local`` (scale -> test ``roc_auc`` and ``pr_auc``
        of each local network that outputs these tags), ``global`` (ablation key, such as ``"18+27"`` or
        ``"27:L12"`` -> ``label``, ``scales``, ``layers``, ``seeds`` (seed -> ``roc_auc``, ``pr_auc``,
        ``per_tag_roc_auc``, and ``accuracy`` for single-label data) and ``roc_auc_ci95`` of the first seed),
        ``joint`` (the jointly fine-tuned model's scores, or None) and ``local_from``.
    """
    config = config.replace(layers=None)  # every ablation chooses its own layers
    exp = Experiment(config, out)
    out = exp.dir
    seeds, local_from = config.seeds, config.local_from
    agg = exp.features()
    clips = exp.data.clips
    test = clips.indices("test")
    y = binary_targets(clips.labels[test])
    multiclass = clips.task == "multiclass"
    scales = tuple(config.scales)
    depth = {sc: len(exp.shell().network_of(sc).feature_info) for sc in scales}
    plan = ablations(scales, depth)
    ref = level_scale(scales, depth)
    every_level = Ablation((ref,), tuple(range(1, depth[ref] + 1))).key if ref else None  # all levels of scale ref
    all_key = "+".join(scales)  # every scale, every level: the paper's multi-level, multi-scale model

    results, staged, staged_probs = _train_ablations(exp, plan, y=y, all_key=all_key)
    # networks taken from a model of another vocabulary (the paper's transfer learning) cannot be scored on these tags
    scored = exp.local_scored
    local = {s: evaluate(y, p[test], task="multilabel") for s, p in agg["local_probs"].items() if s in scored}

    md = _write_fig2(out, results, local=local, scales=scales)
    md |= _write_figs3_4(out, results, plan=plan, ref=ref)
    md |= _write_fig5(out, results, plan=plan, tags=clips.tags, scales=scales, ref=ref, depth=depth, every_level=every_level, seed=seeds[0])
    joint_result = _joint_scores(exp, staged, y=y)
    md |= _write_table2(
        out,
        results,
        local=local,
        plan=plan,
        multi_level=every_level if every_level in results else scales[0],
        all_key=all_key,
        joint_result=joint_result,
        dataset=clips.name,
        multiclass=multiclass,
    )
    own = own_tag_comparison(exp, local_probs=agg["local_probs"], y=y, test=test, global_probs=staged_probs, n_boot=config.n_boot)
    md |= _write_table2_own_tags(out, own)
    md |= _write_table2_published(out)
    if local_from:
        md |= _write_table1(out, results[all_key], dataset=clips.name, local_from=local_from, multiclass=multiclass)

    summary = {
        "dataset": clips.name,
        "seeds": list(seeds),
        "local": {s: {"roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"]} for s, m in local.items()},
        "global": results,
        "joint": joint_result,
        "local_from": list(local_from) if local_from else None,
    }
    atomic_write_json(out / "results.json", summary)
    exp.save_config()
    write_reproduction_report(
        out,
        clips.name,
        md=md,
        seed_note=f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})",
        joint_result=joint_result,
        staged=results[all_key],
        local_from=local_from,
        local_scored=bool(local),
    )
    return summary


# ------------------------------------------------------------ computation


def _train_ablations(
    exp: Experiment, plan: dict[str, list[Ablation]], *, y: np.ndarray, all_key: str
) -> tuple[dict[str, dict], TaggingModel | None, np.ndarray | None]:
    """Train and score every ablation's global model once per seed (each ablation once, however many figures need it).

    Returns ``results`` (ablation key -> ``label``, ``scales``, ``layers``, ``seeds`` (seed -> scores) and
    ``roc_auc_ci95`` of the first seed), then the first seed's model of every scale (``all_key``) and its test
    probabilities (None, None when no ablation reads every scale).
    """
    seeds, n_boot, task = exp.config.seeds, exp.config.n_boot, exp.data.clips.task
    results: dict[str, dict] = {}
    staged, staged_probs = None, None
    for ab in {a.key: a for fig in plan.values() for a in fig}.values():
        r = {"label": ab.label, "scales": list(ab.scales), "layers": ab.layers, "seeds": {}}
        for seed in seeds:
            model = exp.train_head(
                scales=ab.scales,
                layers=ab.layers or None,
                seed=seed,
                name=f"3-global/{ab.key.replace(':', '_').replace('/', '@')}/seed{seed}",
            )
            probs = exp.test_probs(model)
            m = evaluate(y, probs, task=task)
            r["seeds"][seed] = {
                "roc_auc": m["roc_auc"],
                "pr_auc": m["pr_auc"],
                "per_tag_roc_auc": m["per_tag"]["roc_auc"],
                **({"accuracy": m["accuracy"]} if task == "multiclass" else {}),
            }
            if seed == seeds[0]:
                r["roc_auc_ci95"] = bootstrap_ci(y, probs, n_boot=n_boot)
                if ab.key == all_key:
                    staged, staged_probs = model, probs
        results[ab.key] = r
    return results, staged, staged_probs


def _joint_scores(exp: Experiment, staged: TaggingModel | None, *, y: np.ndarray) -> dict | None:
    """Fine-tune the multi-level, multi-scale model ``staged`` end to end (the same TaggingModel) and score it on the
    test clips; None when the configuration asks for no joint fine-tuning or no model reads every scale."""
    if exp.config.joint is None or staged is None:
        return None
    task = exp.data.clips.task
    _, probs = exp.finetune(staged)
    m = evaluate(y, probs, task=task)
    return {
        "roc_auc": m["roc_auc"],
        "pr_auc": m["pr_auc"],
        "roc_auc_ci95": bootstrap_ci(y, probs, n_boot=exp.config.n_boot),
        **({"accuracy": m["accuracy"]} if task == "multiclass" else {}),
    }


# ------------------------------------------------------------ tables and figures (each returns its Markdown tables by key)


def _write_fig2(out: Path, results: dict[str, dict], *, local: dict[str, dict], scales: tuple[str, ...]) -> dict[str, str]:
    """Fig. 2: the local CNN (where it outputs these tags) against the global model of each scale alone."""
    rows = [
        [s, *((local[s]["roc_auc"], local[s]["pr_auc"]) if s in local else ("–", "–")), _pm(results[s]), _pm(results[s], "pr_auc")]
        for s in scales
    ]
    md = write_table(
        out, "fig2_local_vs_global", header=["scale", "local ROC-AUC", "local PR-AUC", "global ROC-AUC", "global PR-AUC"], rows=rows
    )
    bar_figure(
        out,
        "fig2_local_vs_global",
        labels=[f"{s} frames" if s.isdigit() else s for s in scales],
        series={
            **({"local": ([local[s]["roc_auc"] if s in local else 0.0 for s in scales], [0] * len(scales))} if local else {}),
            "global": (
                [np.mean([v["roc_auc"] for v in results[s]["seeds"].values()]) for s in scales],
                [np.std([v["roc_auc"] for v in results[s]["seeds"].values()]) for s in scales],
            ),
        },
        title="Fig. 2: local vs global models" if local else "Fig. 2: global models per scale (local networks from another vocabulary)",
    )
    return {"fig2": md}


def _write_figs3_4(out: Path, results: dict[str, dict], *, plan: dict[str, list[Ablation]], ref: str | None) -> dict[str, str]:
    """Fig. 3 (combinations of the levels of scale ``ref``) and Fig. 4 (combinations of scales), each where planned."""
    md = {}
    header = ["features", "ROC-AUC", "PR-AUC", "ROC-AUC 95% CI (seed 0)"]
    for fig, title in (("fig3", f"Fig. 3: levels of scale {ref}"), ("fig4", "Fig. 4: combinations of scales")):
        if not plan[fig]:
            continue
        name = {"fig3": "fig3_levels", "fig4": "fig4_scales"}[fig]
        rows = [
            [a.label, _pm(results[a.key]), _pm(results[a.key], "pr_auc"), "{:.4f}-{:.4f}".format(*results[a.key]["roc_auc_ci95"])]
            for a in plan[fig]
        ]
        md[fig] = write_table(out, name, header=header, rows=rows)
        bar_figure(
            out,
            name,
            labels=[a.label for a in plan[fig]],
            series={
                "global": (
                    [np.mean([v["roc_auc"] for v in results[a.key]["seeds"].values()]) for a in plan[fig]],
                    [np.std([v["roc_auc"] for v in results[a.key]["seeds"].values()]) for a in plan[fig]],
                )
            },
            title=title,
        )
    return md


def _write_fig5(
    out: Path,
    results: dict[str, dict],
    *,
    plan: dict[str, list[Ablation]],
    tags: list[str],
    scales: tuple[str, ...],
    ref: str | None,
    depth: dict[str, int],
    every_level: str | None,
    seed: int,
) -> dict[str, str]:
    """Fig. 5: per-tag ROC-AUC (of ``seed``'s models) of each level of ``ref`` against all its levels (top, where Fig. 3
    ran), and of each small scale against their concatenation (bottom, where there are several scales)."""
    md = {}
    pt = {k: np.array(r["seeds"][seed]["per_tag_roc_auc"], dtype=float) for k, r in results.items()}
    if plan["fig3"]:
        singles = {f"L{l}": pt[f"{ref}:L{l}"] for l in range(1, depth[ref] + 1)}
        rows = per_tag_gain_figure(
            out,
            "fig5_levels",
            tags=tags,
            singles=singles,
            concat=pt[every_level],
            title=f"Fig. 5 (top): levels of scale {ref}, per tag",
        )
        md["fig5_levels"] = write_table(out, "fig5_levels", header=["tag", *singles, "+".join(singles), "gain over L1"], rows=rows)
    small = [s for s in ("18", "27", "54") if s in scales] if "27" in scales else list(scales[:3])
    if len(small) > 1:
        concat_key = "+".join(small)
        if concat_key not in pt:
            concat_key = "+".join(scales)
        singles = {f"{s} frames" if s.isdigit() else s: pt[s] for s in small}
        rows = per_tag_gain_figure(
            out,
            "fig5_scales",
            tags=tags,
            singles=singles,
            concat=pt[concat_key],
            title=f"Fig. 5 (bottom): scales, per tag ({concat_key} concatenated)",
        )
        md["fig5_scales"] = write_table(
            out, "fig5_scales", header=["tag", *singles, concat_key.replace("+", " + "), f"gain over {small[0]} frames"], rows=rows
        )
    return md


def _write_table2(
    out: Path,
    results: dict[str, dict],
    *,
    local: dict[str, dict],
    plan: dict[str, list[Ablation]],
    multi_level: str,
    all_key: str,
    joint_result: dict | None,
    dataset: str,
    multiclass: bool,
) -> dict[str, str]:
    """Table II as measured here: the best local CNN, the best single level and scale, multi-level (``multi_level``),
    multi-level + multi-scale (``all_key``) and, where it ran, the jointly fine-tuned model."""
    best_local = best_local_scale(local)
    # single-label sets (GTZAN, Tagtraum) are compared by accuracy in the paper: measured here too (the local CNNs' outputs
    # are independent sigmoids, so they have none)
    acc = (lambda r: [_pm(r, "accuracy")]) if multiclass else (lambda r: [])
    best_level = max((a.key for a in plan["fig3"] if len(a.layers) == 1), key=lambda k: _mean(results[k]), default=None)
    best_scale = max((a.key for a in plan["fig2"]), key=lambda k: _mean(results[k]))

    def measured(label: str, key: str) -> list:
        return [label, "measured", _pm(results[key]), _pm(results[key], "pr_auc"), *acc(results[key])]

    rows = []
    if best_local:
        rows.append(
            [
                f"local model ({best_local})",
                "measured",
                f"{local[best_local]['roc_auc']:.4f}",
                f"{local[best_local]['pr_auc']:.4f}",
                *(["–"] if multiclass else []),
            ]
        )
    if best_level:
        rows.append(measured(f"global, best single level ({results[best_level]['label']})", best_level))
    rows += [
        measured(f"global, best single scale ({results[best_scale]['label']})", best_scale),
        measured(f"global, multi-level ({results[multi_level]['label']})", multi_level),
        measured(f"global, multi-level + multi-scale ({all_key})", all_key),
    ]
    if joint_result:
        rows.append(
            [
                "global, jointly fine-tuned end to end",
                "measured",
                f"{joint_result['roc_auc']:.4f}",
                f"{joint_result['pr_auc']:.4f}",
                *([f"{joint_result['accuracy']:.4f}"] if multiclass else []),
            ]
        )
    header = [f"model ({dataset}, test)", "source", "ROC-AUC", "PR-AUC", *(["accuracy"] if multiclass else [])]
    return {"table2": write_table(out, "table2_measured", header=header, rows=rows)}


def _write_table2_own_tags(out: Path, rows: list[list]) -> dict[str, str]:
    """The global model against the pretrained networks' own outputs on their shared tags (``own_tag_comparison``'s
    rows), where there are any."""
    if not rows:
        return {}
    header = ["scale", "shared tags", "its own outputs: ROC-AUC (95% CI)", "global model, same tags: ROC-AUC (95% CI)"]
    return {"table2_own_tags": write_table(out, "table2_own_tags", header=header, rows=rows)}


def _write_table2_published(out: Path) -> dict[str, str]:
    """The paper's Tables II and I as published (``PUBLISHED``), marked as such."""
    pub_cols = ["MTAT", "MSD", "GTZAN", "Tagtraum"]
    pub_names = ["MTAT (ROC-AUC)", "MSD (ROC-AUC)", "GTZAN (accuracy)", "Tagtraum (accuracy)"]
    rows = [[name, "published", *(f"{v[c]:.4f}" if c in v else "–" for c in pub_cols)] for name, v in PUBLISHED]
    return {"table2_published": write_table(out, "table2_published", header=["model", "source", *pub_names], rows=rows)}


def _write_table1(out: Path, staged: dict, *, dataset: str, local_from: tuple[str, ...], multiclass: bool) -> dict[str, str]:
    """Table I, transfer learning: the multi-level, multi-scale global model (``staged``, its results) on CNNs from
    ``local_from``, by accuracy for single-label data, else ROC-AUC (mean over seeds)."""
    measure = "accuracy" if multiclass else "ROC-AUC"
    value = np.mean([v["accuracy" if multiclass else "roc_auc"] for v in staged["seeds"].values()])
    task = "genre classification" if multiclass else "auto-tagging"
    rows = [[dataset, task, ", ".join(local_from), measure, f"{value:.4f}"]]
    return {"table1": write_table(out, "table1_transfer", header=["dataset", "task", "CNNs from", "measurement", "value"], rows=rows)}
