"""Tagging and embedding audio with a trained model: the Python API behind ``tagstack tag`` and ``embed``.

- the **embedding** of a file is the paper's aggregation over *all* its
  segments (windows weighted by their number of segments, :mod:`.windows`);
- the **tags** of a file are the global classifier applied to that
  embedding (or, for a pretrained backbone on its own, its own outputs
  averaged over the same segments);
- the **taggram** is the classifier applied to clip-long windows alone:
  back to back by default, or starting every ``hop`` seconds.

Example
-------
>>> from tagstack import Tagger          # doctest: +SKIP
>>> tagger = Tagger()                    # the model shipped with tagstack
>>> tagger.tag("song.mp3", top_k=5)      # [("piano", 0.93), ...]
>>> tagger.embed("song.mp3").shape       # (n_features,)
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..checks import BATCH_WINDOWS, DEFAULT_TOP_K, MAX_SECONDS, check_hop, check_selection
from ..errors import AudioError, ParameterError, StoppedError, TagstackError
from ..models.file import load_model
from ..models.zoo import resolve_model
from ..models.tagging_model import TaggingModel, require_tagger
from ..runtime import choose_device
from .many import one_thread_per_file, shared_passes
from .result import Result
from .sources import Source, as_source, decoding_rates, model_stream, source_name
from .windows import Window, WindowFeatures, cut_windows, source_features


def _until(stop: threading.Event, windows: Iterator[Window], name: str) -> Iterator[Window]:
    """``windows``, ending in a :class:`StoppedError` once ``stop`` is set."""
    for window in windows:
        if stop.is_set():
            raise StoppedError(f"{name}: stopped before its end (its caller went away)")
        yield window


class Tagger:
    """A loaded model, ready to tag and embed many files (load it once).

    Parameters
    ----------
    model : str, Path or TaggingModel, optional
        A model file (``.safetensors``), or the name of a shipped model (``tagstack info
        --list``): ``"pretrained"`` (the default: musicnn's MagnaTagATune network,
        every layer aggregated, a global classifier trained on real tags),
        ``"pretrained-large"`` (musicnn's MTT and MSD networks, more accurate and
        half as fast), ``"real"`` (the paper's five CNNs trained here from scratch),
        ``"musicnn-mtt"`` (musicnn's own 50 tags) ...
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:0"`` ...

    Attributes
    ----------
    model : TaggingModel
        The loaded model, in evaluation mode on ``device``.
    tags : list[str]
        The names of the model's outputs (``n_tags``).
    device : torch.device
        Where the networks run.

    Examples
    --------
    >>> tagger = Tagger()                                  # doctest: +SKIP
    >>> tagger.tag("song.mp3", top_k=3)                    # [(tag, probability), ...], best first
    >>> tagger.predict(samples, sr=44100).probs.shape      # (n_tags,)
    >>> tagger.embed("song.mp3", layers=[1, 2]).shape      # (n_columns,): the chosen levels of every scale
    """

    def __init__(self, model: str | Path | TaggingModel | None = None, *, device: str = "auto") -> None:
        self.device = choose_device(device)
        if isinstance(model, TaggingModel):
            self.model = model.to(self.device)
        else:
            self.model = load_model(resolve_model(model), device=self.device)
        self.model.eval()
        self.cfg = self.model.frontends[0]  # the first decoding rate's: window length and positions are counted in it
        self.rates = decoding_rates(self.model)
        self.features = WindowFeatures(self.model, self.rates, self.device)

    @property
    def tags(self) -> list[str]:
        """The names of the model's outputs, in the order of :attr:`Result.probs`."""
        return self.model.tags

    # ------------------------------------------------------------ windows
    def _windows(
        self, source: str | Path | np.ndarray, sr: int | None, gram_hop: int | None = None, max_seconds: float | None = None
    ) -> Iterator[Window]:
        """Clip-length windows of the source, through the one decoder (:func:`~.windows.cut_windows`)."""
        m = self.model
        min_samples = [max(fe.n_fft for fe in m.frontends if fe.sample_rate == r) for r in self.rates]
        longest = max(
            m.branch(s).frames * m.frontends[m.frontend_of(s)].hop_length / m.frontends[m.frontend_of(s)].sample_rate
            for s in m.local_scales
        )
        yield from cut_windows(
            model_stream(source, m, sr=sr),
            rates=self.rates,
            clip_seconds=self.cfg.clip_seconds,
            name=source_name(source),
            min_samples=min_samples,
            gram_hop=gram_hop,
            max_seconds=max_seconds,
            min_tail=int(round(longest * self.rates[0])),
        )

    def _batch_windows(self, batch_windows: int | None) -> int:
        """Windows per network pass: enough to fill a GPU, few on a CPU (where batching gains little)."""
        if batch_windows is None:
            return 64 if self.device.type == "cuda" else 8
        return BATCH_WINDOWS.check(batch_windows)

    def _classify(self, feats: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model.proba_from_features(torch.from_numpy(np.atleast_2d(feats)).to(self.device)).cpu().numpy()

    # ------------------------------------------------------------ public API
    def predict(
        self,
        source: Source,
        *,
        sr: int | None = None,
        taggram: bool = False,
        hop: float | None = None,
        max_seconds: float | None = None,
        stop: threading.Event | None = None,
    ) -> Result:
        """Whole-file tag probabilities (and, if asked, the taggram) of a file or of samples at ``sr`` Hz (:data:`~.sources.Source`).

        ``hop`` is the time in seconds between the starts of taggram windows
        (each one clip long, 29.1 s for the paper's models); the default is
        the clip length, windows back to back. A smaller hop gives a finer
        taggram at the cost of one network pass per window. The file's own
        tags and embedding do not depend on it. With ``max_seconds``, audio
        that decodes to more is refused (:class:`~tagstack.errors.AudioTooLongError`)
        as soon as decoding passes it, whatever its header claims: a bound
        on what one input may cost (the service's ``--max-seconds``).

        Parameters
        ----------
        source : str, bytes, os.PathLike, np.ndarray, torch.Tensor or sequence of float
            A file (any format libsndfile or FFmpeg reads), or samples: ``[shape=(n,)]`` mono, or
            ``[shape=(channels, n)]`` or ``[shape=(n, channels)]`` (the shorter axis is taken as channels);
            float, or integer PCM (scaled as soundfile reads it).
        sr : int, optional
            The sample rate of array samples, in Hz (required for them; files bring their own).
        taggram : bool
            Also compute the taggram (``Result.taggram`` and ``Result.window_starts``).
        hop : float > 0, optional
            Seconds between the starts of taggram windows (default: one clip length).
        max_seconds : float > 0, optional
            Refuse audio that decodes to more than this many seconds.
        stop : threading.Event, optional
            Set from another thread to end the analysis at the next window
            (:class:`~tagstack.errors.StoppedError`): the service stops the
            work of a client that went away.

        Returns
        -------
        result : Result
            ``probs`` : np.ndarray [shape=(n_tags,)], the whole file's tag probabilities, in the order of
            :attr:`tags`; ``embedding`` : np.ndarray [shape=(n_features,)]; ``seconds``, the audio's length;
            with ``taggram``: ``taggram`` : np.ndarray [shape=(n_windows, n_tags)] and ``window_starts`` :
            np.ndarray [shape=(n_windows,)] in seconds.

        Raises
        ------
        AudioError
            A file that cannot be decoded, is empty or holds non-finite samples (or, with ``max_seconds``,
            :class:`~tagstack.errors.AudioTooLongError`).
        ParameterError
            A malformed argument (an array without ``sr``, a bad shape, ``hop`` out of range ...).
        StoppedError
            ``stop`` was set.
        """
        result = self.predict_batch([source], sr=sr, taggram=taggram, hop=hop, max_seconds=max_seconds, stop=stop)[0]
        if isinstance(result, TagstackError):
            raise result
        return result

    def predict_batch(
        self,
        sources: Iterable[Source],
        *,
        sr: int | Sequence[int | None] | None = None,
        taggram: bool = False,
        hop: float | None = None,
        embed_only: bool = False,
        batch_windows: int | None = None,
        names: list[str] | None = None,
        max_seconds: float | None = None,
        stop: threading.Event | None = None,
    ) -> list[Result | TagstackError]:
        """:meth:`predict` for several sources at once, their windows sharing network passes.

        This is what fills a GPU with short files (a 30 s file is one
        window): ``batch_windows`` windows go through the networks together
        (default 64 on CUDA, 8 on a CPU). Returns, in input order, a
        :class:`Result` or the :class:`TagstackError` that made that source
        unusable. Each result equals :meth:`predict`'s for the same source up
        to float rounding in the batched convolutions. ``embed_only`` skips the
        classifier (and works for models without one). ``names`` label the
        results (``Result.path``) instead of the paths (arrays: ``"<array>"``);
        ``sr`` is the rate of array sources, one for all or one per source;
        ``max_seconds`` and ``stop`` as in :meth:`predict`.

        Parameters
        ----------
        sources : iterable of Source
            Files or sample arrays, as :meth:`predict` takes them.
        sr : int, or sequence of int or None, optional
            The sample rate of the array sources: one for all, or one per source (None for a file).
        taggram : bool
            Also compute each source's taggram.
        hop : float > 0, optional
            Seconds between the starts of taggram windows (default: one clip length).
        embed_only : bool
            Compute the embeddings only (``Result.tags`` and ``Result.probs`` are then empty).
        batch_windows : int > 0, optional
            Windows per network pass (default 64 on CUDA, 8 on a CPU).
        names : list[str], optional
            One name per source for ``Result.path`` (default: the path, or ``"<array>"``).
        max_seconds : float > 0, optional
            Refuse a source that decodes to more than this many seconds (that source alone).
        stop : threading.Event, optional
            Set from another thread to end every source still under analysis (each a
            :class:`~tagstack.errors.StoppedError`).

        Returns
        -------
        results : list[Result or TagstackError]
            One per source, in input order: its :class:`Result` (as :meth:`predict` describes it),
            or the error that made it unusable.
        """
        sources = [as_source(s) for s in sources]
        rates = list(sr) if isinstance(sr, (list, tuple)) else [sr] * len(sources)
        if len(rates) != len(sources):
            raise ParameterError(f"{len(rates)} sample rates for {len(sources)} sources")
        if max_seconds is not None:
            MAX_SECONDS.check(max_seconds)
        gram_hop = self._gram_hop(hop) if taggram and not embed_only else None
        if names is None:
            names = [source_name(s) for s in sources]
        elif len(names) != len(sources):
            raise ParameterError(f"{len(names)} names for {len(sources)} sources")
        windows = [self._windows(s, r, gram_hop, max_seconds) for s, r in zip(sources, rates)]
        if stop is not None:
            windows = [_until(stop, w, name) for w, name in zip(windows, names)]
        return self._results(windows, names, gram_hop, embed_only, batch_windows)

    def _results(
        self, sources: list[Iterator[Window]], names: list[str], gram_hop: int | None, embed_only: bool, batch_windows: int | None = None
    ) -> list[Result | TagstackError]:
        """The :class:`Result` (or error) of each source's windows, their windows sharing network passes."""
        aggs = source_features(sources, features=self.features, batch=self._batch_windows(batch_windows))
        ok = [k for k, a in enumerate(aggs) if not isinstance(a, TagstackError)]
        tagging = self.model.can_tag and not embed_only  # a model of local networks only can still embed
        own = self.model.head is None
        embeddings = np.stack([aggs[k].embedding() for k in ok]) if ok else np.zeros((0, 0), np.float32)
        if tagging and ok:
            probs = np.stack([aggs[k].own_probs() for k in ok]) if own else self._classify(embeddings)
        results: list[Result | TagstackError] = list(aggs)
        for row, k in enumerate(ok):
            seconds = aggs[k].samples / self.cfg.sample_rate
            r = Result(
                path=names[k],
                tags=self.tags if tagging else [],
                probs=probs[row] if tagging else np.zeros(0, np.float32),
                seconds=seconds,
                embedding=embeddings[row],
                groups=self.model.groups if tagging else {},
            )
            if gram_hop is not None and tagging:
                feats, starts = aggs[k].taggram_features()
                r.taggram = (
                    (np.concatenate(aggs[k].gram_own) if aggs[k].gram_own else np.zeros((0, len(self.tags)), np.float32))
                    if own
                    else self._classify(feats)
                )
                r.window_starts = starts / self.cfg.sample_rate
            if any(part is not None and not np.isfinite(part).all() for part in (r.probs, r.embedding, r.taggram)):
                # finite audio and weights make this unreachable; never let it out
                r = AudioError(f"{names[k]}: the model produced non-finite values for this audio")
            results[k] = r
        return results

    def _embedding(self, source: Source, sr: int | None = None) -> Result:
        """A :class:`Result` holding only the embedding (works with models that have no global classifier)."""
        result = self.predict_batch([source], sr=sr, embed_only=True)[0]
        if isinstance(result, TagstackError):
            raise result
        return result

    def _gram_hop(self, hop: float | None) -> int:
        return self.cfg.clip_samples if hop is None else check_hop(hop, self.cfg.sample_rate)

    def predict_many(
        self,
        paths: Iterable[str | Path],
        *,
        taggram: bool = False,
        hop: float | None = None,
        workers: int | None = None,
        embed_only: bool = False,
        batched: bool | None = None,
    ) -> Iterator[Result | TagstackError]:
        """Tag many files on all cores: worker threads decode, and run the networks one file each or in shared passes (:mod:`.many`).

        Yields, in input order, a :class:`Result` or the :class:`TagstackError`
        that made a file unusable (the others go on). On a CPU each worker
        thread decodes and runs one file at a time, torch ops single threaded
        meanwhile, so decoding and the networks of different files fill the
        cores instead of contending inside each op. ``batched`` (the default
        on CUDA) has the workers only decode, while this thread passes the
        windows of consecutive files through the networks together
        (:meth:`predict_batch`'s 64 per pass on CUDA): one stream of full
        batches fills a GPU, where a pass per thread and file would leave it
        half idle and hold one batch of activations per thread in its memory.
        Each file is decoded at most one pass ahead of the networks, so memory
        stays bounded; a file longer than a pass (64 windows: about 31 min
        with 29.1 s windows, less with a short taggram ``hop``) then waits for
        the networks, and such files decode about one at a time.

        Parameters
        ----------
        paths : iterable of str or Path
            Audio files; read lazily, a few per worker ahead of the results.
        taggram : bool
            Also compute each file's taggram.
        hop : float > 0, optional
            Seconds between the starts of taggram windows (default: one clip length).
        workers : int, optional
            Worker threads (default: torch's number of threads).
        embed_only : bool
            Compute the embeddings only (works for models without a classifier).
        batched : bool, optional
            Share network passes between files, the workers only decoding (default: on CUDA).

        Yields
        ------
        result : Result or TagstackError
            Each file's :class:`Result` (as :meth:`predict` describes it) or the error that made it unusable.
        """
        workers = workers or torch.get_num_threads()
        if taggram and not embed_only:
            self._gram_hop(hop)  # a bad hop is one error, not one per file
        if batched is None:
            batched = self.device.type == "cuda"
        if not batched:
            predict = self._embedding if embed_only else partial(self.predict, taggram=taggram, hop=hop)
            yield from one_thread_per_file(paths, predict=predict, workers=workers)
            return
        gram_hop = self._gram_hop(hop) if taggram and not embed_only else None
        yield from shared_passes(
            paths,
            windows=partial(self._windows, sr=None, gram_hop=gram_hop),
            results=partial(self._results, gram_hop=gram_hop, embed_only=embed_only),
            batch=self._batch_windows(None),
            workers=workers,
        )

    def tag(
        self,
        source: Source,
        *,
        sr: int | None = None,
        top_k: int | None = DEFAULT_TOP_K,
        threshold: float | None = None,
        per_group: bool = False,
    ) -> list[tuple[str, float]]:
        """The best tags of a file or array as ``(tag, probability)`` pairs (within each tag group with ``per_group``; see :meth:`Result.top`).

        Parameters
        ----------
        source : Source
            A file or samples, as :meth:`predict` takes them.
        sr : int, optional
            The sample rate of array samples, in Hz.
        top_k : int >= 0, optional
            How many tags to return, best first (None or 0: all).
        threshold : float in [0, 1], optional
            Instead of ``top_k``: every tag whose probability is at least this.
        per_group : bool
            Apply ``top_k`` or ``threshold`` within each tag group of the model.

        Returns
        -------
        tags : list[tuple[str, float]]
            ``(tag, probability)``, best first (grouped by tag group with ``per_group``).

        Raises
        ------
        ParameterError
            The model cannot tag (no classifier and no own outputs), or a bad ``top_k`` or ``threshold``.
        """
        require_tagger(self.model)
        check_selection(top_k, threshold)
        return self.predict(source, sr=sr).top(top_k, threshold, per_group=per_group)

    def embed(
        self, source: Source, *, sr: int | None = None, scales: Iterable[str | int] | None = None, layers: Iterable[int] | None = None
    ) -> np.ndarray:
        """The multi-level, multi-scale feature vector of a file (chosen scales and layers; all by default).

        Parameters
        ----------
        source : Source
            A file or samples, as :meth:`predict` takes them.
        sr : int, optional
            The sample rate of array samples, in Hz.
        scales : iterable of str or int, optional
            Branches (scales) to keep: ``"27"`` (or 27) for a paper CNN, ``"musicnn-mtt/187"`` for a pretrained
            network at a segment length (all when None; :attr:`TaggingModel.local_scales` lists them).
        layers : iterable of int, optional
            1-based levels to keep (all when None).

        Returns
        -------
        embedding : np.ndarray [shape=(n_columns,), dtype=float32]
            The chosen blocks of the full vector of ``n_features`` values (every one by default), in the
            model's layout order (scale, then layer): the mean over every segment of the file.
        """
        cols = self.model.columns_of(scales=scales, layers=layers)
        return self._embedding(source, sr).embedding[cols]

    def taggram(self, source: Source, *, sr: int | None = None, hop: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tag probabilities per clip-long window: ``(windows, n_tags)`` and the window start times in seconds.

        Windows start every ``hop`` seconds (default: back to back); see :meth:`predict`.

        Parameters
        ----------
        source : Source
            A file or samples, as :meth:`predict` takes them.
        sr : int, optional
            The sample rate of array samples, in Hz.
        hop : float > 0, optional
            Seconds between window starts (default: one clip length).

        Returns
        -------
        taggram : np.ndarray [shape=(n_windows, n_tags)]
            Each window's tag probabilities, in the order of :attr:`tags`.
        starts : np.ndarray [shape=(n_windows,)]
            Each window's start, in seconds.
        """
        r = self.predict(source, sr=sr, taggram=True, hop=hop)
        return r.taggram, r.window_starts
