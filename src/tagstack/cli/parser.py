"""The ``tagstack`` command line's flags: one function per subcommand, each number checked where it is parsed.

A flag's range is its one range in :mod:`tagstack.checks` (the same for the
service, Ray and Python), and the training flags' defaults are the
configuration dataclasses' own. What a subcommand then does is in
:mod:`.commands`. Building the parser imports no torch, so ``--help`` and a
usage error answer at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from .. import checks
from ..checks import Range
from ..config import joint_schedule
from ..errors import ParameterError
from ..experiments.experiment_config import ExperimentConfig
from ..service.limits import ServiceLimits
from .commands import (
    cmd_run,
    cmd_local,
    cmd_aggregate,
    cmd_global,
    cmd_reproduce,
    cmd_corpus,
    cmd_demo,
    cmd_datasets,
    cmd_tag,
    cmd_embed,
    cmd_info,
    cmd_evaluate,
    cmd_serve,
)

MODEL_HELP = "model file, or a shipped model's name (default: pretrained; list them: tagstack info --list)"


def _names(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _number(r: Range):
    """An argparse type: the flag's text as a number checked against ``r``, the one range of that option (:mod:`tagstack.checks`)."""

    def parse(text: str):
        try:
            return r.parse(text)
        except ParameterError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = r.name
    return parse


def _numbers(r: Range):
    """An argparse type: comma-separated numbers, each checked against ``r``."""
    one = _number(r)

    def parse(text: str) -> tuple:
        return tuple(one(t.strip()) for t in text.split(",") if t.strip())

    parse.__name__ = r.name
    return parse


class UsageError(Exception):
    """A command line argparse cannot read: :func:`main` prints it as one line and returns 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (and exit status 2) instead of the usage text and the error."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _add_engine(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distributed (Ray)")
    g.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local (this process, default) or ray: Ray workers that each load the model once, writing Parquet shards "
        "into the output folder; a rerun skips files already done (needs the ray extra)",
    )
    g.add_argument(
        "--ray-address", metavar="ADDRESS", help="an existing Ray cluster: auto, or host:6379 (default: start Ray on this machine)"
    )
    g.add_argument(
        "--workers",
        type=_number(checks.WORKERS),
        default=0,
        help="Ray workers (default: one per CPU of the cluster, or one per GPU when it has GPUs)",
    )
    g.add_argument(
        "--decode-in",
        choices=["auto", "tasks", "workers"],
        default="auto",
        help="where Ray decodes the files: in CPU tasks that feed the workers decoded audio, or in the workers "
        "themselves (default auto: tasks when the workers use GPUs, else workers)",
    )


def _add_device(p: argparse.ArgumentParser, *, default: str | None = "auto") -> None:
    p.add_argument(
        "--device",
        default=default,
        help="torch device: auto (CUDA if available, else CPU), cpu, cuda, cuda:1 ... (default: auto"
        + (", or with --config the file's)" if default is None else ")"),
    )


def _add_experiment(p: argparse.ArgumentParser) -> None:
    defaults = ExperimentConfig()  # every training default has one home: the configuration dataclasses
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="corpus", help="dataset adapter (see `tagstack datasets`; default: corpus)")
    g.add_argument("--root", default="", help="dataset folder (default for corpus: $TAGSTACK_HOME/corpus/default)")
    g.add_argument(
        "--split",
        default="",
        help="split scheme: mtat lee|full, gtzan fault-filtered|kfold-K-N, jamendo 0-4 (default: the paper's, jamendo 0)",
    )
    g.add_argument("--split-dir", default="", help="folder of the published split/label files, when not under --root")
    g.add_argument("--merge-synonyms", action="store_true", help="MagnaTagATune full split: merge synonymous tags (female/woman ...)")
    g.add_argument("--cache-dir", default="", help="mel cache folder (default: $TAGSTACK_HOME/mels)")
    g.add_argument("--workers", type=_number(checks.WORKERS), default=0, help="decoding processes (default: one per CPU core)")
    g.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="where the mel cache decodes clips: local processes (default) or ray workers (needs the ray extra)",
    )
    g.add_argument(
        "--ray-address",
        default="",
        metavar="ADDRESS",
        help="with --engine ray: an existing cluster, auto or host:6379 (default: start Ray here)",
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--scales",
        type=_names,
        default=defaults.scales,
        help="scales, comma-separated: paper CNN sizes in frames (trained here), or branches of --local-from's networks "
        "as they are named or as network/frames, e.g. musicnn-msd/187,artist/258 (default: 18,27,54,108,216)",
    )
    m.add_argument(
        "--layers",
        type=_numbers(checks.LAYER),
        default=None,
        help="levels fed to the global model, 1-based, comma-separated (default: all)",
    )
    m.add_argument(
        "--hidden",
        type=_number(checks.HIDDEN),
        default=defaults.global_hidden,
        help=f"units of each global hidden layer: 512 or 1024 in the paper (default: {defaults.global_hidden})",
    )
    m.add_argument(
        "--local-from",
        type=_names,
        default=(),
        metavar="MODELS",
        help="model files or shipped models (musicnn-msd, musicnn-mtt, artist, real ...), comma-separated, whose local "
        "networks to use instead of training them: transfer learning and pretrained backbones (`tagstack info --list`)",
    )
    t = p.add_argument_group("training")
    t.add_argument(
        "--config", type=Path, help="a config.toml to run (the data, model and training flags are then ignored; --device applies)"
    )
    d, g = defaults.local, defaults.global_
    t.add_argument(
        "--local-epochs", type=_number(checks.EPOCHS), default=d.max_epochs, help=f"maximum epochs per local CNN (default: {d.max_epochs})"
    )
    t.add_argument(
        "--global-epochs",
        type=_number(checks.EPOCHS),
        default=g.max_epochs,
        help=f"maximum epochs of the global classifier (default: {g.max_epochs})",
    )
    t.add_argument(
        "--lr-stages",
        type=_number(checks.LR_STAGES),
        default=d.lr_stages,
        help=f"learning rates tried ({d.lr:g}, then x{d.lr_decay:g} each; default: {d.lr_stages})",
    )
    t.add_argument(
        "--patience",
        type=_number(checks.PATIENCE),
        default=d.patience,
        help=f"epochs without improvement before the rate drops (default: {d.patience})",
    )
    t.add_argument("--seed", type=_number(checks.SEED), default=d.seed, help=f"random seed (default: {d.seed})")
    t.add_argument(
        "--mixup",
        type=_number(checks.MIXUP),
        default=0.0,
        metavar="ALPHA",
        help="mix the local CNNs' training segments and labels in pairs, weights ~ Beta(ALPHA, ALPHA) (default: 0, never, as the authors)",
    )
    t.add_argument(
        "--clip-norm",
        type=_number(checks.CLIP_NORM),
        default=0.0,
        help="clip the global classifier's gradients to this L2 norm (default: 0, never, as the authors)",
    )
    t.add_argument(
        "--warmup-epochs",
        type=_number(checks.WARMUP_EPOCHS),
        default=0,
        help="reach the global classifier's first learning rate linearly over this many epochs (default: 0, as the authors); "
        "--warmup-epochs 3 --clip-norm 1 steadies it, see docs/stability",
    )
    _add_device(p, default=None)  # None: not given, so that --config keeps the file's device


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tagstack",
        description="Multi-level, multi-scale music auto-tagging (Lee & Nam, 2017): "
        "local CNNs (stage 1), feature aggregation (stage 2), global classifier (stage 3).",
    )
    p.add_argument("--version", action="version", version=f"tagstack {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _demo(sub)
    _stages(sub)
    _reproduce(sub)
    _corpus(sub)
    _datasets(sub)
    _tag(sub)
    _embed(sub)
    _info(sub)
    _evaluate(sub)
    _serve(sub)
    return p


def _demo(sub: argparse._SubParsersAction) -> None:
    """The flags of ``tagstack demo``."""
    d = sub.add_parser("demo", help="build the default corpus if missing, run all three stages on it, and tag a few test clips")
    d.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    d.add_argument(
        "--workers", type=_number(checks.WORKERS), default=0, help="processes for rendering and decoding (default: one per core)"
    )
    _add_device(d)
    d.set_defaults(func=cmd_demo)


def _stages(sub: argparse._SubParsersAction) -> None:
    """The flags of ``tagstack run``, ``local``, ``aggregate`` and ``global``."""
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


def _reproduce(sub: argparse._SubParsersAction) -> None:
    """The flags of ``tagstack reproduce``."""
    r = sub.add_parser(
        "reproduce",
        help="the paper's Figs. 2-5, Tables I-II and joint fine-tuning as tables, figures and a report",
        description="Train the local CNNs once, extract features once, then train one global model per "
        "ablation (Figs. 2-5), compare with the published numbers (Table II), optionally on CNNs from "
        "another run (--local-from: Table I, transfer learning), and fine-tune the whole model end to end.",
    )
    r.add_argument("--out", required=True, help="run directory")
    r.add_argument("--quick", action="store_true", help="a few minutes: 2 local epochs, 20 global epochs, 1 joint epoch")
    r.add_argument("--seeds", type=_numbers(checks.SEED), default=(0,), help="seeds of the global models, e.g. 0,1,2 (default: 0)")
    r.add_argument(
        "--joint-epochs",
        type=_number(checks.EPOCHS),
        default=joint_schedule().max_epochs,
        help=f"epochs of joint fine-tuning (default: {joint_schedule().max_epochs})",
    )
    r.add_argument("--no-joint", action="store_true", help="skip joint fine-tuning")
    _add_experiment(r)
    r.set_defaults(func=cmd_reproduce, local_epochs=20)


def _corpus(sub: argparse._SubParsersAction) -> None:
    """The flags of ``tagstack corpus build``."""
    c = sub.add_parser("corpus", help="build the score-rendered corpus (tiny, default, large, or N clips per style)")
    c.add_argument("action", choices=["build"])
    c.add_argument("--size", default="default", help="tiny (3 clips per style), default (100), large (400), or a number (default: default)")
    c.add_argument("--out", type=Path, help="corpus folder (default: $TAGSTACK_HOME/corpus/SIZE, plus the suffixes below)")
    c.add_argument("--seed", type=_number(checks.SEED), default=0, help="random seed (default: 0)")
    c.add_argument("--workers", type=_number(checks.WORKERS), default=0, help="rendering processes (default: one per core)")
    c.add_argument(
        "--produce",
        default="",
        metavar="EFFECTS",
        help="production chain after rendering: 'all' or some of eq,compress,reverb,noise,level,lossy "
        "(default: none; the default folder is then $TAGSTACK_HOME/corpus/SIZE-produced-all, -produced-eq+reverb ...)",
    )
    c.add_argument(
        "--perform",
        default="",
        metavar="PARTS",
        help="performance played into the MIDI: 'all' or some of drums,humanise (style-fitting drum kits; "
        "timing, accents and phrasing) (default: none; the default folder is then SIZE-performed-all ...)",
    )
    c.add_argument(
        "--soundfont",
        type=Path,
        help="a General-MIDI .sf2/.sf3 to render with instead of TimGM6mb "
        "(e.g. /usr/share/sounds/sf2/FluidR3_GM.sf2 of Debian's fluid-soundfont-gm; the default folder gets "
        "-STEM appended, e.g. -FluidR3_GM)",
    )
    c.set_defaults(func=cmd_corpus)


def _datasets(sub: argparse._SubParsersAction) -> None:
    """The flags of ``tagstack datasets``."""
    sub.add_parser("datasets", help="list the dataset adapters").set_defaults(func=cmd_datasets)


def _tag(sub: argparse._SubParsersAction) -> None:
    """The flags of ``tagstack tag``."""
    t = sub.add_parser("tag", help="tag audio files, folders (recursively) or globs")
    t.add_argument("paths", nargs="+", help="audio files, folders or glob patterns")
    t.add_argument("--model", type=Path, help=MODEL_HELP)
    t.add_argument(
        "--top-k",
        type=_number(checks.TOP_K),
        default=checks.DEFAULT_TOP_K,
        help=f"tags per file (default: {checks.DEFAULT_TOP_K}; 0 for all)",
    )
    t.add_argument("--threshold", type=_number(checks.THRESHOLD), help="report every tag with probability >= this instead of the top k")
    t.add_argument(
        "--per-group",
        action="store_true",
        help="apply --top-k / --threshold within each tag group of the model (the default model's: genre, mood, "
        "quadrant and its teachers' vocabularies) and show each tag's group, so that no vocabulary crowds out the others",
    )
    t.add_argument("--format", choices=["table", "jsonl", "csv"], default="table", help="output format (default: table)")
    t.add_argument(
        "--output",
        "-o",
        type=Path,
        help="write to this file instead of standard output, whole at the end; an interrupted run resumes when run again "
        "(its progress is kept in OUTPUT.partial meanwhile); with --engine ray: a folder of Parquet shards",
    )
    t.add_argument("--force", action="store_true", help="write --output even over an existing audio file (never over an input)")
    t.add_argument(
        "--taggram",
        type=Path,
        metavar="DIR",
        help="also write each file's taggram (tags per 29.1 s window) as .npy/.csv and .png into DIR "
        "(with --engine ray: the workers write them, and the Parquet shards get taggram columns too)",
    )
    t.add_argument(
        "--hop",
        type=_number(checks.HOP),
        metavar="SECONDS",
        help="seconds between the starts of taggram windows (default: the clip length, back to back; "
        "e.g. 5 for overlapping windows every 5 s, at one network pass per window)",
    )
    _add_engine(t)
    _add_device(t)
    t.set_defaults(func=cmd_tag)


def _embed(sub: argparse._SubParsersAction) -> None:
    """The flags of ``tagstack embed``."""
    e = sub.add_parser("embed", help="multi-level, multi-scale feature vectors of audio files")
    e.add_argument("paths", nargs="+", help="audio files, folders or glob patterns")
    e.add_argument(
        "--out",
        "-o",
        type=Path,
        required=True,
        help="output file: .npz (arrays embeddings, paths, scales, layers) or .parquet (path, embedding; scales and layers in its metadata), "
        "whole at the end; an interrupted run resumes when run again (its progress is kept in OUT.partial meanwhile); "
        "with --engine ray, a folder of Parquet shards",
    )
    e.add_argument("--force", action="store_true", help="write --out even over an existing audio file (never over an input)")
    e.add_argument("--model", type=Path, help=MODEL_HELP)
    e.add_argument("--scales", type=_names, help="scales to keep, comma-separated, e.g. 27,54 or musicnn-msd/187 (default: all)")
    e.add_argument("--layers", type=_numbers(checks.LAYER), help="levels to keep, 1-based, comma-separated, e.g. 3,4 (default: all)")
    _add_engine(e)
    _add_device(e)
    e.set_defaults(func=cmd_embed)


def _info(sub: argparse._SubParsersAction) -> None:
    """The flags of ``tagstack info``."""
    i = sub.add_parser("info", help="print a model file's description (tags, networks, front ends, scores), or --list the shipped models")
    i.add_argument("model", nargs="?", type=Path, help=MODEL_HELP)
    i.add_argument("--json", action="store_true", help="print the whole JSON header instead of a summary")
    i.add_argument("--list", action="store_true", help="list the shipped models (the model zoo) instead")
    i.set_defaults(func=cmd_info)


def _evaluate(sub: argparse._SubParsersAction) -> None:
    """The flags of ``tagstack evaluate``."""
    ev = sub.add_parser(
        "evaluate",
        help="score a model on a split of your labelled dataset (tags matched by name)",
        description="Tag every clip of one split of a labelled dataset with a model, as `tagstack tag` does, and "
        "report macro ROC-AUC (95% bootstrap interval) and PR-AUC over the tags the model and the "
        "dataset share by name (case, spaces and punctuation ignored), so shipped and trained models compare on the same clips and tags.",
    )
    ev.add_argument("--model", type=Path, help=MODEL_HELP)
    ev.add_argument("--dataset", required=True, help="dataset adapter (see `tagstack datasets`), e.g. manifest, mtat, jamendo")
    ev.add_argument("--root", required=True, help="dataset folder or manifest file")
    ev.add_argument("--split", default="", help="split scheme of the adapter (default: its own)")
    ev.add_argument("--split-dir", default="", help="folder of the published split/label files, when not under --root")
    ev.add_argument("--merge-synonyms", action="store_true", help="MagnaTagATune full split: merge synonymous tags")
    ev.add_argument("--subset", choices=("test", "valid", "train"), default="test", help="which part of the split to score (default: test)")
    ev.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the result (per-tag scores included) as JSON, to FILE ending in .json"
    )
    ev.add_argument(
        "--plot", type=Path, metavar="FILE", help="also draw each tag's ROC-AUC and PR-AUC, best first, as a PNG, to FILE ending in .png"
    )
    _add_device(ev)
    ev.set_defaults(func=cmd_evaluate)


def _serve(sub: argparse._SubParsersAction) -> None:
    """The flags of ``tagstack serve``."""
    v = sub.add_parser(
        "serve",
        help="an HTTP tagging service with a web page (needs the serve extra)",
        description="Serve tags, embeddings and taggrams over HTTP: a JSON API under /api (OpenAPI docs at /docs) "
        "and a web page at /. The model is loaded once; analyses run in parallel across requests.",
    )
    v.add_argument("--model", type=Path, help=MODEL_HELP)
    v.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every interface)"
    )
    v.add_argument("--port", type=_number(checks.PORT), default=8000, help="port (default: 8000)")
    limits = ServiceLimits()
    v.add_argument(
        "--max-upload-mb",
        type=_number(checks.MAX_UPLOAD_MB),
        default=limits.max_upload_mb,
        help=f"largest upload accepted, in MB (default: {limits.max_upload_mb:g})",
    )
    v.add_argument(
        "--max-seconds",
        type=_number(checks.MAX_SECONDS),
        default=limits.max_seconds,
        help=f"longest audio accepted, in seconds (default: {limits.max_seconds:g}, three hours)",
    )
    v.add_argument(
        "--concurrency",
        type=_number(checks.CONCURRENCY),
        default=limits.concurrency,
        help="files analysed at once (default: 0, one per usable CPU)",
    )
    v.add_argument(
        "--max-uploads",
        type=_number(checks.MAX_UPLOADS),
        default=limits.max_uploads,
        help=f"requests holding an upload at once, received or analysed; more get a 503 (default: {limits.max_uploads})",
    )
    v.add_argument(
        "--upload-timeout",
        type=_number(checks.UPLOAD_TIMEOUT),
        default=limits.upload_timeout,
        help=f"seconds an upload may send nothing before it is cut off with a 408 (default: {limits.upload_timeout:g})",
    )
    v.add_argument(
        "--min-upload-kbps",
        type=_number(checks.MIN_UPLOAD_RATE),
        default=limits.min_upload_kbps,
        help=f"slowest average upload rate in kB/s, checked after the first --upload-timeout seconds; 0 for none "
        f"(default: {limits.min_upload_kbps:g})",
    )
    v.add_argument(
        "--header-timeout",
        type=_number(checks.HEADER_TIMEOUT),
        default=limits.header_timeout,
        help="seconds a client may take over a request's line and headers, from its first byte (a new connection: "
        f"from when it opens); cut off with a 408 (default: {limits.header_timeout:g})",
    )
    v.add_argument(
        "--shutdown-timeout",
        type=_number(checks.SHUTDOWN_TIMEOUT),
        default=limits.shutdown_timeout,
        help=f"on SIGTERM or Ctrl-C, seconds the requests under way get before they are cancelled (default: {limits.shutdown_timeout:g})",
    )
    v.add_argument(
        "--upload-dir",
        type=Path,
        help="folder for this server's upload folder, which a restart cleans (default: the system's temporary folder, $TMPDIR)",
    )
    _add_device(v)
    v.set_defaults(func=cmd_serve)
