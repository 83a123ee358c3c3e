"""The ``tagstack`` command: a thin layer over the Python API, one function per subcommand.

Every :class:`~tagstack.errors.TagstackError` becomes one line on stderr and
exit status 1; ``main(argv)`` can be called in-process (the tests do).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .config import PAPER_SCALES, ExperimentConfig, TrainConfig, load_config
from .errors import TagstackError


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA if available, else CPU), cpu, cuda, cuda:1 ... (default: auto)")


def _add_experiment(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="corpus", help="dataset adapter (see `tagstack datasets`; default: corpus)")
    g.add_argument("--root", default="", help="dataset folder (default for corpus: $TAGSTACK_HOME/corpus/default)")
    g.add_argument("--split", default="", help="split scheme: mtat lee|full, gtzan fault-filtered|kfold-K-N (default: the paper's)")
    g.add_argument("--split-dir", default="", help="folder of the published split/label files, when not under --root")
    g.add_argument("--merge-synonyms", action="store_true", help="MagnaTagATune full split: merge synonymous tags (female/woman ...)")
    g.add_argument("--cache-dir", default="", help="mel cache folder (default: $TAGSTACK_HOME/mels)")
    g.add_argument("--workers", type=int, default=0, help="decoding processes (default: one per CPU core)")
    m = p.add_argument_group("model")
    m.add_argument("--scales", type=_ints, default=PAPER_SCALES, help="input sizes in frames, comma-separated (default: 18,27,54,108,216)")
    m.add_argument("--layers", type=_ints, default=None, help="conv layers fed to the global model, 1-based, comma-separated (default: all)")
    m.add_argument("--hidden", type=int, default=512, help="units of each global hidden layer: 512 or 1024 in the paper (default: 512)")
    t = p.add_argument_group("training")
    t.add_argument("--config", type=Path, help="a config.toml to run (the data, model and training flags are then ignored)")
    t.add_argument("--local-epochs", type=int, default=100, help="maximum epochs per local CNN (default: 100)")
    t.add_argument("--global-epochs", type=int, default=100, help="maximum epochs of the global classifier (default: 100)")
    t.add_argument("--lr-stages", type=int, default=4, help="learning rates tried (0.01, then x0.2 each; default: 4)")
    t.add_argument("--patience", type=int, default=3, help="epochs without improvement before the rate drops (default: 3)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    _add_device(p)


def config_from_args(a: argparse.Namespace) -> ExperimentConfig:
    """The experiment configuration the flags describe."""
    if a.config:
        return load_config(a.config)
    sched = dict(lr_stages=a.lr_stages, patience=a.patience, seed=a.seed)
    return ExperimentConfig(
        dataset=a.dataset, root=a.root, split=a.split, split_dir=a.split_dir, merge_synonyms=a.merge_synonyms, scales=a.scales, layers=a.layers, global_hidden=a.hidden,
        local=TrainConfig(batch_size=64, max_epochs=a.local_epochs, **sched),
        global_=TrainConfig(batch_size=16, max_epochs=a.global_epochs, monitor="roc_auc", **sched),
        cache_dir=a.cache_dir, workers=a.workers, device=a.device,
    )


def _print_metrics(metrics: dict) -> None:
    print(f"\n{'model':<34} {'ROC-AUC':>8} {'PR-AUC':>8}")
    for s, m in metrics["local"].items():
        print(f"{'local, ' + s + ' frames':<34} {m['roc_auc']:>8.4f} {m['pr_auc']:>8.4f}")
    g = metrics["global"]
    print(f"{'global, multi-level multi-scale':<34} {g['roc_auc']:>8.4f} {g['pr_auc']:>8.4f}")
    if "accuracy" in g:
        print(f"global accuracy: {g['accuracy']:.4f}")
    if g.get("groups"):
        best = max(metrics["local"], key=lambda s: metrics["local"][s]["roc_auc"])
        print(f"\n{'tag group':<14} {'local ' + best:>10} {'global':>8}   (mean per-tag ROC-AUC)")
        for grp, v in g["groups"].items():
            print(f"{grp:<14} {metrics['local'][best]['groups'].get(grp, float('nan')):>10.4f} {v:>8.4f}")


# ------------------------------------------------------------------ commands

def cmd_run(a: argparse.Namespace) -> int:
    from .pipeline import run_all

    metrics = run_all(config_from_args(a), a.out)
    _print_metrics(metrics)
    print(f"\nrun directory: {a.out} (report.md, metrics.json, model.safetensors, plots/)")
    return 0


def cmd_local(a: argparse.Namespace) -> int:
    from .pipeline import prepare, run_local

    cfg = config_from_args(a)
    run_local(cfg, Path(a.out), prepare(cfg))
    print(f"local CNNs in {Path(a.out) / '1-local'}")
    return 0


def cmd_aggregate(a: argparse.Namespace) -> int:
    from .pipeline import prepare, run_aggregate, run_local

    cfg = config_from_args(a)
    data = prepare(cfg)
    feats = run_aggregate(cfg, Path(a.out), data, run_local(cfg, Path(a.out), data))["features"]
    print(f"features {feats.shape} in {Path(a.out) / '2-aggregate'}")
    return 0


def cmd_global(a: argparse.Namespace) -> int:
    from .evaluation import evaluate
    from .pipeline import prepare, run_aggregate, run_global, run_local

    cfg = config_from_args(a)
    out = Path(a.out)
    data = prepare(cfg)
    models = run_local(cfg, out, data)
    feats = run_aggregate(cfg, out, data, models)["features"]
    name = "3-global" if a.scales == PAPER_SCALES and a.layers is None else f"3-global-s{'-'.join(map(str, a.scales))}-l{'-'.join(map(str, a.layers or ['all']))}"
    _, probs = run_global(cfg, out, data, feats, models, workdir=out / name)
    m = evaluate(data.clips.labels[data.clips.indices("test")], probs, task=data.clips.task)
    print(f"global model ({name}): test ROC-AUC {m['roc_auc']:.4f}, PR-AUC {m['pr_auc']:.4f}")
    return 0


def cmd_reproduce(a: argparse.Namespace) -> int:
    from .reproduce import reproduce

    if a.quick:
        a.local_epochs, a.global_epochs, a.lr_stages = min(a.local_epochs, 2), min(a.global_epochs, 20), 2
    cfg = config_from_args(a)
    joint = None if a.no_joint else TrainConfig(lr=0.001, batch_size=8, max_epochs=1 if a.quick else a.joint_epochs,
                                                lr_stages=2, patience=2, monitor="roc_auc", seed=a.seed)
    reproduce(cfg, a.out, seeds=a.seeds, local_from=a.local_from, joint=joint, n_boot=50 if a.quick else 200)
    print(f"tables, figures and report.md in {a.out}")
    return 0


def cmd_corpus(a: argparse.Namespace) -> int:
    from .corpus import build_corpus
    from .pipeline import tagstack_home

    out = a.out or tagstack_home() / "corpus" / a.size
    build_corpus(out, size=int(a.size) if a.size.isdigit() else a.size, seed=a.seed, workers=a.workers)
    print(f"corpus in {out}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=a.out, device=a.device, workers=a.workers)
    return 0


def cmd_datasets(a: argparse.Namespace) -> int:
    from .datasets import DATASETS

    for name, (_, desc) in DATASETS.items():
        print(f"{name:<12} {desc}")
    return 0


def cmd_tag(a: argparse.Namespace) -> int:
    from .tagcli import tag_files

    return tag_files(a)


def cmd_embed(a: argparse.Namespace) -> int:
    from .tagcli import embed_files

    return embed_files(a)


def cmd_info(a: argparse.Namespace) -> int:
    from .artifact import read_metadata
    from .inference import DEFAULT_MODEL

    meta = read_metadata(a.model or DEFAULT_MODEL)
    print(json.dumps(meta, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tagstack",
        description="Multi-level, multi-scale music auto-tagging (Lee & Nam, 2017): "
        "local CNNs (stage 1), feature aggregation (stage 2), global classifier (stage 3).",
    )
    p.add_argument("--version", action="version", version=f"tagstack {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser("demo", help="build the default corpus if missing, run all three stages on it, and tag a few test clips")
    d.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    d.add_argument("--workers", type=int, default=0, help="processes for rendering and decoding (default: one per core)")
    _add_device(d)
    d.set_defaults(func=cmd_demo)

    for name, func, text in (
        ("run", cmd_run, "run all three stages on a dataset into a run directory"),
        ("local", cmd_local, "stage 1: train the local CNNs (resumes an interrupted run)"),
        ("aggregate", cmd_aggregate, "stage 2: extract multi-level, multi-scale features with the trained CNNs"),
        ("global", cmd_global, "stage 3: train a global classifier on the chosen --scales/--layers of the features"),
    ):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("--out", required=True, help="run directory")
        _add_experiment(s)
        s.set_defaults(func=func)

    r = sub.add_parser("reproduce", help="the paper's Figs. 2-5, Tables I-II and joint fine-tuning as tables, figures and a report",
                       description="Train the local CNNs once, extract features once, then train one global model per "
                       "ablation (Figs. 2-5), compare with the published numbers (Table II), optionally on CNNs from "
                       "another run (--local-from: Table I, transfer learning), and fine-tune the whole model end to end.")
    r.add_argument("--out", required=True, help="run directory")
    r.add_argument("--quick", action="store_true", help="a few minutes: 2 local epochs, 20 global epochs, 1 joint epoch")
    r.add_argument("--seeds", type=_ints, default=(0,), help="seeds of the global models, e.g. 0,1,2 (default: 0)")
    r.add_argument("--local-from", type=Path, help="model file whose local CNNs to use (transfer learning) instead of training them here")
    r.add_argument("--joint-epochs", type=int, default=3, help="epochs of joint fine-tuning (default: 3)")
    r.add_argument("--no-joint", action="store_true", help="skip joint fine-tuning")
    _add_experiment(r)
    r.set_defaults(func=cmd_reproduce, local_epochs=20)

    c = sub.add_parser("corpus", help="build the score-rendered corpus (tiny, default, large, or N clips per style)")
    c.add_argument("action", choices=["build"])
    c.add_argument("--size", default="default", help="tiny (3 clips per style), default (100), large (400), or a number (default: default)")
    c.add_argument("--out", type=Path, help="corpus folder (default: $TAGSTACK_HOME/corpus/SIZE)")
    c.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    c.add_argument("--workers", type=int, default=0, help="rendering processes (default: one per core)")
    c.set_defaults(func=cmd_corpus)

    sub.add_parser("datasets", help="list the dataset adapters").set_defaults(func=cmd_datasets)

    t = sub.add_parser("tag", help="tag audio files, folders (recursively) or globs")
    t.add_argument("paths", nargs="+", help="audio files, folders or glob patterns")
    t.add_argument("--model", type=Path, help="model file (default: the model shipped with tagstack)")
    t.add_argument("--top-k", type=int, default=5, help="tags per file (default: 5; 0 for all)")
    t.add_argument("--threshold", type=float, help="report every tag with probability >= this instead of the top k")
    t.add_argument("--format", choices=["table", "jsonl", "csv"], default="table", help="output format (default: table)")
    t.add_argument("--output", "-o", type=Path, help="write to this file instead of standard output")
    t.add_argument("--taggram", type=Path, metavar="DIR", help="also write each file's taggram (tags per 29.1 s window) as .npy/.csv and .png into DIR")
    t.add_argument("--hop", type=float, metavar="SECONDS",
                   help="seconds between the starts of taggram windows (default: the clip length, back to back; "
                        "e.g. 5 for overlapping windows every 5 s, at one network pass per window)")
    _add_device(t)
    t.set_defaults(func=cmd_tag)

    e = sub.add_parser("embed", help="multi-level, multi-scale feature vectors of audio files")
    e.add_argument("paths", nargs="+", help="audio files, folders or glob patterns")
    e.add_argument("--out", "-o", type=Path, required=True, help="output .npy (with a .txt list of files beside it) or .parquet")
    e.add_argument("--model", type=Path, help="model file (default: the model shipped with tagstack)")
    e.add_argument("--scales", type=_ints, help="input sizes to keep, comma-separated, e.g. 27,54 (default: all)")
    e.add_argument("--layers", type=_ints, help="conv layers to keep, 1-based, comma-separated, e.g. 3,4 (default: all)")
    _add_device(e)
    e.set_defaults(func=cmd_embed)

    i = sub.add_parser("info", help="print a model file's description (tags, front end, architecture, scores)")
    i.add_argument("model", nargs="?", type=Path, help="model file (default: the shipped model)")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TagstackError as e:
        print(f"tagstack: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tagstack: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
