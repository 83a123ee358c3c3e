"""Clip-long windows of a stream of audio, and their aggregated features: what a :class:`~.tagger.Tagger` runs.

Audio of any length is cut into windows of the models' clip length (29.1 s
for the paper's), decoded block by block so memory stays bounded on
hour-long files (:func:`cut_windows`). The windows of several sources go
through the networks together, a batch at a time (:func:`source_features`).
The back-to-back windows make a file's embedding: each window's features
are weighted by its number of segments, which equals averaging over every
segment of the file (:class:`~tagstack.models.aggregation.SegmentMean`). A
taggram adds windows every ``hop`` samples. A window shorter than a clip
(the end of a file, or a file shorter than a clip) is zero-padded for the
front end and only its whole segments of audio count; a window that is a
whole file shorter than one segment keeps its first, zero-padded segment
(:func:`~tagstack.models.aggregation.whole_segments`, the rule training
follows too).

A model whose networks read front ends at several sample rates gets one
decoding, resampled to each rate (:func:`~tagstack.audio.io.stream`); a
window is the same stretch of time at every rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..audio.frontend import ClipMel
from ..errors import AudioError, AudioTooLongError, ParameterError, TagstackError
from ..models.aggregation import SegmentMean, whole_segments
from ..models.tagging_model import TaggingModel


@dataclass
class Window:
    """One clip-long stretch of a source at each decoding rate, and what it is used for."""

    audio: tuple[np.ndarray, ...]
    start: int  # first sample, at the first rate
    clip: bool  # one of the back-to-back windows that make the file's embedding
    gram: bool  # a column of the taggram


def cut_windows(
    blocks: Iterable[tuple[np.ndarray, ...]],
    *,
    rates: Sequence[int],
    clip_seconds: float,
    name: str,
    min_samples: Sequence[int],
    gram_hop: int | None = None,
    max_seconds: float | None = None,
    min_tail: int = 0,
) -> Iterator[Window]:
    """Clip-length windows of decoded blocks (one array per rate), in one pass with a bounded buffer.

    Parameters
    ----------
    blocks : iterable of tuples of np.ndarray
        Consecutive mono blocks, one array per rate of ``rates``.
    rates : sequence of int
        The decoding rates; positions (``Window.start``, ``gram_hop``, ``min_tail``) are samples at the first.
    clip_seconds : float
        Window length.
    name : str
        The source, for error messages.
    min_samples : sequence of int
        Fewer samples than this at any rate (one spectrogram frame) is refused.
    gram_hop : int, optional
        Taggram windows start every ``gram_hop`` samples while they fit, plus one ending at the end of the
        file when the others leave at least ``min_tail`` samples uncovered; a window that is both a
        back-to-back and a taggram window is yielded once.
    max_seconds : float, optional
        More audio than this is refused (:class:`~tagstack.errors.AudioTooLongError`) as soon as it is decoded.
    """
    r0 = rates[0]
    n = [int(round(clip_seconds * r)) for r in rates]

    def at(p: int, k: int) -> int:
        return p if k == 0 else int(round(p * rates[k] / r0))

    bufs = [np.zeros(0, np.float32) for _ in rates]
    buf_start, total = [0] * len(rates), [0] * len(rates)
    next_clip, next_gram, gram_end = 0, 0 if gram_hop else None, 0
    limit = None if max_seconds is None else max_seconds * r0

    def take(k: int, start: int, whole: bool) -> np.ndarray:
        lo = min(at(start, k), total[k])
        return bufs[k][lo - buf_start[k] : (lo + n[k] if whole else total[k]) - buf_start[k]]

    for parts in blocks:
        for k, block in enumerate(parts):
            bufs[k] = np.concatenate([bufs[k], block]) if bufs[k].size else block
            total[k] += block.size
        if limit is not None and total[0] > limit:
            raise AudioTooLongError(f"{name}: more than {max_seconds:g} s of audio (the limit is {max_seconds:g} s)")
        while True:
            start = next_clip if next_gram is None else min(next_clip, next_gram)
            if any(at(start, k) + n[k] > total[k] for k in range(len(rates))):
                break
            clip, gram = start == next_clip, start == next_gram
            yield Window(tuple(take(k, start, True) for k in range(len(rates))), start, clip, gram)
            if clip:
                next_clip += n[0]
            if gram:
                next_gram += gram_hop
                gram_end = start + n[0]
        keep = min(next_clip, next_gram if next_gram is not None else next_clip)
        for k in range(len(rates)):
            cut = min(at(keep, k), max(0, total[k] - n[k]))
            bufs[k], buf_start[k] = bufs[k][cut - buf_start[k] :], cut
    for k, rate in enumerate(rates):
        if total[k] < min_samples[k]:  # not one spectrogram frame of sound: its "tags" would be the padding's
            raise AudioError(
                f"{name}: {total[k]} samples at {rate} Hz, too short to tag "
                f"(at least {min_samples[k]}, {1000 * min_samples[k] / rate:.0f} ms)"
            )
    tail = max(0, total[0] - n[0])
    gram_tail = next_gram is not None and total[0] - gram_end >= min(min_tail, total[0])
    if next_clip < total[0]:
        yield Window(tuple(take(k, next_clip, False) for k in range(len(rates))), next_clip, True, gram_tail and tail == next_clip)
    if gram_tail and tail != next_clip:
        yield Window(tuple(bufs[k][max(0, total[k] - n[k]) - buf_start[k] :] for k in range(len(rates))), tail, False, True)


class WindowFeatures:
    """A model's aggregated features of batches of windows: its front ends computed once per window and rate.

    Parameters
    ----------
    model : TaggingModel
    rates : sequence of int
        The decoding rates the windows carry (each front end reads the one equal to its sample rate).
    device : torch.device
    """

    def __init__(self, model: TaggingModel, rates: Sequence[int], device: torch.device) -> None:
        self.model, self.device, self.rates = model, device, list(rates)
        self.mels = [ClipMel(fe).to(device) for fe in model.frontends]
        self.rate_of = [list(rates).index(fe.sample_rate) for fe in model.frontends]
        scales = model.local_scales
        self.sizes = [model.branch(s).frames for s in scales]
        self.fe_of = [model.frontend_of(s) for s in scales]
        self.widths = [sum(info["channels"] for info in model.network_of(s).feature_info) for s in scales]
        #: for every feature column, the index of its branch (to weight windows by their segments)
        self.column_branch = torch.from_numpy(np.concatenate([[scales.index(b.scale)] * (b.stop - b.start) for b in model.layout])).to(
            device
        )

    def __call__(
        self, windows: Sequence[tuple[np.ndarray, ...]], alone: Sequence[bool]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Features ``(windows, n_features)``, segments per branch ``(windows, branches)`` and, for a model tagging
        through a network's own outputs, those outputs ``(windows, n_tags)``; rows in the order of ``windows``."""
        model, n, dev = self.model, len(windows), self.device
        parts = [torch.zeros(n, w, device=dev) for w in self.widths]
        counts = torch.zeros(n, len(self.widths), device=dev)
        own = torch.zeros(n, len(model.tags), device=dev) if model.tags_from is not None else None
        lone = torch.tensor([bool(a) for a in alone], device=dev)
        for i, fe in enumerate(model.frontends):
            sizes = np.array([len(w[self.rate_of[i]]) for w in windows])
            mine = [b for b, f in enumerate(self.fe_of) if f == i]
            for rows, mels, frames in self._mels(i, windows, sizes):
                idx = torch.from_numpy(rows).to(dev)
                audio = torch.full((len(rows),), fe.n_frames, device=dev) if frames is None else frames
                only = [mels if k == i else None for k in range(len(model.frontends))]
                counted = None if frames is None else [frames if k == i else None for k in range(len(model.frontends))]
                got = model.branch_features(only, counted, scales=[model.local_scales[b] for b in mine])
                for b in mine:
                    scale = model.local_scales[b]
                    f, p = got[scale]
                    parts[b][idx] = f
                    counts[idx, b] = whole_segments(audio, self.sizes[b], alone=lone[idx]).float()
                    if scale == model.tags_from:
                        own[idx] = p
        return torch.cat(parts, dim=1), counts, own

    def _mels(self, i: int, windows: Sequence[tuple[np.ndarray, ...]], sizes: np.ndarray):
        """Front end ``i`` of the full windows (one batch) and of the shorter ones (cut to what their segments need,
        with their frames of audio): ``(rows, mels, frames or None)``."""
        fe, k = self.model.frontends[i], self.rate_of[i]
        full, short = np.flatnonzero(sizes >= fe.clip_samples), np.flatnonzero(sizes < fe.clip_samples)
        if len(full):
            audio = np.stack([windows[r][k][: fe.clip_samples] for r in full])
            yield full, self.mels[i](torch.from_numpy(audio).to(self.device)), None
        if len(short):
            audio_frames = np.minimum(fe.n_frames, -(-sizes[short] // fe.hop_length))
            longest = max(self.sizes[b] for b, f in enumerate(self.fe_of) if f == i)
            t = int(min(fe.n_frames, max(audio_frames.max(), longest)))
            width = t * fe.hop_length + fe.n_fft // 2  # every sample the first t frames read
            audio = np.stack([np.pad(windows[r][k][:width], (0, max(0, width - sizes[r]))) for r in short])
            mels = self.mels[i].logmel.frames_first(torch.from_numpy(audio).to(self.device))[:, :t]
            yield short, mels, torch.from_numpy(audio_frames).to(self.device)


class SourceFeatures:
    """What the windows of one source add up to: the mean of its features over every segment (and of a
    network's own outputs, for a model tagging through them), the features of its taggram windows, its length.

    Kept while its windows pass through the networks among other sources' (:func:`source_features`), so
    no more than a batch of any source's windows is ever held.
    """

    def __init__(self) -> None:
        self.features = SegmentMean()
        self.own = SegmentMean()
        self.gram_feats: list[np.ndarray] = []
        self.gram_own: list[np.ndarray] = []
        self.gram_starts: list[int] = []
        #: samples at the first decoding rate in the back-to-back windows: the audio's length
        self.samples = 0

    def add(
        self,
        feats: torch.Tensor,
        weights: torch.Tensor,
        *,
        own: tuple[torch.Tensor, torch.Tensor] | None,
        gram: list[int],
        starts: list[int],
    ) -> None:
        """Add a batch of this source's windows: features ``(windows, n_features)`` weighted per column by
        ``weights``, the network's own outputs and their weights ``(windows,)`` (None without), and which rows
        (``gram``) are taggram windows, starting at ``starts``."""
        self.features.add(feats, weights)
        if own is not None:
            self.own.add(*own)
        if gram:
            self.gram_feats.append(feats[gram].cpu().numpy())
            if own is not None:
                self.gram_own.append(own[0][gram].cpu().numpy())
            self.gram_starts.extend(starts)

    def embedding(self) -> np.ndarray:
        """The mean over every segment of the source (windows weighted by their segments)."""
        return self.features.mean().cpu().numpy()

    def own_probs(self) -> np.ndarray:
        """A network's own outputs, averaged over every segment of its branch."""
        return self.own.mean().cpu().numpy()

    def taggram_features(self) -> tuple[np.ndarray, np.ndarray]:
        """The features of the taggram windows ``(n_windows, n_features)`` and their starts (samples at the first rate)."""
        width = self.features.total.shape[0]
        feats = np.concatenate(self.gram_feats) if self.gram_feats else np.zeros((0, width), np.float32)
        return feats, np.asarray(self.gram_starts)


def source_features(sources: list[Iterator[Window]], *, features: WindowFeatures, batch: int) -> list[SourceFeatures | TagstackError]:
    """Run the windows of several sources through the networks together, ``batch`` per pass.

    Windows of consecutive sources share a pass, so many short files fill
    a GPU batch instead of each taking a pass of its own; each source keeps
    its own :class:`SourceFeatures`. A source whose decoding fails mid-way
    gets its error in its place and its pending windows are dropped; the
    others go on.
    """
    model, device = features.model, features.device
    col_branch = features.column_branch
    own_branch = model.local_scales.index(model.tags_from) if model.tags_from is not None else None
    full = round(model.frontends[0].clip_seconds * features.rates[0])  # a clip's samples at the first rate
    aggs = [SourceFeatures() for _ in sources]
    out: list[SourceFeatures | TagstackError] = list(aggs)
    pending: list[tuple[int, Window, bool]] = []  # (source, window, alone)

    def flush() -> None:
        f, c, own = features([w.audio for _, w, _ in pending], [a for _, _, a in pending])
        clip = torch.tensor([w.clip for _, w, _ in pending], device=device)
        weights = c[:, col_branch] * clip[:, None]  # segments behind each column; taggram-only windows weigh 0
        owners = np.array([k for k, _, _ in pending])
        for k in dict.fromkeys(owners.tolist()):
            rows = np.flatnonzero(owners == k)
            sel = torch.from_numpy(rows).to(device)
            mine = None if own is None else (own[sel], c[sel, own_branch] * clip[sel])
            gram = [int(i) for i, r in enumerate(rows) if pending[r][1].gram]
            aggs[k].add(f[sel], weights[sel], own=mine, gram=gram, starts=[pending[rows[i]][1].start for i in gram])
        pending.clear()

    with torch.inference_mode():
        for k, windows in enumerate(sources):
            first = True
            try:
                for win in windows:
                    if win.clip:
                        aggs[k].samples += win.audio[0].size
                    pending.append((k, win, first and win.audio[0].size < full))
                    first = False
                    if len(pending) >= batch:
                        flush()
            except TagstackError as e:
                out[k] = e
                pending[:] = [p for p in pending if p[0] != k]
        if pending:
            flush()
    for k, agg in enumerate(aggs):
        if not isinstance(out[k], TagstackError) and (agg.features.empty or agg.samples == 0):
            out[k] = ParameterError("no audio")
    return out
