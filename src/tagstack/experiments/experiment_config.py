"""An experiment as plain data: what to train on, which model, which schedules, which seeds.

:class:`ExperimentConfig` is validated when it is built, before any work
(an unknown dataset or option, a scale with no CNN, a layer no chosen CNN
has, are errors at once, not after the mel cache or five CNNs), and saved
fully resolved as ``config.toml`` in every run directory it produced, so
``tagstack run --config RUN/config.toml`` reruns exactly that experiment.
The demo's preset is here too (the shipped models' recipes are
``scripts/train_default_model.py``).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .. import checks
from ..config import PAPER_SCALES, FrontEndConfig, TrainConfig, global_schedule, joint_schedule, local_schedule, to_dict
from ..datasets import check_dataset
from ..errors import ParameterError
from ..fileio import atomic_write_bytes
from ..models.local_blocks import ARCHITECTURES
from ..runtime import parse_device

if TYPE_CHECKING:
    from torch import nn


@dataclass
class ExperimentConfig:
    """Everything a run needs; saved as ``config.toml`` in its run directory.

    ``seeds`` are the global models' seeds (``reproduce`` reports mean and
    standard deviation over them); ``local_from`` takes local networks from
    model files (or shipped models: ``musicnn-msd``, ``artist`` ...) instead
    of training them (transfer learning, Table I); ``joint`` is the schedule
    of joint fine-tuning (``None``: none). ``scales`` name the branches
    (the paper's scales): a paper CNN size such as ``27``, trained here unless
    ``local_from`` has it, or a branch of a ``local_from`` network, either
    as that file names it or as ``network/frames`` for another segment length
    (``musicnn-msd/375``: musicnn on 6 s segments).
    """

    dataset: str = "corpus"
    root: str = ""
    split: str = ""
    split_dir: str = ""  # where the published split/label files are, when not under root
    merge_synonyms: bool = False  # MagnaTagATune 'full' split: merge synonymous tags
    scales: tuple[str | int, ...] = PAPER_SCALES  # paper CNN sizes (trained here) and branches of local_from's networks
    layers: tuple[int, ...] | None = None  # None: every conv layer
    global_hidden: int = 512
    frontend: FrontEndConfig = field(default_factory=FrontEndConfig)
    local: TrainConfig = field(default_factory=local_schedule)
    global_: TrainConfig = field(default_factory=global_schedule)
    joint: TrainConfig | None = None
    seeds: tuple[int, ...] = (0,)
    local_from: tuple[str, ...] = ()  # model files or shipped names whose local networks to use
    n_boot: int = 200
    cache_dir: str = ""
    workers: int = 0  # 0: one per usable CPU
    engine: str = "local"  # where the mel cache's clips are decoded: "local" processes or "ray" workers
    ray_address: str = ""  # with engine "ray": an existing cluster ("auto", "host:6379"); "" starts one here
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.engine not in ("local", "ray"):
            raise ParameterError(f"engine must be 'local' or 'ray', got {self.engine!r}")
        check_dataset(self.dataset, {"split_dir": self.split_dir, "merge": self.merge_synonyms}, split=self.split)
        if isinstance(self.local_from, str):  # a config.toml of earlier versions: one file, or none
            self.local_from = tuple(x for x in self.local_from.split(",") if x)
        self.local_from = tuple(str(x) for x in self.local_from)
        self.scales = order_scales(self.scales)
        if not self.scales or len(set(self.scales)) != len(self.scales):
            raise ParameterError(f"scales must be distinct, got {list(self.scales)}")
        depths = {s: len(d) for s, d in scale_sources(self.scales, self.local_from).items()}
        if self.layers is not None:
            self.layers = tuple(sorted(checks.LAYER.named("layers").check(i) for i in self.layers))
            depth = max(depths.values())
            missing = [i for i in self.layers if not 1 <= i <= depth]
            if not self.layers or missing:
                raise ParameterError(
                    f"layers {missing or '[]'} do not exist in the networks of scales {list(self.scales)} (they have layers 1..{depth})"
                )
        self.seeds = tuple(checks.SEED.named("seeds").check(s) for s in self.seeds)
        if not self.seeds:
            raise ParameterError("seeds must name at least one seed")
        self.global_hidden = checks.HIDDEN.named("global_hidden").check(self.global_hidden)
        self.workers = checks.WORKERS.check(self.workers)
        self.n_boot = checks.N_BOOT.check(self.n_boot)
        if self.global_.mixup or (self.joint is not None and self.joint.mixup):
            raise ParameterError("mixup mixes the local CNNs' training segments: set it for stage 1 ([local]) only")
        parse_device(self.device)  # a name torch knows; whether this machine has it is asked when the run starts

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A copy with ``changes``, validated again."""
        return dataclasses.replace(self, **changes)


def order_scales(scales) -> tuple[str, ...]:
    """Scales as names, the paper's sizes first and by size (the paper's feature order), the others as given."""
    names = [str(s) for s in scales]
    return tuple(sorted((s for s in names if s.isdigit()), key=int)) + tuple(s for s in names if not s.isdigit())


def scale_sources(scales: tuple[str, ...], local_from: tuple[str, ...]) -> dict[str, list]:
    """Where each scale comes from, checked before any work: the feature_info levels of its network.

    A scale is a branch (as named) of one of ``local_from``'s model files, or
    ``network/frames`` of one of their networks, or a paper CNN size trained
    here. The files' headers are read (and validated), not their weights.
    Only ``local_from`` needs torch (its networks are built, without memory,
    for their levels): the paper's sizes are plain data, so the defaults are
    checked without it (the command line builds them for ``--help``).
    """
    networks: dict[str, dict] = {}
    branches: dict[str, str] = {}
    if local_from:
        from ..models.file import read_metadata
        from ..models.zoo import resolve_model

        for ref in local_from:
            meta = read_metadata(resolve_model(ref))
            for name, entry in meta["networks"].items():
                if name in networks:
                    raise ParameterError(f"local_from: two files have a network named {name!r}")
                networks[name] = entry
            for b in meta["branches"]:
                branches[b["network"] if b["network"] == str(b["frames"]) else f"{b['network']}/{b['frames']}"] = b["network"]
    out = {}
    for s in scales:
        net = branches.get(s) or (s.split("/")[0] if "/" in s and s.split("/")[0] in networks else None)
        if net is not None:
            module = _shape_only(networks[net])
            if "/" in s and s not in branches:
                frames = s.split("/", 1)[1]
                if not frames.isdigit():
                    raise ParameterError(f"scale {s!r}: expected network/frames, e.g. {net}/187")
                module.check_segment(int(frames))
            out[s] = module.feature_info
        elif s.isdigit() and int(s) in ARCHITECTURES:
            out[s] = ARCHITECTURES[int(s)]
        else:
            have = sorted(branches) + [f"{n}/FRAMES" for n in networks if not n.isdigit()]
            raise ParameterError(
                f"no local network for scale {s!r}: choose paper CNN sizes {sorted(ARCHITECTURES)}"
                + (f" or branches of local_from: {have}" if local_from else "")
            )
    return out


def _shape_only(entry: dict) -> nn.Module:
    """The network a model file's header describes, built on torch's meta device: its levels and checks, no weights."""
    import torch

    from ..models.networks import build_network

    with torch.device("meta"):
        return build_network(entry["kind"], entry["arch"])


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write ``config`` as TOML, atomically."""
    atomic_write_bytes(Path(path), tomli_w.dumps(to_dict(config)).encode())


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Inverse of :func:`~tagstack.config.to_dict` for :class:`ExperimentConfig`; unknown keys are errors."""
    data = dict(data)
    unknown = set(data) - {f.name for f in dataclasses.fields(ExperimentConfig)}
    if unknown:
        raise ParameterError(f"unknown configuration keys: {sorted(unknown)}")
    try:
        if "frontend" in data:
            data["frontend"] = FrontEndConfig(**data["frontend"])
        for key in ("local", "global_", "joint"):
            if key in data:
                data[key] = TrainConfig(**data[key])
    except TypeError as e:
        raise ParameterError(f"configuration: {e}") from None
    data.setdefault("layers", None)
    data.setdefault("joint", None)
    return ExperimentConfig(**data)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read a ``config.toml`` written by :func:`save_config`."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ParameterError(f"{path}: cannot read configuration ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ParameterError(f"{path}: not valid TOML ({e})") from None
    return config_from_dict(data)


# ------------------------------------------------------------ presets

#: The demo's budget: short enough for a first run on two CPU cores (see README for its measured scores).
DEMO_LOCAL_EPOCHS = 5
DEMO_GLOBAL_EPOCHS = 60


def demo_config(corpus_dir: Path, *, device: str = "auto", workers: int = 0) -> ExperimentConfig:
    """The demo: all five scales and layers on the default corpus, on a shortened schedule."""
    return ExperimentConfig(
        dataset="corpus",
        root=str(corpus_dir),
        device=device,
        workers=workers,
        local=local_schedule(max_epochs=DEMO_LOCAL_EPOCHS, lr_stages=2, patience=2),
        global_=global_schedule(max_epochs=DEMO_GLOBAL_EPOCHS, lr_stages=3, patience=6),
    )


def quick(config: ExperimentConfig) -> ExperimentConfig:
    """``reproduce --quick``: a smoke run of a few minutes (2 local epochs, 20 global, 1 joint, 50 bootstrap draws)."""
    return config.replace(
        local=dataclasses.replace(config.local, max_epochs=min(config.local.max_epochs, 2), lr_stages=2),
        global_=dataclasses.replace(config.global_, max_epochs=min(config.global_.max_epochs, 20), lr_stages=2),
        joint=None if config.joint is None else dataclasses.replace(config.joint, max_epochs=1),
        n_boot=min(config.n_boot, 50),
    )


__all__ = [
    "DEMO_GLOBAL_EPOCHS",
    "DEMO_LOCAL_EPOCHS",
    "ExperimentConfig",
    "config_from_dict",
    "demo_config",
    "joint_schedule",
    "load_config",
    "quick",
    "save_config",
]
