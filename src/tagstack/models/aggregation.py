"""Stage 2: multi-level, multi-scale feature aggregation (Sec. II-B).

For one clip and one conv layer of one local CNN, the layer's activation on
every segment is max-pooled over time within the segment, then averaged over
the clip's segments; the resulting vectors of the chosen layers and scales are
concatenated. With all layers of the five paper CNNs that is
512 + 512 + 768 + 1,024 + 1,280 = 4,096 dimensions. Pretrained backbones
are aggregated the same way, each of their segment lengths a scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ParameterError


@dataclass(frozen=True)
class FeatureBlock:
    """Where the features of one (scale, layer) sit in the concatenated vector.

    A scale is a branch of the model: one network read on segments of one
    length, named by its number of frames for the paper's CNNs (``"27"``)
    and ``network/frames`` for a pretrained backbone (``"musicnn-msd/187"``).
    """

    scale: str
    layer: int
    start: int
    stop: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", str(self.scale))  # run folders of earlier versions stored numbers


def feature_layout(branches: Mapping[str | int, nn.Module]) -> list[FeatureBlock]:
    """Blocks of every layer of every branch (scale), in the mapping's order, then by layer."""
    blocks, start = [], 0
    for scale, network in branches.items():
        for info in network.feature_info:
            blocks.append(FeatureBlock(str(scale), info["layer"], start, start + info["channels"]))
            start += info["channels"]
    return blocks


def select_columns(
    layout: Sequence[FeatureBlock], *, scales: Iterable[str | int] | None = None, layers: Iterable[int] | None = None
) -> np.ndarray:
    """Column indices of the chosen scales and layers (1-based), for slicing stored features.

    Features are extracted once with every layer and scale and sliced, so the
    ablations of Figs. 3 and 4 never recompute them.
    """
    scales = None if scales is None else {str(x) for x in scales}
    layers = None if layers is None else {int(x) for x in layers}
    available = {b.scale for b in layout}
    if scales is not None and not scales <= available:
        raise ParameterError(f"scales {sorted(scales - available)} not in the features (have {sorted(available)})")
    chosen = [b for b in layout if scales is None or b.scale in scales]
    if layers is not None:
        missing = layers - {b.layer for b in chosen}
        if missing:
            have = sorted({b.layer for b in chosen})
            raise ParameterError(
                f"layers {sorted(missing)} not in the features of scales {sorted(scales or available)} (have layers {have})"
            )
        chosen = [b for b in chosen if b.layer in layers]
    if not chosen:
        raise ParameterError(f"no features for scales={sorted(scales) if scales else scales} layers={sorted(layers) if layers else layers}")
    return np.concatenate([np.arange(b.start, b.stop) for b in chosen])


def segment(mels: torch.Tensor, size: int) -> torch.Tensor:
    """``(clips, frames, mels)`` -> ``(clips, n_segments, size, mels)``, dropping the remainder."""
    n = mels.shape[1] // size
    if n == 0:
        raise ParameterError(f"a clip of {mels.shape[1]} frames holds no segment of {size} frames")
    return mels[:, : n * size].reshape(mels.shape[0], n, size, mels.shape[2])


def aggregate(
    model: nn.Module,
    mels: torch.Tensor,
    *,
    size: int | None = None,
    layers: Iterable[int] | None = None,
    frames: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's aggregation of one local network over a batch of clips (differentiable).

    Every segment of every clip goes through the network once; each chosen
    layer's activation is max-pooled over time within the segment (a level
    computed per segment, such as musicnn's penultimate layer, is taken as
    it is) and averaged over the clip's segments, and the network's own clip
    prediction is the mean of its segment probabilities. Stage 1's
    validation, stage 2, joint fine-tuning and inference all call it
    (through :func:`aggregate_sizes` for a network read at several segment
    lengths); a file longer than a clip, cut into clip-long windows by
    inference, continues the same average over all its windows with
    :class:`SegmentMean`, and which segments count is :func:`whole_segments`
    in both, so every average over segments is computed in this module.

    Parameters
    ----------
    model : nn.Module
        A local network (:mod:`tagstack.models.networks`: a paper CNN, musicnn, the artist CNN), with
        ``feature_info`` and ``forward_intermediates``.
    mels : torch.Tensor [shape=(clips, frames, n_mels)]
        Log-mel clips of the network's front end; frames beyond the last whole segment are ignored.
    size : int, optional
        Frames per segment (default: a paper CNN's input size).
    layers : iterable of int, optional
        1-based levels whose features to return (all when None; none for ``()``).
    frames : torch.Tensor [shape=(clips,)], optional
        Frames of audio in each clip when the rest is zero padding (a file
        shorter than a clip in the mel cache): only the segments entirely
        within the audio are averaged, and at least the first, exactly as
        the tagger treats such a file, so training, stage 2 and tagging agree.

    Returns
    -------
    features : torch.Tensor [shape=(clips, sum of chosen layer widths)]
        Each chosen layer's max over a segment, averaged over the clip's segments, concatenated by layer.
    probs : torch.Tensor [shape=(clips, n_outputs)]
        The mean of the network's segment probabilities (``(clips, 0)`` for a network without outputs).

    Raises
    ------
    ParameterError
        A segment length the network cannot read, a clip shorter than one segment, or a layer it lacks.
    """
    return aggregate_sizes(model, mels, sizes=[model.arch.n_frames if size is None else size], layers=layers, frames=frames)[0]


def aggregate_sizes(
    model: nn.Module,
    mels: torch.Tensor,
    *,
    sizes: Sequence[int],
    layers: Iterable[int] | None = None,
    frames: torch.Tensor | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`aggregate` at each segment length of ``sizes``: ``(features, probs)`` per size.

    A network that can compute the segments of several lengths from shared
    work (``segment_intermediates``: musicnn's timbral convolutions, over the
    whole clip once) does so in evaluation; the result is what the segments
    give read one by one.
    """
    for size in sizes:
        model.check_segment(size)
    shared = len(sizes) > 1 and not model.training and hasattr(model, "segment_intermediates")
    if shared:
        for size in sizes:
            segment(mels, size)  # the same refusal of a clip shorter than a segment
        passes = model.segment_intermediates(mels, list(sizes))
    else:
        passes = []
        for size in sizes:
            segs = segment(mels, size)
            passes.append(model.forward_intermediates(segs.reshape(-1, *segs.shape[2:])))
    return [_pool(acts, logits, mels, size, layers, frames, model) for (acts, logits), size in zip(passes, sizes)]


def _pool(
    acts: list[torch.Tensor],
    logits: torch.Tensor | None,
    mels: torch.Tensor,
    size: int,
    layers: Iterable[int] | None,
    frames: torch.Tensor | None,
    model: nn.Module,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over each segment's frames, then the mean over a clip's (whole, audio) segments."""
    b, s = mels.shape[0], mels.shape[1] // size
    chosen = range(1, len(acts) + 1) if layers is None else check_layers(model, layers)
    if frames is None or bool((frames >= s * size).all()):  # whole clips: the plain mean, bit for bit

        def mean(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(b, s, -1).mean(dim=1)
    else:
        whole = whole_segments(frames.to(mels.device), size).clamp(max=s)
        weight = (torch.arange(s, device=mels.device)[None, :] < whole[:, None]).to(mels.dtype) / whole[:, None].to(mels.dtype)

        def mean(x: torch.Tensor) -> torch.Tensor:
            return (x.reshape(b, s, -1) * weight[:, :, None]).sum(dim=1)

    feats = [mean(acts[i - 1].amax(dim=2) if acts[i - 1].dim() == 3 else acts[i - 1]) for i in chosen]
    probs = mean(torch.sigmoid(logits)) if logits is not None else mels.new_zeros(b, 0)
    return (torch.cat(feats, dim=1) if feats else mels.new_zeros(b, 0)), probs


def whole_segments(frames: torch.Tensor, size: int, *, alone: torch.Tensor | None = None) -> torch.Tensor:
    """How many segments of ``size`` frames each clip averages, given its ``frames`` of audio (the rest padding).

    Only segments entirely within the audio count, so zero padding never
    dilutes a clip's features. A clip that is a whole file (``alone``: every
    clip when None, as in the mel cache) keeps at least its first, padded
    segment, so a file shorter than one segment still has features; the
    short last window of a longer file (``alone`` False there) may count
    none, its audio already in the file's other windows. One rule for
    training (:func:`aggregate` with ``frames``) and tagging (the weights
    of :class:`SegmentMean`), so both average the same segments.

    Parameters
    ----------
    frames : torch.Tensor [shape=(clips,), dtype=int]
        Frames of audio in each clip.
    size : int
        Frames per segment.
    alone : torch.Tensor [shape=(clips,), dtype=bool], optional
        Which clips keep at least one segment (all when None).

    Returns
    -------
    segments : torch.Tensor [shape=(clips,), dtype=int]
        Whole segments of audio in each clip (at least one where ``alone``).
    """
    n = torch.div(frames, size, rounding_mode="floor")
    return n.clamp(min=1) if alone is None else torch.where(alone, n.clamp(min=1), n)


class SegmentMean:
    """The mean over every segment of a file, accumulated batch by batch of its clip-long windows.

    Each window's row is already a mean over its own segments (:func:`aggregate`);
    weighting the rows by their segment counts (:func:`whole_segments`) and
    dividing the sums by the total weight makes the mean over every segment
    of the file, as if :func:`aggregate` had read the whole file as one clip,
    while only a batch of windows is ever in memory. Inference keeps one per
    file for its features and one for a network's own outputs.
    """

    def __init__(self) -> None:
        #: the weighted sum of the rows added so far, and the sum of their weights (None before the first)
        self.total: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None

    @property
    def empty(self) -> bool:
        """Nothing added yet (a source that gave no window)."""
        return self.total is None

    def add(self, rows: torch.Tensor, weights: torch.Tensor) -> None:
        """Add ``rows`` ``(windows, width)`` weighted by ``weights``: ``(windows, width)``, a weight per value
        (features whose columns come from branches of different segment lengths), or ``(windows,)``, one per row."""
        if weights.dim() == 1:
            part, w = (rows * weights[:, None]).sum(0), weights.sum()
        else:
            part, w = (rows * weights).sum(0), weights.sum(0)
        self.total = part if self.total is None else self.total + part
        self.weight = w if self.weight is None else self.weight + w

    def mean(self) -> torch.Tensor:
        """The weighted mean of every row added: ``(width,)``."""
        return self.total / self.weight


def check_layers(model: nn.Module, layers: Iterable[int]) -> list[int]:
    """``layers`` as a list, or a :class:`ParameterError` naming the ones the network lacks."""
    layers = [int(i) for i in layers]
    bad = [i for i in layers if not 1 <= i <= len(model.feature_info)]
    if bad:
        raise ParameterError(f"layers {bad} do not exist in this network (it has 1..{len(model.feature_info)})")
    return layers
