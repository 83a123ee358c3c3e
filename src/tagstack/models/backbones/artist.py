"""The MSD artist CNN (Park, Lee, Park, Ha & Nam, ISMIR 2018) in PyTorch.

A 1-D CNN of the paper's family, from the same lab, trained on the Million
Song Dataset to tell 10,000 artists apart (a siamese network with a hinge
loss over 4 negative artists, margin 0.4): five blocks of
conv (bias, "same" padding, the extra zero on the right as in Keras) ->
batch norm (epsilon 1e-3, Keras's) -> ReLU -> max-pool (floor), of
128, 128, 128, 128 and 256 filters of 4, 4, 4, 2 and 1 frames and pools of
4, 4, 4, 2 and 1, over 129-frame segments (3 s) of 128 mel bands. Its
embedding (Park et al.'s) is the last block's activation, max-pooled over
time and averaged over the segments: level 5 of the paper's aggregation.

It reads the paper's own front end. Park et al. compress mel magnitudes as
``log10(1 + 10 mel)`` and standardise with mean 0.22620339 and standard
deviation 0.25794547; since ``ln = log10 * ln(10)``, that is the paper's
``ln(1 + 10 mel)`` standardised with both numbers times ``ln(10)``, so the
artist CNN and the paper's CNNs share one front-end computation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ...config import FrontEndConfig
from ...errors import ParameterError
from . import own_frontend

EPS = 1e-3  # keras.layers.BatchNormalization's default

#: Park et al.'s standardisation of log10(1 + 10 mel) (``encoding_cnn.py``).
LOG10_MEAN, LOG10_STD = 0.22620339, 0.25794547


@dataclass(frozen=True)
class ArtistArch:
    """(kernel, filters, pool) per block, and the mel bands."""

    n_mels: int = 128
    blocks: tuple[tuple[int, int, int], ...] = ((4, 128, 4), (4, 128, 4), (4, 128, 4), (2, 128, 2), (1, 256, 1))

    def to_dict(self) -> dict:
        """The architecture as plain JSON values, as a model file's header stores it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ArtistArch:
        """The architecture of a model file's header (:meth:`to_dict`'s inverse: lists back to tuples)."""
        return cls(n_mels=d["n_mels"], blocks=tuple(tuple(b) for b in d["blocks"]))


class ArtistCNN(nn.Module):
    """The artist CNN: a segment ``(batch, frames, 128)`` of the paper's log-mels -> the five blocks' activations."""

    kind: ClassVar[str] = "artist-cnn"

    def __init__(self, arch: ArtistArch | None = None, *, frontend: FrontEndConfig | None = None) -> None:
        super().__init__()
        self.arch = arch or ArtistArch()
        self.frontend = own_frontend(FrontEndConfig(), frontend, what="the artist CNN")
        c_in = self.arch.n_mels
        self.convs, self.bns = nn.ModuleList(), nn.ModuleList()
        for k, c, _ in self.arch.blocks:
            self.convs.append(nn.Conv1d(c_in, c, k))
            self.bns.append(nn.BatchNorm1d(c, eps=EPS))
            c_in = c
        self.feature_info = [{"layer": i + 1, "channels": c} for i, (_, c, _) in enumerate(self.arch.blocks)]
        self.register_buffer("input_mean", torch.tensor(LOG10_MEAN * math.log(10.0)))
        self.register_buffer("input_std", torch.tensor(LOG10_STD * math.log(10.0)))

    @property
    def min_frames(self) -> int:
        """The shortest segment that leaves the last block a frame: the product of the pools before it."""
        return math.prod(p for _, _, p in self.arch.blocks[:-1])

    n_outputs: ClassVar[int] = 0  # trained through a siamese loss: no tag outputs

    def check_segment(self, frames: int) -> None:
        """Refuse segments shorter than :attr:`min_frames` (any longer length is read)."""
        if frames < self.min_frames:
            raise ParameterError(f"the artist CNN reads segments of at least {self.min_frames} frames, got {frames}")

    def forward_intermediates(self, x: torch.Tensor) -> tuple[list[torch.Tensor], None]:
        """Per-block activations ``(batch, channels, frames)`` (after ReLU, before pooling); no logits."""
        if x.dim() != 3 or x.shape[2] != self.arch.n_mels:
            raise ParameterError(f"expected input (batch, frames, {self.arch.n_mels}), got {tuple(x.shape)}")
        h = ((x - self.input_mean) / self.input_std).transpose(1, 2)
        acts = []
        for (k, _, pool), conv, bn in zip(self.arch.blocks, self.convs, self.bns):
            h = F.relu(bn(conv(F.pad(h, ((k - 1) // 2, k // 2)))))
            acts.append(h)
            if pool > 1:
                h = F.max_pool1d(h, pool)
        return acts, None
