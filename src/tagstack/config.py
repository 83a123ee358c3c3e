"""Configuration as plain data.

Every experiment is described by dataclasses that are saved, fully resolved, as
``config.toml`` next to the results they produce; :func:`load_config` rebuilds
the same objects, so a run directory can be reproduced from its config alone.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ParameterError

#: The five input sizes of the paper (frames of 512 samples at 22,050 Hz).
PAPER_SCALES: tuple[int, ...] = (18, 27, 54, 108, 216)


@dataclass(frozen=True)
class FrontEndConfig:
    """Parameters of the log-mel front end (paper, Sec. III-B)."""

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None  # None: Nyquist
    compression: float = 10.0  # C in log(1 + C * |A|)
    clip_seconds: float = 29.1
    n_frames: int = 1250  # frames kept per clip; see frontend.py for the alignment

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "n_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ParameterError(f"FrontEndConfig.{name} must be a positive int, got {value!r}")
        if self.hop_length > self.n_fft:
            raise ParameterError(f"hop_length={self.hop_length} must not exceed n_fft={self.n_fft}")
        nyquist = self.sample_rate / 2
        if self.f_max is not None and not (self.f_min < self.f_max <= nyquist):
            raise ParameterError(f"need f_min < f_max <= {nyquist}, got f_min={self.f_min}, f_max={self.f_max}")
        if self.clip_samples < (self.n_frames - 1) * self.hop_length:
            raise ParameterError(
                f"clip_seconds={self.clip_seconds} is too short for n_frames={self.n_frames}"
            )

    @property
    def clip_samples(self) -> int:
        """Samples in one clip at ``sample_rate`` (29.1 s -> 641,655)."""
        return int(round(self.clip_seconds * self.sample_rate))

    def key(self) -> str:
        """A short stable string that changes whenever any parameter changes (cache key)."""
        import hashlib
        import json

        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass
class TrainConfig:
    """Optimisation schedule shared by stage 1 and stage 3 (the authors' defaults).

    SGD with Nesterov momentum 0.9; the learning rate starts at ``lr`` and is
    multiplied by ``lr_decay`` each time the monitored validation score has not
    improved for ``patience`` epochs, restarting from the best checkpoint; after
    ``lr_stages`` such stages (or ``max_epochs``) training stops.
    """

    lr: float = 0.01
    lr_decay: float = 0.2
    lr_stages: int = 4
    patience: int = 3
    max_epochs: int = 100
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 0.0
    monitor: str = "loss"  # "loss" (validation loss) or "roc_auc"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.monitor not in ("loss", "roc_auc"):
            raise ParameterError(f"monitor must be 'loss' or 'roc_auc', got {self.monitor!r}")
        if self.lr <= 0 or not (0 < self.lr_decay < 1):
            raise ParameterError(f"need lr > 0 and 0 < lr_decay < 1, got lr={self.lr}, lr_decay={self.lr_decay}")
        for name in ("lr_stages", "patience", "max_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ParameterError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class ExperimentConfig:
    """Everything a three-stage run needs; saved as ``config.toml`` in its run directory."""

    dataset: str = "corpus"
    root: str = ""
    split: str = ""
    split_dir: str = ""  # where the published split/label files are, when not under root
    merge_synonyms: bool = False  # MagnaTagATune 'full' split: merge synonymous tags
    scales: tuple[int, ...] = PAPER_SCALES
    layers: tuple[int, ...] | None = None  # None: every conv layer
    global_hidden: int = 512
    frontend: FrontEndConfig = field(default_factory=FrontEndConfig)
    local: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=64))
    global_: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=16, monitor="roc_auc"))
    cache_dir: str = ""
    workers: int = 0  # 0: one per CPU core
    device: str = "auto"

    def __post_init__(self) -> None:
        self.scales = tuple(int(s) for s in self.scales)
        if self.layers is not None:
            self.layers = tuple(int(i) for i in self.layers)
        if self.global_hidden < 1:
            raise ParameterError(f"global_hidden must be >= 1, got {self.global_hidden}")


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as TOML-safe plain data (None values dropped, tuples as lists)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return clean(dataclasses.asdict(obj))


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write ``config`` as TOML, atomically."""
    from .fileio import atomic_write_bytes

    atomic_write_bytes(Path(path), tomli_w.dumps(to_dict(config)).encode())


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Inverse of :func:`to_dict` for :class:`ExperimentConfig`."""
    data = dict(data)
    known = {f.name for f in dataclasses.fields(ExperimentConfig)}
    unknown = set(data) - known
    if unknown:
        raise ParameterError(f"unknown configuration keys: {sorted(unknown)}")
    if "frontend" in data:
        data["frontend"] = FrontEndConfig(**data["frontend"])
    for key in ("local", "global_"):
        if key in data:
            data[key] = TrainConfig(**data[key])
    data.setdefault("layers", None)
    return ExperimentConfig(**data)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read a ``config.toml`` written by :func:`save_config`."""
    with open(path, "rb") as f:
        return config_from_dict(tomllib.load(f))
