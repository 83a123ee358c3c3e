"""Won et al.'s 2-D CNNs for music tagging (SMC 2020): the FCN and the CRNN's convolutions, in PyTorch.

Won, Ferraro, Bogdanov & Serra re-trained the field's tagging networks on
one split per dataset and published the weights; two of them, trained on
the Million Song Dataset's top-50 Last.fm tags, are ported here:

- the FCN (Choi, Fazekas & Sandler 2016): five blocks of 64, 128, 128, 128
  and 64 filters, pools (frequency x time) of 2x4, 2x4, 2x4, 3x5 and 4x4;
- the CRNN (Choi et al. 2017): four blocks of 64, 128, 128 and 128 filters,
  pools of 2x2, 3x3, 4x4 and 4x4, then a GRU that is not ported.

Every block is a 3x3 convolution (bias, one zero of padding on each side)
-> batch norm (epsilon 1e-5, PyTorch's) -> ReLU -> max-pool (floor). Each
block's activation after the ReLU is a level of the paper's aggregation: its
max over frequency here, its max over a segment's frames in
:func:`~tagstack.models.aggregation.aggregate`, so a level is the max over
the whole time-frequency map of a segment. Both networks were trained on
29.1 s inputs and read any segment at least :attr:`Won2d.min_frames` long;
their own tag heads (the FCN's dense layer, the CRNN's GRU) read 29.1 s only
and are left out: the networks embed, and serve as local networks.

The front end is torchaudio's (the networks' own first layers): 16 kHz,
512-point FFT, hop 256, reflect-padded centred frames, 96 HTK mel bands up
to 8 kHz of the power spectrum, in decibels (``10 log10(max(mel, 1e-10))``),
then a batch norm of one channel (a scalar affine in evaluation, kept here).
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

EPS = 1e-5  # torch.nn.BatchNorm2d's default, which the originals use

#: What the originals compute before their first convolution (torchaudio's MelSpectrogram and AmplitudeToDB).
WON_FRONTEND = FrontEndConfig(
    sample_rate=16000,
    n_fft=512,
    hop_length=256,
    n_mels=96,
    f_max=8000.0,
    power=2.0,
    mel_scale="htk",
    decibels=True,
    pad_mode="reflect",
    clip_seconds=29.1,
    n_frames=1819,
)


@dataclass(frozen=True)
class Won2dArch:
    """(filters, frequency pool, time pool) per block, and the mel bands."""

    n_mels: int = 96
    blocks: tuple[tuple[int, int, int], ...] = ((64, 2, 4), (128, 2, 4), (128, 2, 4), (128, 3, 5), (64, 4, 4))

    def __post_init__(self) -> None:
        if not self.blocks or not all(len(b) == 3 and all(isinstance(v, int) and v > 0 for v in b) for b in self.blocks):
            raise ParameterError(f"each block needs three positive ints (filters, frequency pool, time pool), got {self.blocks}")
        if math.prod(f for _, f, _ in self.blocks[:-1]) > self.n_mels:
            raise ParameterError(f"the blocks' frequency pools leave no band of {self.n_mels}: {self.blocks}")

    def to_dict(self) -> dict:
        """The architecture as plain JSON values, as a model file's header stores it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Won2dArch:
        """The architecture of a model file's header (:meth:`to_dict`'s inverse: lists back to tuples)."""
        return cls(n_mels=d["n_mels"], blocks=tuple(tuple(b) for b in d["blocks"]))


#: The two published architectures, by the name of their folder in Won et al.'s repository.
FCN = Won2dArch()
CRNN = Won2dArch(blocks=((64, 2, 2), (128, 3, 3), (128, 4, 4), (128, 4, 4)))
#: The segment each is read on (frames): 6 s for the FCN, whose fifth block needs 320 frames (3 s leave it none), 3 s for
#: the CRNN.
SEGMENT_FRAMES = {"fcn": 376, "crnn": 188}


class Won2d(nn.Module):
    """A segment ``(batch, frames, 96)`` of decibel mels -> each block's activation, max over frequency."""

    kind: ClassVar[str] = "won-2d"
    n_outputs: ClassVar[int] = 0  # the tag heads read 29.1 s inputs only and are not ported

    def __init__(self, arch: Won2dArch | None = None, *, frontend: FrontEndConfig | None = None) -> None:
        super().__init__()
        self.arch = arch or Won2dArch()
        self.frontend = own_frontend(WON_FRONTEND, frontend, what="Won et al.'s CNNs")
        if self.arch.n_mels != self.frontend.n_mels:
            raise ParameterError(f"this CNN reads {self.arch.n_mels} mel bands, its front end gives {self.frontend.n_mels}")
        self.input_bn = nn.BatchNorm2d(1, eps=EPS)
        self.convs, self.bns = nn.ModuleList(), nn.ModuleList()
        c_in = 1
        for c, _, _ in self.arch.blocks:
            self.convs.append(nn.Conv2d(c_in, c, 3, padding=1))
            self.bns.append(nn.BatchNorm2d(c, eps=EPS))
            c_in = c
        self.feature_info = [{"layer": i + 1, "channels": c} for i, (c, _, _) in enumerate(self.arch.blocks)]

    @property
    def min_frames(self) -> int:
        """The shortest segment that leaves the last block a frame: the product of the time pools before it."""
        return math.prod(t for _, _, t in self.arch.blocks[:-1])

    def check_segment(self, frames: int) -> None:
        """Refuse segments shorter than :attr:`min_frames` (any longer length is read)."""
        if frames < self.min_frames:
            raise ParameterError(f"this CNN of Won et al. reads segments of at least {self.min_frames} frames, got {frames}")

    def forward_intermediates(self, x: torch.Tensor) -> tuple[list[torch.Tensor], None]:
        """Per-block activations ``(batch, channels, frames)`` (after ReLU, before pooling, max over frequency)."""
        if x.dim() != 3 or x.shape[2] != self.arch.n_mels:
            raise ParameterError(f"expected input (batch, frames, {self.arch.n_mels}), got {tuple(x.shape)}")
        h = self.input_bn(x.transpose(1, 2).unsqueeze(1))
        acts = []
        last = len(self.arch.blocks) - 1
        for i, ((_, f_pool, t_pool), conv, bn) in enumerate(zip(self.arch.blocks, self.convs, self.bns)):
            h = F.relu(bn(conv(h)))
            acts.append(h.amax(dim=2))
            if i < last:
                h = F.max_pool2d(h, (f_pool, t_pool))
        return acts, None
