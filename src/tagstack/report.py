"""Everything tagstack shows a person: run reports, reproduction tables and figures, taggram plots, model cards.

Computation lives elsewhere; these functions only format results that are
passed in, as Markdown, CSV and PNG (matplotlib, headless).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .config import FrontEndConfig
from .datasets import ClipSet
from .tags import UNGROUPED
from .fileio import atomic_save_npy, atomic_write, atomic_write_text


def plt_module():
    """``matplotlib.pyplot`` on the headless Agg backend, imported on first use (tagging without plots never loads it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _printable(name: str) -> str:
    """A file name for a plot's title: control characters (a tab, a newline in a name) as ``?``; no font draws them."""
    return "".join(c if c.isprintable() else "?" for c in name)


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure atomically and close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"), suffix=".png")
    plt_module().close(fig)


def plot_curves(run_dir: Path, out: Path) -> None:
    """Validation loss and ROC-AUC per epoch of every trained network."""
    plt = plt_module()
    histories = {}
    for h in sorted(run_dir.glob("1-local/*/history.json"), key=lambda p: int(p.parent.name)):
        histories[f"local {h.parent.name}"] = json.loads(h.read_text())
    g = run_dir / "3-global" / "history.json"
    if g.exists():
        histories["global"] = json.loads(g.read_text())
    if not histories:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, hist in histories.items():
        ep = [r["epoch"] for r in hist]
        axes[0].plot(ep, [r["val_loss"] for r in hist], marker=".", label=name)
        axes[1].plot(ep, [r["val_roc_auc"] for r in hist], marker=".", label=name)
    axes[0].set(xlabel="epoch", ylabel="validation loss", title="Validation loss")
    axes[1].set(xlabel="epoch", ylabel="validation macro ROC-AUC", title="Validation ROC-AUC")
    axes[1].legend(fontsize=8)
    save_figure(fig, out)


def plot_per_tag(tags: list[str], series: dict[str, list[float]], *, out: Path, title: str) -> None:
    """Per-tag ROC-AUC bars of several models, tags sorted by the last series."""
    plt = plt_module()
    last = np.array(list(series.values())[-1], dtype=float)
    order = np.argsort(np.nan_to_num(last, nan=-1))[::-1]
    fig, ax = plt.subplots(figsize=(max(8, 0.28 * len(tags)), 4.5))
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        v = np.array(values, dtype=float)[order]
        ax.bar(np.arange(len(tags)) + k * width, v, width=width, label=name)
    ax.set_xticks(np.arange(len(tags)) + 0.4 - width / 2, [tags[i] for i in order], rotation=75, fontsize=8)
    lo = np.nanmin([np.nanmin(np.array(v, dtype=float)) for v in series.values()])
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set(ylabel="ROC-AUC", title=title)
    ax.legend(fontsize=8)
    save_figure(fig, out)


def best_local_scale(local: dict[str, dict]) -> str | None:
    """The scale whose local CNN has the best test ROC-AUC, or None when none was scored (CNNs of another vocabulary)."""
    return max(local, key=lambda s: local[s]["roc_auc"]) if local else None


def write_report(run_dir: Path, metrics: dict, *, clips: ClipSet) -> None:
    """``report.md`` and ``plots/*.png`` of a finished three-stage run."""
    plots = run_dir / "plots"
    plot_curves(run_dir, plots / "curves.png")
    best_local = best_local_scale(metrics["local"])
    local = metrics["local"][best_local] if best_local else None  # None: local CNNs of another vocabulary (local_from)
    plot_per_tag(
        clips.tags,
        {
            **({f"local {best_local} frames": local["per_tag"]["roc_auc"]} if local else {}),
            "global": metrics["global"]["per_tag"]["roc_auc"],
        },
        out=plots / "per_tag_roc_auc.png",
        title="Per-tag test ROC-AUC" + (", best local model vs global model" if local else ""),
    )
    vs = f" local {best_local} |" if local else ""
    g = metrics["global"]
    lines = [
        f"# tagstack run: {metrics['dataset']}",
        "",
        f"Clips: {metrics['n_clips']['train']} train, {metrics['n_clips']['valid']} validation, {metrics['n_clips']['test']} test; "
        f"{len(clips.tags)} tags. Skipped files: {len(metrics['skipped_files'])}. Configuration: `config.toml`.",
        "",
        "## Test scores",
        "",
        "| model | ROC-AUC | PR-AUC |",
        "|---|---|---|",
    ]
    for s, m in metrics["local"].items():
        lines.append(f"| local, {s} frames | {m['roc_auc']:.4f} | {m['pr_auc']:.4f} |")
    lo, hi = g["roc_auc_ci95"]
    lines.append(f"| global, multi-level multi-scale | {g['roc_auc']:.4f} (95% CI {lo:.4f}–{hi:.4f}) | {g['pr_auc']:.4f} |")
    if "accuracy" in g:
        lines += ["", f"Global accuracy: {g['accuracy']:.4f}"]
    if g.get("groups"):
        lines += ["", "## Mean ROC-AUC per tag group", "", f"| group |{vs} global |", "|---|" + "---|" * (2 if local else 1)]
        for grp, v in g["groups"].items():
            lv = f" {_fmt(local['groups'].get(grp))} |" if local else ""
            lines.append(f"| {grp} |{lv} {_fmt(v)} |")
    lines += [
        "",
        "## Per-tag ROC-AUC",
        "",
        "![per-tag](plots/per_tag_roc_auc.png)",
        "",
        f"| tag | group |{vs} global |",
        "|---|---|" + "---|" * (2 if local else 1),
    ]
    for j, t in enumerate(clips.tags):
        lv = f" {_fmt(local['per_tag']['roc_auc'][j])} |" if local else ""  # "–": a tag with one class in the test split
        lines.append(f"| {t} | {clips.groups.get(t, '')} |{lv} {_fmt(g['per_tag']['roc_auc'][j])} |")
    lines += ["", "## Training curves", "", "![curves](plots/curves.png)", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(lines))


# ------------------------------------------------------------ the reproduction (tagstack reproduce)


def write_table(out: Path, name: str, *, header: list[str], rows: list[list]) -> str:
    """Write ``name``.csv and .md; returns the Markdown."""

    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    csv_text = "\n".join(",".join(f'"{fmt(v)}"' if "," in fmt(v) else fmt(v) for v in r) for r in [header, *rows]) + "\n"
    md = (
        "\n".join(
            ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
        )
        + "\n"
    )
    atomic_write_text(out / "tables" / f"{name}.csv", csv_text)
    atomic_write_text(out / "tables" / f"{name}.md", md)
    return md


def bar_figure(out: Path, name: str, *, labels: list[str], series: dict[str, tuple[list[float], list[float]]], title: str) -> None:
    """Bars of test ROC-AUC with error bars (``series``: name -> (values, errors) per label), as ``figures/name.png``."""
    plt = plt_module()
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


def per_tag_gain_figure(
    out: Path, name: str, *, tags: list[str], singles: dict[str, np.ndarray], concat: np.ndarray, title: str
) -> list[list]:
    """Fig. 5 style: absolute ROC-AUC of the concatenation (sorted) and each single model's gap to it."""
    plt = plt_module()
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
    a2.bar(
        np.arange(len(order)) + len(others) * width,
        concat[order] - smallest[order],
        width=width,
        label=f"concatenation - {list(singles)[0]}",
    )
    a2.axhline(0, color="k", lw=0.5)
    a2.set_xticks(range(len(order)), [tags[i] for i in order], rotation=75, fontsize=7)
    a2.set(ylabel="ROC-AUC gain over the smallest")
    a2.legend(fontsize=7)
    save_figure(fig, out / "figures" / f"{name}.png")
    return [[tags[i], *(float(v[i]) for v in singles.values()), float(concat[i]), float(concat[i] - smallest[i])] for i in order]


def write_reproduction_report(
    out: Path, name: str, *, md: dict[str, str], seed_note: str, joint_result, staged: dict, local_from, local_scored: bool = True
) -> None:
    """The reproduction's ``report.md``: every table and figure of ``md`` in the paper's order, and joint fine-tuning's verdict."""
    parts = [
        f"# Reproduction of Lee & Nam (2017) on {name}",
        "",
        f"Global models trained with {seed_note}; ± is the standard deviation over seeds; intervals are 95% bootstrap "
        "intervals over test clips. Configuration: `config.toml`. Local CNNs: "
        + (f"taken from `{', '.join(local_from)}` (transfer learning)." if local_from else "trained here once, reused by every ablation."),
        "",
    ]
    fig2 = (
        "Fig. 2: local vs global models per input size"
        if local_scored
        else "Fig. 2: global models per input size (the local CNNs output another vocabulary, so are not scored)"
    )
    sections = [
        ("fig2", fig2, "fig2_local_vs_global"),
        ("fig3", "Fig. 3: levels of one scale (the 27-frame CNN's, or a backbone's)", "fig3_levels"),
        ("fig4", "Fig. 4: combinations of scales", "fig4_scales"),
        ("fig5_levels", "Fig. 5 (top): per-tag ROC-AUC, levels", "fig5_levels"),
        ("fig5_scales", "Fig. 5 (bottom): per-tag ROC-AUC, scales", "fig5_scales"),
    ]
    for key, title, fig in sections:
        if key in md:
            parts += [f"## {title}", "", f"![{fig}](figures/{fig}.png)", "", md[key]]
    if "table1" in md:
        parts += ["## Table I: transfer learning", "", md["table1"]]
    parts += ["## Table II: this run (measured)", "", md["table2"]]
    if "table2_own_tags" in md:
        parts += [
            "### The global model against the pretrained networks' own tags",
            "",
            "On the tags a network's own outputs share with this dataset (by name), the same test clips:",
            "",
            md["table2_own_tags"],
        ]
    parts += ["### The paper's Table II and Table I (published, not measured here)", "", md["table2_published"]]
    if joint_result:
        staged_roc = np.mean([v["roc_auc"] for v in staged["seeds"].values()])
        ci = staged["roc_auc_ci95"]
        if ci[0] <= joint_result["roc_auc"] <= ci[1]:  # a difference inside the staged model's interval is not a win
            verdict = "scores " + ("above" if joint_result["roc_auc"] > staged_roc else "below") + ", inside the bootstrap interval of,"
        else:
            verdict = "beats" if joint_result["roc_auc"] > staged_roc else "does not beat"
        parts += [
            "## Joint fine-tuning",
            "",
            f"Fine-tuning the local CNNs and the global network together end to end {verdict} the staged model: "
            f"test ROC-AUC {joint_result['roc_auc']:.4f} (95% CI {joint_result['roc_auc_ci95'][0]:.4f}-{joint_result['roc_auc_ci95'][1]:.4f}) "
            f"against {staged_roc:.4f} (CI {staged['roc_auc_ci95'][0]:.4f}-{staged['roc_auc_ci95'][1]:.4f}).",
            "",
        ]
    atomic_write_text(out / "report.md", "\n".join(parts))


# ------------------------------------------------------------ taggrams


def write_taggram(result, out_dir: Path, *, stem: str, clip_seconds: float) -> None:
    """A file's taggram as ``stem``.taggram.npy, .csv (window start and end, tag probabilities) and .png."""
    atomic_save_npy(out_dir / f"{stem}.taggram.npy", result.taggram.astype(np.float32))
    ends = np.minimum(result.window_starts + clip_seconds, result.seconds)
    lines = ["start_s,end_s," + ",".join(result.tags)]
    lines += [f"{t:.2f},{e:.2f}," + ",".join(f"{v:.4f}" for v in row) for t, e, row in zip(result.window_starts, ends, result.taggram)]
    atomic_write_text(out_dir / f"{stem}.taggram.csv", "\n".join(lines) + "\n")
    # each column drawn at its window's centre, as wide as the gaps to its neighbours
    centres = (result.window_starts + ends) / 2
    edges = (
        np.concatenate([[0.0], (centres[1:] + centres[:-1]) / 2, [result.seconds]]) if len(centres) > 1 else np.array([0.0, result.seconds])
    )
    plt = plt_module()
    fig, ax = plt.subplots(figsize=(min(20, max(6, 0.5 * len(result.taggram) + 3)), 0.18 * len(result.tags) + 1.5))
    im = ax.pcolormesh(edges, np.arange(len(result.tags) + 1) - 0.5, result.taggram.T, cmap="magma", vmin=0, vmax=1)
    ax.set_yticks(range(len(result.tags)), result.tags, fontsize=7)
    ax.set(
        xlabel=f"time (s); each column a {clip_seconds:g} s window, drawn at its centre",
        title=f"taggram: {_printable(Path(result.path).name)}",
    )
    fig.colorbar(im, ax=ax, label="probability")
    save_figure(fig, out_dir / f"{stem}.taggram.png")


# ------------------------------------------------------------ terminal summaries


def metrics_table(metrics: dict) -> str:
    """Test scores of a run (local CNNs, global model, tag groups) as a plain-text table."""
    lines = ["", f"{'model':<34} {'ROC-AUC':>8} {'PR-AUC':>8}"]
    for s, m in metrics["local"].items():
        lines.append(f"{'local, ' + s + ' frames':<34} {m['roc_auc']:>8.4f} {m['pr_auc']:>8.4f}")
    g = metrics["global"]
    lines.append(f"{'global, multi-level multi-scale':<34} {g['roc_auc']:>8.4f} {g['pr_auc']:>8.4f}")
    if "accuracy" in g:
        lines.append(f"global accuracy: {g['accuracy']:.4f}")
    best = best_local_scale(metrics["local"])
    if g.get("groups"):
        lines += ["", f"{'tag group':<14} {'local ' + best if best else '':>10} {'global':>8}   (mean per-tag ROC-AUC)"]
        for grp, v in g["groups"].items():
            lv = f"{_fmt(metrics['local'][best]['groups'].get(grp)):>10}" if best else " " * 10
            lines.append(f"{grp:<14} {lv} {_fmt(v):>8}")
    return "\n".join(lines)


def evaluation_text(result: dict, model_name: str) -> str:
    """A plain-text summary of :func:`~tagstack.evaluation.assess.evaluate_model`'s result (``tagstack evaluate``)."""
    lo, hi = result["roc_auc_ci"]
    ci = f" (95% CI {lo:.4f}-{hi:.4f})" if lo is not None else ""
    lines = [
        f"{model_name} on {result['root']} ({result['subset']}: {result['clips']} clips"
        + (f", {len(result['skipped'])} skipped" if result["skipped"] else "")
        + ")",
        f"  macro ROC-AUC {result['roc_auc']:.4f}{ci}, macro PR-AUC {result['pr_auc']:.4f}, "
        f"over {result['n_tags_evaluated']} of {len(result['tags'])} shared tags",
    ]
    return "\n".join(lines)


def evaluation_figure(result: dict, path: Path, *, model_name: str) -> bool:
    """Per-tag ROC-AUC (bars, best first) and PR-AUC (dots) of :func:`~tagstack.evaluation.assess.evaluate_model`'s
    result (on the subset it scored: test, valid or train), with both macro averages as dashed lines, as a PNG at
    ``path``; False (nothing written) when no tag has both classes in that subset, so none has a score."""
    scored = sorted(((t, s["roc_auc"], s["pr_auc"]) for t, s in result["per_tag"].items() if s["roc_auc"] is not None), key=lambda r: -r[1])
    if not scored:
        return False
    plt = plt_module()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(scored) + 2), 4.5))
    x = np.arange(len(scored))
    ax.bar(x, [r[1] for r in scored], color="tab:blue", label="ROC-AUC")
    ax.plot(x, [r[2] for r in scored], "o", color="tab:orange", ms=3.5, label="PR-AUC")
    ax.axhline(result["roc_auc"], color="tab:blue", ls="--", lw=1, label=f"macro ROC-AUC {result['roc_auc']:.3f}")
    ax.axhline(result["pr_auc"], color="tab:orange", ls="--", lw=1, label=f"macro PR-AUC {result['pr_auc']:.3f}")
    ax.axhline(0.5, color="grey", lw=0.6)  # ROC-AUC of chance
    ax.set_xticks(x, [_printable(r[0]) for r in scored], rotation=75, fontsize=7)
    ax.set_xlim(-0.7, len(scored) - 0.3)
    ax.set_ylim(0, 1)
    where = _printable("/".join(Path(result["root"]).parts[-2:]))  # the dataset's folder, and its manifest if one was named
    ax.set_ylabel(f"{result['subset']} score")
    ax.set_title(f"{_printable(model_name)} on {where} ({result['subset']}: {result['clips']} clips)", pad=24)
    ax.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    save_figure(fig, path)
    return True


def model_summary(meta: dict, path: str) -> str:
    """A short human description of a model file's header (``tagstack info``)."""
    info = meta.get("info", {})
    test = info.get("test", {})
    g = meta.get("global")
    lines = [
        f"model: {path}",
        f"tags ({len(meta['tags'])}, {meta['task']}): {', '.join(meta['tags'][:12])}{' ...' if len(meta['tags']) > 12 else ''}",
        "local networks: " + "; ".join(f"{n} ({e['kind']})" for n, e in meta["networks"].items()),
        f"scales (network/segment frames): {', '.join(_branch_name(b) for b in meta['branches'])}; "
        f"features: {meta['feature_layout'][-1]['stop'] if meta['feature_layout'] else 0}",
        "global classifier: "
        + (
            f"none (tags: the own outputs of {meta['tags_from']})"
            if g is None and meta.get("tags_from")
            else "none (embedding only)"
            if g is None
            else f"{g['n_hidden_layers']} x {g['hidden']} units on {g['n_features']} features"
            + f" (scales {', '.join(meta['scales'])}, layers {meta['layers'] or 'all'})"
        ),
        "front ends: "
        + "; ".join(f"{fe['sample_rate']} Hz, {fe['n_mels']} mels{' in dB' if fe.get('decibels') else ''}" for fe in _frontends(meta))
        + f"; windows of {meta['frontend']['clip_seconds']} s",
    ]
    if isinstance(info.get("source"), dict):
        lines.append(f"converted from: {info['source'].get('where', '')}; licence: {str(info.get('licence', '')).split('.')[0]}")
    if meta.get("tag_groups"):
        sizes: dict[str, int] = {}
        for t in meta["tags"]:
            group = meta["tag_groups"].get(t, UNGROUPED)
            sizes[group] = sizes.get(group, 0) + 1
        lines.append("tag groups (--per-group): " + ", ".join(f"{g} ({n})" for g, n in sizes.items()))
    if info.get("dataset"):
        data = info.get("data") if isinstance(info.get("data"), str) else ""
        lines.append(f"trained on: {info['dataset']}" + (f" ({data.split('. ')[0].rstrip('.')})" if data else ""))
    if info.get("name"):
        lines.append(f"model card: {info['name']}.md beside the shipped model files")
    if test.get("roc_auc") is not None:
        lines.append(f"test: ROC-AUC {test['roc_auc']:.4f}, PR-AUC {_fmt(test.get('pr_auc'))}")
    lines.append("(--json for the whole header)")
    return "\n".join(lines)


def _branch_name(b: dict) -> str:
    return b["network"] if b["network"] == str(b["frames"]) else f"{b['network']}/{b['frames']}"


def _frontends(meta: dict) -> list[dict]:
    """The distinct front ends a header's branches read."""
    out: list[dict] = []
    for b in meta["branches"]:
        fe = meta["networks"][b["network"]].get("frontend", meta["frontend"])
        if fe not in out:
            out.append(fe)
    return out


# ------------------------------------------------------------ model cards


def frontend_text(fe: FrontEndConfig) -> str:
    """One sentence on what a front end computes, for a model card."""
    bands = f"{fe.n_mels} {'HTK' if fe.mel_scale == 'htk' else 'Slaney'} mel bands" + (f" up to {fe.f_max:g} Hz" if fe.f_max else "")
    scale = "in decibels, 10 log10(max(mel, 1e-10))" if fe.decibels else f"{'log10' if fe.log10 else 'ln'}(1 + {fe.compression:g} mel)"
    return (
        f"{fe.sample_rate} Hz, {fe.n_fft}-point FFT, hop {fe.hop_length}, {'reflect' if fe.pad_mode == 'reflect' else 'zero'}-padded "
        f"centred frames, {bands} of the {'power' if fe.power == 2 else 'magnitude'} spectrum, {scale}."
    )


def backbone_card(name: str, model) -> str:
    """The Markdown card of a converted pretrained network: what it is, where it came from, licence, training data."""
    info, net = model.info, next(iter(model.local_models.values()))
    fe = net.frontend
    levels = ", ".join(f"{i.get('name', 'layer ' + str(i['layer']))} ({i['channels']})" for i in net.feature_info)
    lines = [
        f"# Model card: {name}",
        "",
        f"A pretrained {net.kind} network, converted to tagstack's format by `scripts/convert_pretrained.py`; "
        "nothing was trained here. Its weights are the original float32 values.",
        "",
        "## What it computes",
        "",
        f"Front end: {frontend_text(fe)} "
        f"Levels read by the paper's aggregation: {levels}. Scales (segment lengths, frames): "
        f"{', '.join(str(b.frames) for b in model.branches)}.",
        (
            "Tags: its own " + str(len(model.tags)) + " outputs, averaged over the segments: " + ", ".join(model.tags) + "."
            if model.tags_from
            else "It has no tag outputs: it embeds, and serves as a local network for a global classifier."
        ),
        "",
        "## Source",
        "",
        f"{info['source']['where']}, {info['source']['file']}; sha256: "
        + ", ".join(f"{k} {v}" for k, v in info["source"]["sha256"].items())
        + ".",
        "",
        "## Training data (by its authors)",
        "",
        info["data"],
        "",
        "It was trained on copyrighted audio previews; its weights are shipped under the licence below, for research use.",
        "",
        "## Licence",
        "",
        info["licence"],
        "",
        "## Citation",
        "",
        info["citation"],
        "",
        "## Exactness",
        "",
        "`tests/test_pretrained.py` checks this port against outputs of the original code on the same inputs "
        f"({info.get('reference', '`bench/reference_pretrained.py`, run once with TensorFlow / Keras')}; fixtures in "
        "`tests/fixtures/pretrained/`).",
        "",
    ]
    return "\n".join(lines)


def model_card(
    name: str, *, data: str, command: str, config, metrics: dict, transfer_md: str = "", transfer_doc: str = "docs/transfer/README.md"
) -> str:
    """The Markdown card of a shipped model: data and licences, how it was trained, test scores per tag, transfer."""
    g, n = metrics["global"], metrics["n_clips"]
    loc, glo = config.local, config.global_
    paper = all(s.isdigit() for s in config.scales)
    networks = (
        "The paper's local CNNs (" + ", ".join(config.scales) + " frames)"
        if paper
        else "Local networks taken from "
        + ", ".join(f"`{x}`" for x in config.local_from)
        + " at the scales "
        + ", ".join(config.scales)
        + " (network/segment frames), not trained here"
    )
    lines = [
        f"# Model card: {name}",
        "",
        f"{networks}, every level aggregated as the paper does, and a global MLP (2 x {config.global_hidden} units). "
        + (
            "Weights are stored as float16 (normalisation statistics in float32)."
            if paper
            else "Weights are stored as float32 (the pretrained networks' as their authors published them)."
        ),
        "",
        "## Data",
        "",
        data,
        "",
        f"{sum(n.values())} clips: {n['train']} train / {n['valid']} validation / {n['test']} test; {len(metrics['tags'])} tags. "
        f"Files skipped when building the mel cache: {len(metrics['skipped_files'])}.",
        "",
        "## Training",
        "",
        f"    {command}",
        "",
        (
            f"Local CNNs: at most {loc.max_epochs} epochs, learning rate {loc.lr:g} multiplied by {loc.lr_decay:g} "
            f"{loc.lr_stages - 1} time(s) after {loc.patience} epochs without improvement, batches of {loc.batch_size} segments"
            + (f", mixed in pairs (mixup, weights ~ Beta({loc.mixup:g}, {loc.mixup:g}))" if loc.mixup else "")
            + ". "
            if paper
            else ""
        )
        + f"Global MLP: at most {glo.max_epochs} epochs, {glo.lr_stages} learning rates from {glo.lr:g}, patience {glo.patience}, "
        f"batches of {glo.batch_size} clips, monitoring validation ROC-AUC.",
        "",
        "## Test scores",
        "",
        f"Macro ROC-AUC {g['roc_auc']:.4f} (95% bootstrap CI {g['roc_auc_ci95'][0]:.4f}-{g['roc_auc_ci95'][1]:.4f}), "
        f"macro PR-AUC {g['pr_auc']:.4f}, over the {g['n_tags_evaluated']} tags with positives and negatives in the test split"
        + (" (soft labels count as positive from 0.5; a tag's unknown labels are left out of its scores)." if "real" in name else "."),
        "",
        *(
            []
            if metrics["local"]
            else [
                "The local CNNs' own outputs are not this model's tags (they were trained on other "
                "labels as well, or on another dataset), so only the global model is scored.",
                "",
            ]
        ),
        "| model | ROC-AUC | PR-AUC |",
        "|---|---|---|",
        *[f"| local {s}{' frames' if s.isdigit() else ''} | {m['roc_auc']:.4f} | {m['pr_auc']:.4f} |" for s, m in metrics["local"].items()],
        f"| global | {g['roc_auc']:.4f} | {g['pr_auc']:.4f} |",
        "",
        "| tag | ROC-AUC | PR-AUC |",
        "|---|---|---|",
        *[f"| {t} | {_fmt(r)} | {_fmt(p)} |" for t, r, p in zip(metrics["tags"], g["per_tag"]["roc_auc"], g["per_tag"]["pr_auc"])],
        "",
    ]
    if transfer_md:
        lines += [
            "## Transfer to real recordings (linear probe)",
            "",
            f"Measured by `bench/bench_transfer.py` (its command: {transfer_doc}):",
            "",
            transfer_md.strip(),
            "",
        ]
    return "\n".join(lines)


def _fmt(v) -> str:
    return "–" if v is None or v != v else f"{v:.4f}"
