"""musicnn (Pons & Serra, 2019) in PyTorch: the MSD- and MTT-trained networks of the ``musicnn`` package.

The network reads musicnn's front end (16 kHz, 512-point FFT, hop 256, 96
Slaney mel bands of the power spectrum, ``log10(1 + 10**4 mel)``:
:data:`MUSICNN_FRONTEND`) and has three parts:

- **front end**: a batch norm of the input, then two *timbral* convolutions
  (7 frames x 38 and x 67 mel bands, 204 filters each, frequency not padded)
  and three *temporal* ones (128, 64 and 32 frames x 1 band, 51 filters
  each, "same" padding in time), each ReLU -> batch norm -> max over
  frequency: 561 channels per frame;
- **mid end**: three 1-D convolutions over time (7 frames, 64 filters, ReLU,
  batch norm), the last two residual: 64 channels per frame each;
- **back end**: max and mean over time of the 753 front- and mid-end
  channels (interleaved per channel, as musicnn flattens them), batch norm,
  a dense layer of 200 ReLU units and a batch norm (the "penultimate" layer),
  and a dense layer of 50 tag logits.

:meth:`Musicnn.forward_intermediates` gives the levels the paper's
aggregation reads: the 561-channel front end, the three mid-end layers
(per frame) and the penultimate layer (per segment). Since the network is
fully convolutional, a segment may have any length; musicnn was trained on
3 s patches (187 frames).

Three computations differ from a literal port, with the same result: a max over
frequency of a batch norm of a ReLU is taken before them (a batch norm is a
per-channel affine map, so its max is the affine map of the max where the
scale is positive and of the min where it is negative, and a ReLU commutes
with both); the temporal convolutions run as 1-D convolutions of every band at
once (these two keep the 22 M-value feature maps of a 30 s clip from being
touched more than once); and filters that cannot respond to the input at hand
(for musicnn MTT, 152 of the 408 timbral filters on any log-mel; for MSD, 347)
are not computed: their output is their batch norm's shift. Batch norms use
musicnn's epsilon, 1e-3, and "same" padding puts the extra zero on the right,
as TensorFlow does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import ClassVar, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from ...config import FrontEndConfig
from ...errors import ParameterError
from . import own_frontend

#: musicnn's front end (``musicnn/configuration.py``), over a 29.1 s window: 1,819 frames centred inside it.
MUSICNN_FRONTEND = FrontEndConfig(
    sample_rate=16000, n_fft=512, hop_length=256, n_mels=96, compression=1e4, power=2.0, log10=True, clip_seconds=29.1, n_frames=1819
)

EPS = 1e-3  # tf.compat.v1.layers.batch_normalization's default

#: Values of a front-end block's conv output computed at once on a CPU (8 MB): the 22 M values of a clip's
#: timbral maps are computed a few segments or frames at a time and max-pooled while still in cache (with the
#: temporal blocks likewise: about a fifth less time end to end than whole maps).
_MAP_BUDGET = 2**21


@dataclass(frozen=True)
class MusicnnArch:
    """musicnn's sizes (``musicnn.models.build_musicnn`` with 96 mel bands)."""

    n_mels: int = 96
    timbral_filters: int = 204
    timbral_bands: tuple[int, ...] = (38, 67)  # int(0.4 * 96), int(0.7 * 96)
    timbral_frames: int = 7
    temporal_filters: int = 51
    temporal_frames: tuple[int, ...] = (128, 64, 32)
    midend_filters: int = 64
    midend_frames: int = 7
    backend_units: int = 200
    n_outputs: int = 50

    def __post_init__(self) -> None:
        if any(b > self.n_mels for b in self.timbral_bands):
            raise ParameterError(f"timbral filters of {self.timbral_bands} bands do not fit {self.n_mels} mel bands")

    @property
    def frontend_channels(self) -> int:
        """Channels of the timbral and temporal filters together: the width of the first level."""
        return len(self.timbral_bands) * self.timbral_filters + len(self.temporal_frames) * self.temporal_filters

    def to_dict(self) -> dict:
        """The architecture as plain JSON values, as a model file's header stores it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MusicnnArch:
        """The architecture of a model file's header (:meth:`to_dict`'s inverse: lists back to tuples)."""
        d = dict(d)
        d["timbral_bands"], d["temporal_frames"] = tuple(d["timbral_bands"]), tuple(d["temporal_frames"])
        return cls(**d)


def _same(k: int) -> tuple[int, int]:
    """TensorFlow's "same" padding of a kernel of ``k`` frames: the extra zero on the right."""
    return (k - 1) // 2, k // 2


def _sign(scale: torch.Tensor) -> torch.Tensor:
    """+1 per channel whose batch-norm ``scale`` keeps the order of its inputs, -1 where it reverses it."""
    return torch.where(scale >= 0, 1.0, -1.0).to(scale.dtype)


class _Plan(NamedTuple):
    """A block's filters that can fire on an input (``live``), their weights and biases as the conv takes them
    (negated where the batch norm reverses the order: ``sign``), their batch-norm ``scale`` and every filter's
    ``shift``."""

    live: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    sign: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor


class _PooledConv(nn.Module):
    """Conv2d over (time, frequency) -> ReLU -> batch norm -> max over frequency, computed in evaluation as
    one max over frequency of the conv, then ReLU and the batch norm's affine map, for the channels that can
    be non-zero only.

    Why that is exact: the batch norm is a per-channel affine map, so the max of its output is the map of the max
    of its input where its scale is positive and of the min where it is negative (ReLU is monotone, so it
    commutes with both). The min of a conv is minus the max of the conv with negated weights and bias (negation is
    exact in floating point), so the filters of negative-scale channels are negated and a single ``amax`` serves
    every channel: a third less work on the largest maps of the network than a max and a min.

    Why channels are skipped: many of musicnn's filters cannot fire. A filter whose largest possible response
    over the input's actual range (zero padding included) is at most zero has a ReLU output of 0 everywhere,
    so its pooled output is the batch norm's shift, whatever the input; its convolution is not computed. The
    bound is taken once per call from the input's own minimum and maximum, so the result is exact for any
    input (a NaN bound proves nothing: that filter is computed).
    On log-mels, 152 of musicnn MTT's 408 timbral filters and 347 of MSD's are such: training shrank their
    weights to about 1e-30 and left them a negative bias.
    """

    def __init__(self, filters: int, frames: int, bands: int) -> None:
        super().__init__()
        self.frames, self.bands = frames, bands
        self.weight = nn.Parameter(torch.zeros(filters, 1, frames, bands))
        self.bias = nn.Parameter(torch.zeros(filters))
        self.bn = nn.BatchNorm2d(filters, eps=EPS)

    def _affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        return scale, bn.bias - bn.running_mean * scale

    @torch.no_grad()
    def _live(self, x: torch.Tensor) -> torch.Tensor:
        """Indices of the channels whose conv can be positive somewhere on ``x`` (or on the zeros padded to it):
        the largest value a filter can take over inputs in ``[min(x, 0), max(x, 0)]`` is its positive weights
        times the top of that range plus its negative weights times the bottom, plus its bias."""
        zero = x.new_zeros(())
        lo, hi = (x.amin().clamp(max=0), x.amax().clamp(min=0)) if x.numel() else (zero, zero)
        w = self.weight.flatten(1)
        bound = w.clamp(min=0).sum(1) * hi + w.clamp(max=0).sum(1) * lo + self.bias
        live = torch.nonzero(~(bound <= 0)).flatten()  # a NaN bound (a NaN input) proves nothing: computed
        return live if len(live) else bound.argmax()[None]  # none can fire: one is computed for the output's shape

    def _plan(self, x: torch.Tensor) -> _Plan | None:
        """What :meth:`pooled` computes on the parts of input ``x``, worked out once per call (None in training)."""
        if self.training:
            return None
        live = self._live(x)
        scale, shift = self._affine()
        sign = _sign(scale[live])  # the max, or (filters negated) the min of the original conv
        return _Plan(live, self.weight[live] * sign[:, None, None, None], self.bias[live] * sign, sign, scale[live], shift)

    def pooled(self, conv: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], plan: _Plan | None, dim: int = 3) -> torch.Tensor:
        """``conv(weight, bias)`` -> ``(batch, filters, time, positions)`` (the positions at ``dim``) ->
        ``(batch, filters, time)`` after ReLU, BN and the max over the positions; in evaluation, of the filters
        that can fire only (:meth:`_plan` of the conv's input), the others given their constant output."""
        if plan is None:  # training: batch statistics need the whole map
            return self.bn(F.relu(conv(self.weight, self.bias).movedim(dim, 3))).amax(dim=3)
        picked = conv(plan.weight, plan.bias).amax(dim=dim) * plan.sign[None, :, None]
        out = plan.shift[None, :, None].expand(picked.shape[0], -1, picked.shape[2]).clone()  # a silent filter's output
        out[:, plan.live] = F.relu(picked) * plan.scale[None, :, None] + plan.shift[plan.live][None, :, None]
        return out

    def _parts(self, x: torch.Tensor, per_clip: int) -> tuple[torch.Tensor, ...]:
        """``x`` cut along the batch into parts whose conv outputs (``per_clip`` values per item) hold about
        :data:`_MAP_BUDGET` values, on a CPU in evaluation; whole otherwise (a GPU wants one call, training the
        whole batch's statistics)."""
        return x.split(max(1, _MAP_BUDGET // per_clip)) if self._in_parts(x) else (x,)

    def _in_parts(self, x: torch.Tensor) -> bool:
        return not self.training and x.device.type == "cpu"


class _Timbral(_PooledConv):
    """A timbral block: ``frames`` x ``bands`` filters, time padded 'same', frequency not padded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, time, n_mels)
        return self._padded(x, *_same(self.frames))

    def _padded(self, x: torch.Tensor, left: int, right: int) -> torch.Tensor:
        """The block's output on ``x`` with ``left`` and ``right`` zero frames around it. On a CPU, computed a few
        segments at a time (:meth:`_parts`), and a longer clip in stretches of about equal length, each read with
        the ``frames - 1`` input frames its last outputs need beyond it."""
        n_out = x.shape[1] + left + right - self.frames + 1
        per_frame = self.weight.shape[0] * (x.shape[2] - self.bands + 1)
        step = n_out
        if self._in_parts(x) and per_frame * n_out > _MAP_BUDGET:
            stretches = -(-per_frame * n_out // _MAP_BUDGET)
            step = -(-n_out // stretches)
        plan, outs = self._plan(x), []
        for part in self._parts(x, per_frame * n_out):
            padded = F.pad(part[:, None], (0, 0, left, right))
            pieces = [padded[:, :, t : t + step + self.frames - 1] for t in range(0, n_out, step)]
            outs.append(torch.cat([self.pooled(partial(F.conv2d, p), plan) for p in pieces], dim=2))
        return torch.cat(outs)

    def edges(self, segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The outputs of the first and last frames of each segment read alone (zeros beyond its ends) that
        the kernel's padding reaches: the only frames where it differs from the whole window's output."""
        left, right = _same(self.frames)
        reach = left + right  # the input frames those outputs read
        return self._padded(segments[:, :reach], left, 0), self._padded(segments[:, -reach:], 0, right)


class _Temporal(_PooledConv):
    """A temporal block: ``frames`` x 1 filters shared by every band, 'same' padding in time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, time, n_mels)
        t, m = x.shape[1:]
        plan = self._plan(x)
        return torch.cat([self._bands_at_once(part, plan) for part in self._parts(x, m * self.weight.shape[0] * t)])

    def _bands_at_once(self, x: torch.Tensor, plan: _Plan | None) -> torch.Tensor:
        b, t, m = x.shape
        rows = F.pad(x.transpose(1, 2).reshape(b * m, 1, t), _same(self.frames))

        def conv(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # (batch, bands, filters, time)
            return F.conv1d(rows, weight[:, :, :, 0], bias).reshape(b, m, weight.shape[0], t)

        return self.pooled(conv, plan, dim=1)


class _MidEnd(nn.Module):
    """1-D conv over time ('same') -> ReLU -> batch norm."""

    def __init__(self, channels: int, filters: int, frames: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, filters, frames)
        self.bn = nn.BatchNorm1d(filters, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(F.pad(x, _same(self.conv.kernel_size[0])))))


class Musicnn(nn.Module):
    """musicnn: a segment ``(batch, frames, 96)`` of :data:`MUSICNN_FRONTEND` log-mels -> levels and tag logits."""

    kind: ClassVar[str] = "musicnn"
    min_frames: ClassVar[int] = 8

    def __init__(self, arch: MusicnnArch | None = None, *, frontend: FrontEndConfig | None = None) -> None:
        super().__init__()
        self.arch = a = arch or MusicnnArch()
        self.frontend = own_frontend(MUSICNN_FRONTEND, frontend, what="musicnn")
        self.input_bn = nn.BatchNorm2d(1, eps=EPS)
        self.timbral = nn.ModuleList(_Timbral(a.timbral_filters, a.timbral_frames, b) for b in a.timbral_bands)
        self.temporal = nn.ModuleList(_Temporal(a.temporal_filters, k, 1) for k in a.temporal_frames)
        c = a.frontend_channels
        self.midend = nn.ModuleList(
            [_MidEnd(c, a.midend_filters, a.midend_frames)]
            + [_MidEnd(a.midend_filters, a.midend_filters, a.midend_frames) for _ in range(2)]
        )
        pooled = 2 * (c + 3 * a.midend_filters)
        self.pool_bn = nn.BatchNorm1d(pooled, eps=EPS)
        self.dense = nn.Linear(pooled, a.backend_units)
        self.dense_bn = nn.BatchNorm1d(a.backend_units, eps=EPS)
        self.output = nn.Linear(a.backend_units, a.n_outputs)
        self.feature_info = [
            {"layer": i + 1, "channels": ch, "name": name}
            for i, (ch, name) in enumerate(
                [
                    (c, "front end"),
                    (a.midend_filters, "mid end 1"),
                    (a.midend_filters, "mid end 2"),
                    (a.midend_filters, "mid end 3"),
                    (a.backend_units, "penultimate"),
                ]
            )
        ]

    @property
    def n_outputs(self) -> int:
        """Width of the network's own tag outputs (50 for the published networks)."""
        return self.arch.n_outputs

    def check_segment(self, frames: int) -> None:
        """Refuse segments shorter than :attr:`min_frames` (any longer length is read)."""
        if frames < self.min_frames:
            raise ParameterError(f"musicnn reads segments of at least {self.min_frames} frames, got {frames}")

    def forward_intermediates(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Levels ``[(batch, 561, frames), 3 x (batch, 64, frames), (batch, 200)]`` and logits ``(batch, 50)``."""
        if x.dim() != 3 or x.shape[2] != self.arch.n_mels:
            raise ParameterError(f"expected input (batch, frames, {self.arch.n_mels}), got {tuple(x.shape)}")
        x = self.input_bn(x[:, None])[:, 0]
        return self._after_frontend(torch.cat([block(x) for block in self.timbral] + [block(x) for block in self.temporal], dim=1))

    def segment_intermediates(self, mels: torch.Tensor, sizes: list[int]) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
        """:meth:`forward_intermediates` of every segment of each length in ``sizes`` (segments of ``mels`` as
        :func:`~tagstack.models.aggregation.segment` cuts them), with the timbral convolutions, two thirds of the
        network's work, computed once for the whole of ``mels``: a segment read alone differs from the whole
        only in its first and last 3 frames (the kernels' padding), which are computed again alone."""
        if mels.dim() != 3 or mels.shape[2] != self.arch.n_mels:
            raise ParameterError(f"expected input (batch, frames, {self.arch.n_mels}), got {tuple(mels.shape)}")
        x = self.input_bn(mels[:, None])[:, 0]
        b, t, m = x.shape
        whole = [block(x) for block in self.timbral]
        out = []
        for size in sizes:
            n = t // size
            segs = x[:, : n * size].reshape(b * n, size, m)
            timbral = []
            for block, w in zip(self.timbral, whole):
                w = w[:, :, : n * size].reshape(b, -1, n, size).transpose(1, 2).reshape(b * n, -1, size).clone()
                left, right = block.edges(segs)
                w[:, :, : left.shape[2]], w[:, :, size - right.shape[2] :] = left, right
                timbral.append(w)
            out.append(self._after_frontend(torch.cat(timbral + [block(segs) for block in self.temporal], dim=1)))
        return out

    def _after_frontend(self, front: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Mid end and back end of front-end features ``(batch, 561, frames)``: the levels and the logits."""
        mids, h = [], front
        for i, block in enumerate(self.midend):
            h = block(h) if i == 0 else block(h) + h
            mids.append(h)
        every = torch.cat([front] + mids, dim=1)  # (batch, 753, frames)
        pooled = torch.stack([every.amax(dim=2), every.mean(dim=2)], dim=2).flatten(1)  # max and mean, interleaved
        penultimate = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        return [front, *mids, penultimate], self.output(penultimate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tag logits ``(batch, n_outputs)`` of each segment."""
        return self.forward_intermediates(x)[1]
