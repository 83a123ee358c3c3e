"""Configuration as plain data.

The front end and the training schedule are frozen-in-spirit dataclasses,
validated when built. The experiment that combines them (data, scales,
layers, schedules, seeds ...) is :class:`tagstack.experiments.experiment_config.ExperimentConfig`;
the schedules' defaults live here, once: :func:`local_schedule`,
:func:`global_schedule` and :func:`joint_schedule`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checks
from .errors import ParameterError

#: The five input sizes of the paper (frames of 512 samples at 22,050 Hz).
PAPER_SCALES: tuple[int, ...] = (18, 27, 54, 108, 216)


def tagstack_home() -> Path:
    """Where corpora and mel caches live: ``$TAGSTACK_HOME`` or ``~/.cache/tagstack``."""
    return Path(os.environ.get("TAGSTACK_HOME", Path.home() / ".cache" / "tagstack"))


#: Front-end fields added after model files and run folders first recorded front ends: left out of
#: :meth:`FrontEndConfig.key` and its ``repr`` (part of stored digests) while they keep their default.
_LATER_FIELDS = {"power": 1.0, "log10": False, "mel_scale": "slaney", "decibels": False, "pad_mode": "constant"}


@dataclass(frozen=True, repr=False)
class FrontEndConfig:
    """Parameters of a log-mel front end; the defaults are the paper's (Sec. III-B).

    The pretrained backbones read other ones (``power=2`` and ``log10=True``
    with ``compression=1e4`` is musicnn's ``log10(1 + 10**4 * mel power)``;
    ``mel_scale="htk"``, ``decibels=True`` and ``pad_mode="reflect"`` with
    ``power=2`` is torchaudio's ``MelSpectrogram`` then ``AmplitudeToDB``, which
    Won et al.'s networks read).
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None  # None: Nyquist
    compression: float = 10.0  # C in log(1 + C * mel)
    clip_seconds: float = 29.1
    n_frames: int = 1250  # frames kept per clip; see frontend.py for the alignment
    power: float = 1.0  # mel of the magnitude (1, the paper) or of the power (2) spectrum
    log10: bool = False  # log10(1 + C * mel) instead of the natural log
    mel_scale: str = "slaney"  # "slaney" (Slaney's scale, area-normalised, librosa's) or "htk" (unnormalised, torchaudio's)
    decibels: bool = False  # 10 log10(max(mel, 1e-10)) of the power spectrum instead of log(1 + C * mel)
    pad_mode: str = "constant"  # the centred frames' padding: zeros (librosa's) or "reflect" (torch.stft's default)

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
        if self.power not in (1.0, 2.0) or not isinstance(self.log10, bool):
            raise ParameterError(f"FrontEndConfig needs power 1 or 2 and log10 True or False, got {self.power!r}, {self.log10!r}")
        if self.mel_scale not in ("slaney", "htk") or self.pad_mode not in ("constant", "reflect"):
            raise ParameterError(
                f"FrontEndConfig needs mel_scale 'slaney' or 'htk' and pad_mode 'constant' or 'reflect', "
                f"got {self.mel_scale!r}, {self.pad_mode!r}"
            )
        if not isinstance(self.decibels, bool) or (self.decibels and (self.log10 or self.power != 2.0 or self.compression != 10.0)):
            raise ParameterError(
                f"FrontEndConfig.decibels must be True or False, and True only for a power spectrum (power=2) "
                f"without log10 or compression, got decibels={self.decibels!r}, power={self.power!r}, log10={self.log10!r}, "
                f"compression={self.compression!r}"
            )
        if self.pad_mode == "reflect" and self.clip_samples <= self.n_fft // 2:
            raise ParameterError(f"reflect padding needs clips longer than n_fft/2 = {self.n_fft // 2} samples, got {self.clip_samples}")
        if self.clip_samples < (self.n_frames - 1) * self.hop_length:
            raise ParameterError(f"clip_seconds={self.clip_seconds} is too short for n_frames={self.n_frames}")

    @property
    def clip_samples(self) -> int:
        """Samples in one clip at ``sample_rate`` (29.1 s -> 641,655)."""
        return int(round(self.clip_seconds * self.sample_rate))

    def same_transform(self, other: FrontEndConfig) -> bool:
        """Whether both compute the same frames (everything but the window: ``clip_seconds``, ``n_frames``)."""
        window = {"clip_seconds", "n_frames"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in window} == {
            k: v for k, v in dataclasses.asdict(other).items() if k not in window
        }

    def over_window(self, clip_seconds: float) -> FrontEndConfig:
        """The same transform over windows of ``clip_seconds``, keeping every frame centred inside them."""
        if clip_seconds == self.clip_seconds:
            return self
        frames = -(-int(round(clip_seconds * self.sample_rate)) // self.hop_length)
        return dataclasses.replace(self, clip_seconds=clip_seconds, n_frames=frames)

    def identity(self) -> dict[str, Any]:
        """The parameters, less the later fields at their defaults (so earlier keys and digests stay valid)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}

    def __repr__(self) -> str:
        return f"FrontEndConfig({', '.join(f'{k}={v!r}' for k, v in self.identity().items())})"

    def key(self) -> str:
        """A short stable string that changes whenever any parameter changes (cache key)."""
        import hashlib
        import json

        text = json.dumps(self.identity(), sort_keys=True)
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
    warmup_epochs: int = 0  # the first rate is reached linearly over this many epochs (0: at once, as the authors)
    clip_norm: float = 0.0  # gradients rescaled to at most this L2 norm (0: never, as the authors)
    mixup: float = 0.0  # stage 1: segments and labels mixed in pairs, weight ~ Beta(mixup, mixup) (0: never, as the authors)

    def __post_init__(self) -> None:
        if self.monitor not in ("loss", "roc_auc"):
            raise ParameterError(f"monitor must be 'loss' or 'roc_auc', got {self.monitor!r}")
        for name, allowed in _TRAIN_RANGES.items():  # the flags' ranges: a config.toml or Python gets the CLI's checks
            setattr(self, name, allowed.named(name).check(getattr(self, name)))


#: Each numeric field of :class:`TrainConfig` and the range it must lie in (the one its CLI flag has, where it has one).
_TRAIN_RANGES = {
    "lr": checks.LR,
    "lr_decay": checks.LR_DECAY,
    "lr_stages": checks.LR_STAGES,
    "patience": checks.PATIENCE,
    "max_epochs": checks.EPOCHS,
    "batch_size": checks.BATCH_SIZE,
    "momentum": checks.MOMENTUM,
    "weight_decay": checks.WEIGHT_DECAY,
    "seed": checks.SEED,
    "warmup_epochs": checks.WARMUP_EPOCHS,
    "clip_norm": checks.CLIP_NORM,
    "mixup": checks.MIXUP,
}


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as TOML-safe plain data (None values dropped, tuples as lists)."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return clean(dataclasses.asdict(obj))


def local_schedule(**overrides: Any) -> TrainConfig:
    """Stage 1 (local CNNs): the authors' schedule on batches of 64 segments, monitoring validation loss."""
    return TrainConfig(**{"batch_size": 64, **overrides})


def global_schedule(**overrides: Any) -> TrainConfig:
    """Stage 3 (global MLP): the authors' schedule on batches of 16 clips, monitoring validation ROC-AUC."""
    return TrainConfig(**{"batch_size": 16, "monitor": "roc_auc", **overrides})


def joint_schedule(**overrides: Any) -> TrainConfig:
    """Joint fine-tuning: a rate of 0.001 (a tenth of the staged start), batches of 8 clips, 3 epochs."""
    return TrainConfig(**{"lr": 0.001, "batch_size": 8, "max_epochs": 3, "lr_stages": 2, "patience": 2, "monitor": "roc_auc", **overrides})
