"""Stage 1 models: the family of 1-D CNNs of Sec. II-A, one per input size.

The five variants are written as data (:data:`~.local_blocks.ARCHITECTURES`,
in :mod:`.local_blocks`, which imports no torch) and built by one function,
:func:`build_local_cnn`. Mel bins are the input channels and convolution
runs along time only, so low and high frequencies never share weights.
Every conv block is (conv k, 'same' zero padding, stride 1) -> BN ->
ReLU -> max-pool with stride equal to its length; the per-layer activations
(after ReLU, before pooling) are part of the public API through
:meth:`LocalCNN.forward_intermediates` and :attr:`LocalCNN.feature_info`, so
aggregation sizes itself from the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import ParameterError
from .local_blocks import ARCHITECTURES, ConvBlock


@dataclass(frozen=True)
class LocalArch:
    """Everything needed to rebuild a local CNN (saved in model artifacts)."""

    n_frames: int
    n_mels: int
    n_tags: int
    blocks: tuple[ConvBlock, ...]
    fc_units: int = 256
    dropout: float = 0.5

    def to_dict(self) -> dict:
        """The architecture as plain JSON values, as a model file's header stores it."""
        d = asdict(self)
        d["blocks"] = [asdict(b) for b in self.blocks]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LocalArch:
        """The architecture of a model file's header (:meth:`to_dict`'s inverse)."""
        d = dict(d)
        d["blocks"] = tuple(ConvBlock(**b) for b in d["blocks"])
        return cls(**d)


def local_arch(n_frames: int, *, n_tags: int, n_mels: int = 128) -> LocalArch:
    """The paper's architecture for an input of ``n_frames`` frames."""
    if n_frames not in ARCHITECTURES:
        raise ParameterError(f"no local CNN for {n_frames} frames; choose from {sorted(ARCHITECTURES)}")
    return LocalArch(n_frames=n_frames, n_mels=n_mels, n_tags=n_tags, blocks=tuple(ARCHITECTURES[n_frames]))


class LocalCNN(nn.Module):
    """A local model: segment ``(batch, n_frames, n_mels)`` -> tag logits ``(batch, n_tags)``.

    The input is standardised inside the model with the training set's scalar
    mean and standard deviation (buffers ``input_mean``/``input_std``), so a
    saved model carries its normalisation. It reads the front end of the
    :class:`~tagstack.models.TaggingModel` that holds it (``frontend`` None).
    """

    kind: ClassVar[str] = "tagstack-cnn"
    frontend: ClassVar[None] = None

    def __init__(self, arch: LocalArch) -> None:
        super().__init__()
        self.arch = arch
        t = arch.n_frames
        c_in = arch.n_mels
        self.blocks = nn.ModuleList()
        self.pools = nn.ModuleList()
        self.feature_info: list[dict] = []
        for i, b in enumerate(arch.blocks):
            self.blocks.append(
                nn.Sequential(
                    # 'same' zero padding; an even kernel gets the extra zero on the right (as Keras)
                    nn.ConstantPad1d(((b.kernel - 1) // 2, b.kernel // 2), 0.0),
                    nn.Conv1d(c_in, b.channels, b.kernel, stride=1, bias=False),
                    nn.BatchNorm1d(b.channels),
                    nn.ReLU(inplace=True),
                )
            )
            self.pools.append(nn.MaxPool1d(b.pool, stride=b.pool))
            self.feature_info.append({"layer": i + 1, "channels": b.channels, "frames": t})
            if t % b.pool:
                raise ParameterError(f"{arch.n_frames} frames do not pool evenly at block {i + 1}")
            t //= b.pool
            c_in = b.channels
        if t != 1:
            raise ParameterError(f"{arch.n_frames} frames leave {t} frames after the conv stack, expected 1")
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in, arch.fc_units, bias=False),
            nn.BatchNorm1d(arch.fc_units),
            nn.ReLU(inplace=True),
            nn.Dropout(arch.dropout),
            nn.Linear(arch.fc_units, arch.n_tags),
        )
        self.register_buffer("input_mean", torch.zeros(()))
        self.register_buffer("input_std", torch.ones(()))

    @property
    def n_outputs(self) -> int:
        """Width of the CNN's own tag outputs (the tags it was trained on)."""
        return self.arch.n_tags

    def check_segment(self, frames: int) -> None:
        """A paper CNN reads segments of exactly its input size."""
        if frames != self.arch.n_frames:
            raise ParameterError(f"the {self.arch.n_frames}-frame CNN reads segments of {self.arch.n_frames} frames, not {frames}")

    def set_normalisation(self, mean: float, std: float) -> None:
        """Store the training frames' scalar ``mean`` and ``std``, applied to every input."""
        self.input_mean.fill_(float(mean))
        self.input_std.fill_(float(std))

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1:] != (self.arch.n_frames, self.arch.n_mels):
            raise ParameterError(f"expected input (batch, {self.arch.n_frames}, {self.arch.n_mels}), got {tuple(x.shape)}")
        return ((x - self.input_mean) / self.input_std).transpose(1, 2)

    def forward_intermediates(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-layer activations ``(batch, channels, frames)`` (after ReLU, before pooling) and logits."""
        h = self._prepare(x)
        acts = []
        for block, pool in zip(self.blocks, self.pools):
            h = block(h)
            acts.append(h)
            h = pool(h)
        return acts, self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_tags)``; apply a sigmoid for probabilities."""
        return self.forward_intermediates(x)[1]


def build_local_cnn(n_frames: int, *, n_tags: int, n_mels: int = 128) -> LocalCNN:
    """Build the paper's local CNN for ``n_frames`` input frames."""
    return LocalCNN(local_arch(n_frames, n_tags=n_tags, n_mels=n_mels))


def n_segments(n_frames_clip: int, segment: int) -> int:
    """Non-overlapping segments of ``segment`` frames in a clip (1,250 -> 69, 46, 23, 11, 5)."""
    return n_frames_clip // segment
