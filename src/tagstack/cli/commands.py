"""What each ``tagstack`` subcommand does: a few lines over the Python API, one function per subcommand.

The flags they read are defined in :mod:`.parser`; a ``TagstackError`` raised here is one line on stderr and exit
status 1 (:mod:`.main`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..config import global_schedule, joint_schedule, local_schedule
from ..errors import ParameterError, TagstackError
from ..experiments.experiment_config import ExperimentConfig, load_config
from ..service.limits import ServiceLimits


def config_from_args(a: argparse.Namespace) -> ExperimentConfig:
    """The experiment configuration the flags describe."""
    if a.config:  # its own device, unless --device names another (a run written on a GPU machine, rerun on a CPU)
        config = load_config(a.config)
        return config if a.device is None else config.replace(device=a.device)
    sched = dict(lr_stages=a.lr_stages, patience=a.patience, seed=a.seed)
    extra = {}
    if getattr(a, "seeds", None) is not None:  # reproduce
        extra = dict(seeds=a.seeds, joint=None if a.no_joint else joint_schedule(max_epochs=a.joint_epochs, seed=a.seed))
    return ExperimentConfig(
        dataset=a.dataset,
        root=a.root,
        split=a.split,
        split_dir=a.split_dir,
        merge_synonyms=a.merge_synonyms,
        scales=a.scales,
        layers=a.layers,
        global_hidden=a.hidden,
        local_from=a.local_from,
        local=local_schedule(max_epochs=a.local_epochs, mixup=a.mixup, **sched),
        global_=global_schedule(max_epochs=a.global_epochs, clip_norm=a.clip_norm, warmup_epochs=a.warmup_epochs, **sched),
        cache_dir=a.cache_dir,
        workers=a.workers,
        device=a.device or "auto",
        engine=a.engine,
        ray_address=a.ray_address,
        **extra,
    )


def cmd_run(a: argparse.Namespace) -> int:
    from ..experiments.run import run_experiment
    from ..report import metrics_table

    print(metrics_table(run_experiment(config_from_args(a), a.out)))
    print(f"\nrun directory: {a.out} (report.md, metrics.json, model.safetensors, plots/)")
    return 0


def cmd_local(a: argparse.Namespace) -> int:
    from ..experiments.run import Experiment

    Experiment(config_from_args(a), a.out).local_models()
    print(f"local CNNs in {Path(a.out) / '1-local'}")
    return 0


def cmd_aggregate(a: argparse.Namespace) -> int:
    from ..experiments.run import Experiment

    feats = Experiment(config_from_args(a), a.out).features()["features"]
    print(f"features {feats.shape} in {Path(a.out) / '2-aggregate'}")
    return 0


def cmd_global(a: argparse.Namespace) -> int:
    from ..experiments.run import Experiment

    name, m = Experiment(config_from_args(a), a.out).global_model(scales=a.scales, layers=a.layers)
    print(f"global model ({name}): test ROC-AUC {m['roc_auc']:.4f}, PR-AUC {m['pr_auc']:.4f}")
    return 0


def cmd_reproduce(a: argparse.Namespace) -> int:
    from ..experiments.experiment_config import quick
    from ..experiments.reproduce import reproduce

    cfg = config_from_args(a)
    reproduce(quick(cfg) if a.quick else cfg, a.out)
    print(f"tables, figures and report.md in {a.out}")
    return 0


def cmd_corpus(a: argparse.Namespace) -> int:
    from ..corpus import build_corpus, default_folder
    from ..corpus.performance import parse_performance
    from ..corpus.production import parse_effects

    production, performance = parse_effects(a.produce), parse_performance(a.perform)
    out = a.out or default_folder(a.size, performance=performance, production=production, soundfont=a.soundfont)
    build_corpus(
        out,
        size=int(a.size) if a.size.isdigit() else a.size,
        seed=a.seed,
        workers=a.workers,
        production=production,
        soundfont=a.soundfont,
        performance=performance,
    )
    print(f"corpus in {out}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from ..experiments.demo import run_demo

    run_demo(out=a.out, device=a.device, workers=a.workers)
    return 0


def cmd_datasets(a: argparse.Namespace) -> int:
    from ..datasets import DATASETS

    for name, adapter in DATASETS.items():
        print(f"{name:<12} {adapter.description}")
    return 0


def _print_skipped(skipped) -> None:
    """One stderr line per (path, reason) a job could not use; the reason names the file when it already does."""
    for path, reason in skipped:
        print(f"tagstack: skipped {reason if reason.startswith(path) else f'{path}: {reason}'}", file=sys.stderr)


def _on_ray(a: argparse.Namespace, out: Path | None, *, embed: bool, taggram_dir: Path | None = None, hop: float | None = None) -> int:
    """``--engine ray``: the job on a Ray cluster, into a folder of Parquet shards."""
    from ..distributed.ray_batch import run_on_ray
    from ..inference.outputs import audio_files

    if out is None:
        raise ParameterError("--engine ray writes a folder of Parquet shards: give it with -o DIR")
    report = run_on_ray(
        audio_files(a.paths),
        out,
        model=a.model,
        address=a.ray_address,
        workers=a.workers or None,
        device=a.device,
        embed=embed,
        taggram_dir=taggram_dir,
        hop=hop,
        decode_tasks={"auto": None, "tasks": True, "workers": False}[a.decode_in],
    )
    _print_skipped(report.failed)
    print(
        f"{report.done} files done in this run, {report.reused} already done before, {len(report.failed)} failed; "
        f"results in {out}/tags-*.parquet, failures in {out}/failures-*.parquet",
        file=sys.stderr,
    )
    return report.exit_status


def _refuse_ray_flags(a: argparse.Namespace) -> None:
    """The local engine has no use for the Ray flags: say so rather than ignore them."""
    given = [
        flag for flag, on in (("--ray-address", a.ray_address), ("--workers", a.workers), ("--decode-in", a.decode_in != "auto")) if on
    ]
    if given:
        raise ParameterError(f"{', '.join(given)}: for --engine ray only (the local engine uses this machine's cores)")


def cmd_tag(a: argparse.Namespace) -> int:
    from ..inference.outputs import tag_files

    if a.engine == "ray":
        if a.format != "table":
            raise ParameterError("--engine ray writes Parquet (path, seconds, one column per tag); --format is for the local engine")
        if a.per_group:
            raise ParameterError("--engine ray writes every tag's probability; --per-group is for the local engine")
        return _on_ray(a, a.output, embed=False, taggram_dir=a.taggram, hop=a.hop)
    _refuse_ray_flags(a)
    return tag_files(
        a.paths,
        model=a.model,
        device=a.device,
        top_k=a.top_k,
        threshold=a.threshold,
        fmt=a.format,
        output=a.output,
        taggram_dir=a.taggram,
        hop=a.hop,
        per_group=a.per_group,
        force=a.force,
    ).exit_status


def cmd_embed(a: argparse.Namespace) -> int:
    from ..inference.outputs import embed_files

    if a.engine == "ray":
        if a.scales or a.layers:
            raise ParameterError(
                "--engine ray stores the whole embedding; choose --scales/--layers when reading it (TaggingModel.columns_of)"
            )
        return _on_ray(a, a.out, embed=True)
    _refuse_ray_flags(a)
    return embed_files(a.paths, a.out, model=a.model, device=a.device, scales=a.scales, layers=a.layers, force=a.force).exit_status


def cmd_info(a: argparse.Namespace) -> int:
    from ..models.zoo import DEFAULT, ZOO, resolve_model, zoo_path

    if a.list:  # names and sizes only: no file is read, so torch is not imported
        for name, text in ZOO.items():
            size = zoo_path(name).stat().st_size / 1e6 if zoo_path(name).is_file() else 0
            print(f"{name:<18} {size:5.1f} MB  {text}{'  (the default)' if name == DEFAULT else ''}")
        return 0
    from ..models.file import read_metadata  # validates the header by building its networks on torch's meta device
    from ..report import model_summary

    path = resolve_model(a.model)
    meta = read_metadata(path)
    print(json.dumps(meta, indent=2) if a.json else model_summary(meta, str(path)))
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from ..evaluation.assess import evaluate_model
    from ..fileio import atomic_write_json
    from ..inference.outputs import check_destination
    from ..models.zoo import DEFAULT
    from ..report import evaluation_figure, evaluation_text

    for flag, path, suffix in (("--json", a.json, ".json"), ("--plot", a.plot, ".png")):
        if path is not None:
            if path.suffix.lower() != suffix:  # the dataset's own label files (a manifest, tag_groups.csv ...) never are
                raise ParameterError(f"{flag} {path}: the name must end in {suffix} (it is written as {suffix[1:].upper()})")
            check_destination(path)
    result = evaluate_model(
        a.model, a.dataset, root=a.root, scheme=a.split, subset=a.subset, device=a.device, split_dir=a.split_dir, merge=a.merge_synonyms
    )
    _print_skipped(result["skipped"])
    print(evaluation_text(result, str(a.model or "the default model")))
    model = str(a.model or DEFAULT)
    if a.json is not None:
        atomic_write_json(a.json, {"model": model, **result})
    if a.plot is not None and not evaluation_figure(result, a.plot, model_name=model):
        logging.getLogger("tagstack").warning("--plot %s: not drawn, since no tag has both classes in this split", a.plot)
    return 1 if result["skipped"] else 0


def cmd_serve(a: argparse.Namespace) -> int:
    try:
        from ..service.app import serve
    except ImportError as e:
        raise TagstackError(f"tagstack serve needs the web stack: pip install 'tagstack[serve]' ({e.name} is missing)") from None
    serve(
        a.model,
        host=a.host,
        port=a.port,
        device=a.device,
        upload_dir=a.upload_dir,
        limits=ServiceLimits(
            max_upload_mb=a.max_upload_mb,
            max_seconds=a.max_seconds,
            concurrency=a.concurrency,
            max_uploads=a.max_uploads,
            upload_timeout=a.upload_timeout,
            min_upload_kbps=a.min_upload_kbps,
            header_timeout=a.header_timeout,
            shutdown_timeout=a.shutdown_timeout,
        ),
    )
    return 0


__all__ = [
    "config_from_args",
    "cmd_run",
    "cmd_local",
    "cmd_aggregate",
    "cmd_global",
    "cmd_reproduce",
    "cmd_corpus",
    "cmd_demo",
    "cmd_datasets",
    "cmd_tag",
    "cmd_embed",
    "cmd_info",
    "cmd_evaluate",
    "cmd_serve",
]
