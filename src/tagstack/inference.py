"""Tagging and embedding audio with a trained model: the Python API behind ``tagstack tag`` and ``embed``.

Audio of any length is handled as a stream of 29.1 s windows (the clip
length the models were trained on), decoded block by block so memory stays
bounded on hour-long files:

- the **embedding** of a file is the paper's aggregation over *all* its
  segments: each window's per-layer features are segment-wise max-pooled and
  averaged, and windows are averaged weighted by their number of segments,
  which equals averaging over every segment of the file;
- the **tags** of a file are the global classifier applied to that
  embedding;
- the **taggram** is the global classifier applied to each window alone.

A window shorter than 29.1 s (the end of a file) is zero-padded for the
front end, and only its segments that hold audio are aggregated.

Example
-------
>>> from tagstack import Tagger          # doctest: +SKIP
>>> tagger = Tagger()                    # the model shipped with tagstack
>>> tagger.tag("song.mp3", top_k=5)      # [("piano", 0.93), ...]
>>> tagger.embed("song.mp3").shape       # (4096,)
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from .aggregation import aggregate_clips, select_columns
from .artifact import TaggingModel, load_model
from .audio import stream
from .errors import ParameterError, TagstackError
from .frontend import ClipMel
from .training import choose_device

#: The model that ships inside the package (trained on the default corpus).
DEFAULT_MODEL = Path(__file__).parent / "pretrained" / "tagstack-corpus.safetensors"


@dataclass
class Result:
    """What tagging one file gives."""

    path: str
    tags: list[str]
    probs: np.ndarray  # (n_tags,) whole-file probabilities
    seconds: float
    embedding: np.ndarray | None = None  # (n_features,) all layers and scales
    taggram: np.ndarray | None = None  # (windows, n_tags)
    window_starts: np.ndarray | None = None  # seconds

    def top(self, k: int | None = None, threshold: float | None = None) -> list[tuple[str, float]]:
        """Tags sorted by probability: the ``k`` best, or all at or above ``threshold``."""
        order = np.argsort(-self.probs)
        pairs = [(self.tags[i], float(self.probs[i])) for i in order]
        if threshold is not None:
            pairs = [p for p in pairs if p[1] >= threshold]
        return pairs[:k] if k else pairs


class Tagger:
    """A loaded model, ready to tag and embed many files (load it once).

    Parameters
    ----------
    model : str, Path or TaggingModel, optional
        A model file (``.safetensors``); the shipped default model when None.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:0"`` ...
    """

    def __init__(self, model: str | Path | TaggingModel | None = None, *, device: str = "auto") -> None:
        self.device = choose_device(device)
        if isinstance(model, TaggingModel):
            self.model = model.to(self.device)
        else:
            self.model = load_model(model or DEFAULT_MODEL, device=self.device)
        self.frontend = ClipMel(self.model.frontend).to(self.device)
        self.cfg = self.model.frontend
        self._cols = torch.from_numpy(select_columns(self.model.layout, scales=self.model.scales, layers=self.model.layers)).to(self.device)

    @property
    def tags(self) -> list[str]:
        return self.model.tags

    # ------------------------------------------------------------ windows
    def _windows(self, source: str | Path | np.ndarray, sr: int | None) -> Iterator[np.ndarray]:
        n = self.cfg.clip_samples
        if isinstance(source, np.ndarray):
            y = np.asarray(source, dtype=np.float32)
            if y.ndim == 2:
                y = y.mean(axis=0) if y.shape[0] < y.shape[1] else y.mean(axis=1)
            if sr is None:
                raise ParameterError("sr is required when tagging an array")
            if sr != self.cfg.sample_rate:
                import soxr

                y = soxr.resample(y, sr, self.cfg.sample_rate, quality="HQ").astype(np.float32)
            for i in range(0, max(len(y), 1), n):
                yield y[i : i + n]
            return
        rest = np.zeros(0, np.float32)
        for chunk in stream(source, sr=self.cfg.sample_rate, block_seconds=self.cfg.clip_seconds):
            rest = np.concatenate([rest, chunk])
            while rest.size >= n:
                yield rest[:n]
                rest = rest[n:]
        if rest.size:
            yield rest

    def _window_features(self, windows: list[np.ndarray], *, alone: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-window aggregated features of all scales, and how many segments each window gave each scale.

        Full windows run through the front end together. A shorter (last)
        window is transformed at its own length, and only the segments that
        lie entirely within its audio are aggregated; a scale with no such
        segment gets weight 0, unless the file is that window ``alone``
        (shorter than one clip), when one zero-padded segment is used.
        """
        n, hop = self.cfg.clip_samples, self.cfg.hop_length
        scales = sorted(self.model.local)
        full = [w for w in windows if w.size >= n]
        feats, counts = [], []
        if full:
            mels = self.frontend(torch.from_numpy(np.stack([w[:n] for w in full])).to(self.device))
            feats.append(torch.cat([aggregate_clips(self.model.local[s], mels)[0] for s in scales], dim=1))
            counts.append(torch.tensor([[self.cfg.n_frames // s for s in scales]] * len(full), device=self.device, dtype=torch.float32))
        for w in windows[len(full):]:
            audio_frames = -(-w.size // hop)  # frames centred inside the audio
            segs = [audio_frames // s for s in scales]
            if alone and not full:
                segs = [max(1, k) for k in segs]
            frames = max(k * s for k, s in zip(segs, scales))
            mel = None
            if frames:
                y = torch.from_numpy(np.pad(w, (0, max(0, frames * hop - w.size)))).to(self.device)
                mel = self.frontend.logmel.frames_first(y[None])[:, :frames]
            parts = []
            for s, k in zip(scales, segs):
                width = sum(i["channels"] for i in self.model.local[s].feature_info)
                parts.append(aggregate_clips(self.model.local[s], mel[:, : k * s])[0][0] if k else torch.zeros(width, device=self.device))
            feats.append(torch.cat(parts)[None])
            counts.append(torch.tensor([segs], device=self.device, dtype=torch.float32))
        return torch.cat(feats), torch.cat(counts)

    def _column_weights(self) -> torch.Tensor:
        """For every feature column, the index of its scale (to weight windows by their segments)."""
        scales = sorted(self.model.local)
        cols = np.concatenate([[scales.index(b.scale)] * (b.stop - b.start) for b in self.model.layout])
        return torch.from_numpy(cols).to(self.device)

    def _features(self, windows: Iterable[np.ndarray], batch_windows: int = 8) -> tuple[np.ndarray, np.ndarray, float]:
        """Per-window features, the whole-source embedding (segment-weighted mean) and the duration."""
        col_scale = self._column_weights()
        per_window, total, weight, samples = [], None, None, 0
        pending: list[np.ndarray] = []

        def flush() -> None:
            nonlocal total, weight
            f, c = self._window_features(pending, alone=total is None)
            w = c[:, col_scale]  # segments behind each column
            total = (f * w).sum(0) if total is None else total + (f * w).sum(0)
            weight = w.sum(0) if weight is None else weight + w.sum(0)
            per_window.append(f.cpu().numpy())
            pending.clear()

        with torch.inference_mode():
            for w in windows:
                samples += w.size
                pending.append(w)
                if len(pending) == batch_windows:
                    flush()
            if pending:
                flush()
        if total is None:
            raise ParameterError("no audio")
        return np.concatenate(per_window), (total / weight).cpu().numpy(), samples / self.cfg.sample_rate

    def _scan(self, source, sr: int | None) -> tuple[np.ndarray, np.ndarray, float]:
        return self._features(self._windows(source, sr))

    def _classify(self, feats: np.ndarray) -> np.ndarray:
        if self.model.global_model is None:
            raise ParameterError("this model has no global classifier (stage 3); it can embed but not tag")
        with torch.inference_mode():
            x = torch.from_numpy(np.atleast_2d(feats)).to(self.device)[:, self._cols]
            return self.model.global_model.predict_proba(x).cpu().numpy()

    # ------------------------------------------------------------ public API
    def predict(self, source: str | Path | np.ndarray, *, sr: int | None = None, taggram: bool = False) -> Result:
        """Whole-file tag probabilities (and, if asked, the taggram) of a file or a mono array."""
        windows, embedding, seconds = self._scan(source, sr)
        has_global = self.model.global_model is not None  # a model of local CNNs only can still embed
        probs = self._classify(embedding)[0] if has_global else np.full(len(self.tags), np.nan)
        result = Result(path=str(source) if not isinstance(source, np.ndarray) else "<array>", tags=self.tags, probs=probs,
                        seconds=seconds, embedding=embedding)
        if taggram and has_global:
            result.taggram = self._classify(windows)
            result.window_starts = np.arange(len(windows)) * self.cfg.clip_seconds
        return result

    def predict_many(self, paths: Iterable[str | Path], *, taggram: bool = False, workers: int | None = None) -> Iterator[Result | TagstackError]:
        """Tag many files on all cores: each worker thread decodes and runs one file at a time.

        Yields, in input order, a :class:`Result` or the :class:`TagstackError`
        that made a file unusable (the others go on). Torch ops run single
        threaded meanwhile, so decoding and the networks of different files
        fill the cores instead of contending inside each op.
        """
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        threads = torch.get_num_threads()
        workers = workers or threads

        def one(path) -> Result | TagstackError:
            try:
                return self.predict(path, taggram=taggram)
            except TagstackError as e:
                return e

        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                it = iter(paths)
                queue = deque(pool.submit(one, p) for p in itertools.islice(it, 2 * workers))
                while queue:
                    result = queue.popleft().result()
                    nxt = next(it, None)
                    if nxt is not None:
                        queue.append(pool.submit(one, nxt))
                    yield result
        finally:
            torch.set_num_threads(threads)

    def tag(self, source, *, sr: int | None = None, top_k: int | None = 5, threshold: float | None = None) -> list[tuple[str, float]]:
        """The best tags of a file or array as ``(tag, probability)`` pairs."""
        if self.model.global_model is None:
            raise ParameterError("this model has no global classifier (stage 3); it can embed but not tag")
        return self.predict(source, sr=sr).top(top_k, threshold)

    def embed(self, source, *, sr: int | None = None, scales: Iterable[int] | None = None, layers: Iterable[int] | None = None) -> np.ndarray:
        """The multi-level, multi-scale feature vector of a file (chosen scales and layers; all by default)."""
        _, embedding, _ = self._scan(source, sr)
        cols = select_columns(self.model.layout, scales=scales, layers=layers)
        return embedding[cols]

    def taggram(self, source, *, sr: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tag probabilities per 29.1 s window: ``(windows, n_tags)`` and the window start times."""
        r = self.predict(source, sr=sr, taggram=True)
        return r.taggram, r.window_starts

