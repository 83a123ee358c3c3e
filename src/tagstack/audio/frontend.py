"""Log-mel front ends; the default is the paper's 128-band spectrogram with magnitude compression.

Parameters (Sec. III-B): 22,050 Hz, 1,024-sample Hann window, 512-sample hop,
128 mel bands (Slaney's mel scale and area normalisation, as librosa's
default), magnitude (not power) spectrum, compressed as ``log(1 + 10 |A|)``.
The pretrained backbones read others through the same code
(:class:`~tagstack.config.FrontEndConfig`: musicnn's 16 kHz, 512/256, 96
bands of the power spectrum, ``log10(1 + 10**4 mel)``; Won et al.'s
torchaudio front end, 96 HTK bands up to 8 kHz of the power spectrum in
decibels, ``10 log10(max(mel, 1e-10))``, edges padded by reflection).

Frame alignment
---------------
Frames are centred (``center=True``): the signal is zero-padded by ``n_fft/2``
samples on both sides (or reflected, ``pad_mode="reflect"``, as
``torch.stft`` does by default), so frame ``t`` is centred on sample
``t * hop``, exactly as ``librosa.stft`` does by default. A 29.1 s clip (641,655 samples) gives
1 + 641,655 // 512 = 1,254 centred frames; the first 1,250 are kept (frames
centred on 0 s to 29.04 s). Shorter audio is zero-padded at the end to 29.1 s
before the transform, longer audio is cut (see :func:`fit_clip`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..config import FrontEndConfig
from ..errors import ParameterError


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    linear = 3.0 * f / 200.0
    log_step = np.log(6.4) / 27.0
    above = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / log_step
    return np.where(f >= 1000.0, above, linear)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(m, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(log_step * (m - 15.0)), 200.0 * m / 3.0)


def mel_filterbank(
    *, sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None, scale: str = "slaney"
) -> np.ndarray:
    """Triangular mel filters: Slaney's scale with area normalisation (librosa's default), or ``scale="htk"``:
    HTK's scale, ``2595 log10(1 + f / 700)``, with triangles of peak 1 (torchaudio's default).

    Returns
    -------
    fb : np.ndarray [shape=(n_mels, n_fft // 2 + 1), dtype=float32]
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ParameterError(f"need 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}")
    if scale not in ("slaney", "htk"):
        raise ParameterError(f"mel scale must be 'slaney' or 'htk', got {scale!r}")
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    if scale == "htk":
        to_mel, to_hz = (lambda f: 2595.0 * np.log10(1.0 + f / 700.0)), (lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0))
    else:
        to_mel, to_hz = hz_to_mel, mel_to_hz
    edges = to_hz(np.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2))
    widths = np.diff(edges)
    rising = (bins[None, :] - edges[:-2, None]) / widths[:-1, None]
    falling = (edges[2:, None] - bins[None, :]) / widths[1:, None]
    fb = np.maximum(0.0, np.minimum(rising, falling))
    if scale != "htk":
        fb *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return fb.astype(np.float32)


def fit_clip(y: np.ndarray, n_samples: int) -> np.ndarray:
    """Zero-pad (at the end) or cut ``y`` to exactly ``n_samples`` samples."""
    if y.shape[-1] >= n_samples:
        return y[..., :n_samples]
    pad = [(0, 0)] * (y.ndim - 1) + [(0, n_samples - y.shape[-1])]
    return np.pad(y, pad)


class LogMel(nn.Module):
    """Waveform ``(..., samples)`` -> compressed log-mel (or decibel) ``(..., n_mels, frames)``.

    The Hann window and mel filterbank are buffers, so ``.to(device)`` moves
    them and batches run on the GPU when the module is there.
    :meth:`frames_first` gives the same numbers as ``(..., frames, n_mels)``,
    the layout the CNNs read, without a transposing copy.

    Examples
    --------
    >>> import torch
    >>> mel = LogMel()
    >>> mel(torch.zeros(2, 641655)).shape
    torch.Size([2, 128, 1254])
    """

    def __init__(self, config: FrontEndConfig | None = None) -> None:
        super().__init__()
        self.config = config or FrontEndConfig()
        c = self.config
        self.register_buffer("window", torch.hann_window(c.n_fft, periodic=True), persistent=False)
        fb = mel_filterbank(sample_rate=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, f_min=c.f_min, f_max=c.f_max, scale=c.mel_scale)
        self.register_buffer("filterbank_t", torch.from_numpy(np.ascontiguousarray(fb.T)), persistent=False)
        # A mel filter spans a few FFT bins only (about 1,000 non-zeros of 65,664). On the CPU the
        # product is done band group by band group over each group's bins, 8x fewer multiply-adds
        # than the dense product; GPUs prefer the one dense product.
        self._groups = []
        for i, (lo, hi, weights) in enumerate(_band_groups(fb, size=16)):
            self._groups.append((lo, hi))
            self.register_buffer(f"band_weights_{i}", weights, persistent=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``(..., samples) -> (..., n_mels, frames)``, librosa's layout (a view of :meth:`frames_first`)."""
        return self.frames_first(y).transpose(-1, -2)

    def frames_first(self, y: torch.Tensor) -> torch.Tensor:
        """``(..., samples) -> (..., frames, n_mels)``."""
        shape = y.shape[:-1]
        flat = y.reshape(-1, y.shape[-1]).to(self.window.dtype)
        if flat.device.type == "cpu" and len(flat) > 1:  # on the CPU one clip at a time stays in cache
            out = torch.stack([self._transform(row) for row in flat])
        else:
            out = self._transform(flat)
        return out.reshape(*shape, *out.shape[-2:])

    def _transform(self, y: torch.Tensor) -> torch.Tensor:
        c = self.config
        half = c.n_fft // 2
        # Centred frames, as torch.stft(center=True) and librosa.stft frame them (zeros, or a reflection of the edges).
        if c.pad_mode == "reflect":
            if y.shape[-1] <= half:
                raise ParameterError(f"reflect padding needs more than n_fft/2 = {half} samples, got {y.shape[-1]}")
            padded = nn.functional.pad(y.unsqueeze(-2), (half, half), mode="reflect").squeeze(-2)
        else:
            padded = nn.functional.pad(y, (half, half))
        frames = padded.unfold(-1, c.n_fft, c.hop_length)
        spec = torch.view_as_real(torch.fft.rfft(frames * self.window)).flatten(-2)
        re, im = spec[..., 0::2], spec[..., 1::2]
        mag = torch.addcmul(re.square(), im, im)  # |A|^2 in one pass, faster than complex abs()
        if c.power == 1.0:
            mag = mag.sqrt_()
        if mag.device.type == "cpu":
            mel = torch.cat([mag[..., lo:hi] @ getattr(self, f"band_weights_{i}") for i, (lo, hi) in enumerate(self._groups)], dim=-1)
        else:
            mel = mag @ self.filterbank_t
        if c.decibels:  # torchaudio's AmplitudeToDB of a power spectrum (reference 1, floor 1e-10, no top_db)
            return torch.log10(mel.clamp_(min=1e-10)).mul_(10.0)
        out = torch.log1p(mel.mul_(c.compression))
        return out.div_(math.log(10.0)) if c.log10 else out


def _band_groups(fb: np.ndarray, *, size: int) -> list[tuple[int, int, torch.Tensor]]:
    """Split a filterbank into groups of ``size`` bands, each with the FFT bins it covers.

    Returns ``(first_bin, end_bin, weights (end_bin - first_bin, bands))`` per
    group; concatenating ``mag[..., first:end] @ weights`` over the groups is
    ``mag @ fb.T``.
    """
    groups = []
    for start in range(0, len(fb), size):
        part = fb[start : start + size]
        used = np.flatnonzero(part.any(axis=0))
        lo, hi = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 0)
        groups.append((lo, hi, torch.from_numpy(np.ascontiguousarray(part[:, lo:hi].T))))
    return groups


class ClipMel(nn.Module):
    """A fixed-length clip's frames as the CNNs read them: ``(..., samples) -> (..., n_frames, n_mels)``.

    The input is padded or cut to ``clip_samples`` first; the first
    ``n_frames`` centred frames are kept (1,250 for a 29.1 s clip).
    """

    def __init__(self, config: FrontEndConfig | None = None) -> None:
        super().__init__()
        self.logmel = LogMel(config)
        self.config = self.logmel.config

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``(..., samples) -> (..., n_frames, n_mels)``: one clip's frames, the input padded or cut to a clip first."""
        n = self.config.clip_samples
        if y.shape[-1] < n:
            y = torch.nn.functional.pad(y, (0, n - y.shape[-1]))
        return self.logmel.frames_first(y[..., :n])[..., : self.config.n_frames, :]
