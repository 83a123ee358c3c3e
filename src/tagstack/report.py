"""The run report: a short Markdown file and the plots it shows."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .datasets import ClipSet
from .fileio import atomic_write, atomic_write_text


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure atomically and close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"), suffix=".png")
    _plt().close(fig)


def plot_curves(run_dir: Path, out: Path) -> None:
    """Validation loss and ROC-AUC per epoch of every trained network."""
    plt = _plt()
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


def plot_per_tag(tags: list[str], series: dict[str, list[float]], out: Path, *, title: str) -> None:
    """Per-tag ROC-AUC bars of several models, tags sorted by the last series."""
    plt = _plt()
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


def write_report(run_dir: Path, metrics: dict, clips: ClipSet) -> None:
    """``report.md`` and ``plots/*.png`` of a finished three-stage run."""
    plots = run_dir / "plots"
    plot_curves(run_dir, plots / "curves.png")
    best_local = max(metrics["local"], key=lambda s: metrics["local"][s]["roc_auc"])
    plot_per_tag(clips.tags, {f"local {best_local} frames": metrics["local"][best_local]["per_tag"]["roc_auc"],
                              "global": metrics["global"]["per_tag"]["roc_auc"]},
                 plots / "per_tag_roc_auc.png", title="Per-tag test ROC-AUC, best local model vs global model")
    g = metrics["global"]
    lines = [f"# tagstack run: {metrics['dataset']}", "",
             f"Clips: {metrics['n_clips']['train']} train, {metrics['n_clips']['valid']} validation, {metrics['n_clips']['test']} test; "
             f"{len(clips.tags)} tags. Skipped files: {len(metrics['skipped_files'])}. Configuration: `config.toml`.", "",
             "## Test scores", "", "| model | ROC-AUC | PR-AUC |", "|---|---|---|"]
    for s, m in metrics["local"].items():
        lines.append(f"| local, {s} frames | {m['roc_auc']:.4f} | {m['pr_auc']:.4f} |")
    lo, hi = g["roc_auc_ci95"]
    lines.append(f"| global, multi-level multi-scale | {g['roc_auc']:.4f} (95% CI {lo:.4f}–{hi:.4f}) | {g['pr_auc']:.4f} |")
    if "accuracy" in g:
        lines += ["", f"Global accuracy: {g['accuracy']:.4f}"]
    if g.get("groups"):
        lines += ["", "## Mean ROC-AUC per tag group", "", f"| group | local {best_local} | global |", "|---|---|---|"]
        for grp, v in g["groups"].items():
            lines.append(f"| {grp} | {metrics['local'][best_local]['groups'].get(grp, float('nan')):.4f} | {v:.4f} |")
    lines += ["", "## Per-tag ROC-AUC", "", "![per-tag](plots/per_tag_roc_auc.png)", "",
              f"| tag | group | local {best_local} | global |", "|---|---|---|---|"]
    for j, t in enumerate(clips.tags):
        lv = metrics["local"][best_local]["per_tag"]["roc_auc"][j]
        gv = g["per_tag"]["roc_auc"][j]
        lines.append(f"| {t} | {clips.groups.get(t, '')} | {lv:.4f} | {gv:.4f} |")
    lines += ["", "## Training curves", "", "![curves](plots/curves.png)", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(lines))
