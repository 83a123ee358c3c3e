"""What each stage trains, on which batches, judged by which validation: all through :func:`~.loop.fit`.

- stage 1 (:func:`train_local`): one local CNN on shuffled segments, each
  carrying its clip's labels; validated on clip predictions (the mean of
  segment predictions, computed by :func:`~tagstack.models.aggregation.aggregate`);
- stage 2 (:func:`extract_features`): nothing is trained; every layer of
  every local network, aggregated over each clip's segments, read once for
  all clips (under ``torchrun`` each process takes a share);
- stage 3 (:func:`train_global`): the global classifier on stored features;
- joint fine-tuning (:func:`finetune_joint`): the whole
  :class:`~tagstack.models.TaggingModel` end to end on clips.

Labels may be soft (values in [0, 1], e.g. a teacher's probabilities):
training uses them as they are; validation ROC-AUC counts a value of at
least 0.5 as a positive. Labels may be unknown (NaN, a tag the clip's source
never annotated): they add nothing to the loss or to the validation scores,
so clips of a source without moods do not teach the model that they are not
sad (:func:`masked_bce`).
"""

from __future__ import annotations

import math
from pathlib import Path
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..config import TrainConfig
from ..evaluation.metrics import binary_targets, tagging_metrics
from ..models.aggregation import aggregate
from ..models.classifier import GlobalMLP
from ..models.local import LocalCNN
from ..models.tagging_model import TaggingModel
from ..progress import progress
from ..runtime import all_gather_rows, distributed
from .loop import TrainState, fit

Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def masked_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, the mean over the known labels only (NaN = unknown).

    Equal to :class:`torch.nn.BCEWithLogitsLoss` when every label is known.
    """
    known = ~torch.isnan(target)
    if bool(known.all()):
        return F.binary_cross_entropy_with_logits(logits, target)
    if not bool(known.any()):
        return logits.sum() * 0.0  # keeps the graph (DDP expects a gradient for every parameter)
    return F.binary_cross_entropy_with_logits(logits[known], target[known])


def input_statistics(mels: np.ndarray, rows: np.ndarray, *, chunk: int = 256) -> tuple[float, float]:
    """Scalar mean and standard deviation of the frames of clips ``rows`` (read in chunks, float64)."""
    s = ss = 0.0
    n = 0
    for i in range(0, len(rows), chunk):
        x = np.asarray(mels[np.sort(rows[i : i + chunk])], dtype=np.float64)
        s += x.sum()
        ss += np.square(x).sum()
        n += x.size
    mean = s / n
    return float(mean), float(np.sqrt(max(ss / n - mean * mean, 1e-12)))


def segment_batches(
    mels: np.ndarray,
    labels: np.ndarray,
    *,
    rows: np.ndarray,
    size: int,
    batch_size: int,
    seed: int,
    mixup: float = 0.0,
    frames: np.ndarray | None = None,
) -> tuple[Batches, int]:
    """Shuffled segments across clips, each with its clip's labels (``labels`` row-aligned with ``rows``).

    With ``frames`` (audio frames of every clip of ``mels``; the rest is zero
    padding) a short clip gives only its segments of audio (at least one),
    never segments of padding labelled with its tags.

    Returns ``(batches(epoch), n_batches)``; segments are read straight from
    ``mels`` (a memmap is fine), one batch at a time. With ``mixup`` > 0 each
    segment is mixed with another of its batch, frames and labels alike, with a
    weight drawn from Beta(mixup, mixup) (Zhang et al. 2018, as PANNs train on
    AudioSet): a regulariser for small training sets, not in the paper. A label
    unknown (NaN) in either segment stays unknown. The same epoch gives the
    same segments and weights, so a resumed run trains on the same batches.
    """
    per_clip = mels.shape[1] // size
    counts = np.full(len(rows), per_clip) if frames is None else np.clip(np.asarray(frames)[rows] // size, 1, per_clip)
    which = np.repeat(np.arange(len(rows)), counts)
    seg_of = np.concatenate([np.arange(k) for k in counts]) if len(rows) else np.zeros(0, int)
    n_batches = math.ceil(len(which) / batch_size)
    offsets = np.arange(size)

    def batches(epoch: int):
        order = np.random.default_rng([seed, epoch]).permutation(len(which))
        for b in range(n_batches):
            sel = order[b * batch_size : (b + 1) * batch_size]
            if len(sel) < 2:  # BatchNorm needs two samples
                continue
            k, s = which[sel], seg_of[sel]
            x = np.asarray(mels[rows[k][:, None], s[:, None] * size + offsets[None, :]], dtype=np.float32)
            y = np.asarray(labels[k], dtype=np.float32)
            if mixup > 0:
                mix = np.random.default_rng([seed, epoch, b])
                lam = mix.beta(mixup, mixup, size=len(sel)).astype(np.float32)
                other = mix.permutation(len(sel))
                x = lam[:, None, None] * x + (1 - lam[:, None, None]) * x[other]
                y = lam[:, None] * y + (1 - lam[:, None]) * y[other]
            yield torch.from_numpy(x), torch.from_numpy(y)

    return batches, n_batches


def clip_batches(
    mels: np.ndarray | list[np.ndarray],
    labels: np.ndarray,
    *,
    rows: np.ndarray,
    batch_size: int,
    seed: int,
    multiclass: bool,
    frames: np.ndarray | list[np.ndarray] | None = None,
) -> tuple[Batches, int]:
    """Shuffled whole clips (joint fine-tuning); ``labels`` row-aligned with ``rows``. With ``frames`` (audio frames of
    every clip of ``mels``) a batch's inputs are its clips' frames and their frames of audio, for the model to
    aggregate the audio alone. For a model of several front ends, ``mels`` and ``frames`` are lists, one per front end,
    and so are the batches' inputs."""
    n = math.ceil(len(rows) / batch_size)

    def batches(epoch: int):
        order = np.random.default_rng([seed, epoch]).permutation(len(rows))
        for b in range(n):
            sel = np.sort(order[b * batch_size : (b + 1) * batch_size])
            if len(sel) < 2:
                continue
            y = torch.from_numpy(labels[sel])
            yield _clip_inputs(mels, frames, rows[sel]), (y.argmax(1) if multiclass else y)

    return batches, n


def validation_metrics(probs: np.ndarray, labels: np.ndarray, *, task: str) -> dict:
    """Validation loss and macro ROC-AUC of clip-level probabilities, on the known labels."""
    probs = np.clip(probs, 1e-7, 1 - 1e-7)
    if task == "multiclass":
        loss = float(-np.mean(np.log(probs[labels > 0])))
    else:
        loss = float(-np.nanmean(labels * np.log(probs) + (1 - labels) * np.log(1 - probs)))
    return {"loss": loss, "roc_auc": tagging_metrics(binary_targets(labels), probs)["roc_auc"]}


def _clip_inputs(mels, frames, rows: np.ndarray):
    """The frames (and audio frame counts) of clips ``rows``, as tensors, or lists of them per front end."""

    def one(m: np.ndarray, f: np.ndarray | None):
        x = torch.from_numpy(np.asarray(m[rows], dtype=np.float32))
        return x if f is None else (x, torch.from_numpy(np.asarray(f)[rows].astype(np.int64)))

    if not isinstance(mels, list):
        return one(mels, frames)
    parts = [one(m, None if frames is None else f) for m, f in zip(mels, frames or [None] * len(mels))]
    return ([p for p, _ in parts], [f for _, f in parts]) if frames is not None else (parts,)


def _batched(
    fn: Callable,
    mels: np.ndarray | list[np.ndarray],
    rows: np.ndarray,
    device: torch.device,
    batch: int,
    frames: np.ndarray | list[np.ndarray] | None = None,
) -> np.ndarray:
    """``fn(clip frames, audio frames or None)`` over ``rows`` of ``mels`` in batches (lists per front end, as
    :func:`clip_batches`)."""

    def to(x):
        return [t.to(device) for t in x] if isinstance(x, list) else x.to(device)

    out = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch):
            x = _clip_inputs(mels, frames, rows[i : i + batch])
            x = tuple(to(t) for t in x) if isinstance(x, tuple) else (to(x),)
            out.append(fn(*x, *([None] if len(x) == 1 else [])).cpu().numpy())
    return np.concatenate(out)


def local_clip_probs(
    model: LocalCNN, mels: np.ndarray, *, rows: np.ndarray, device: torch.device, batch_clips: int = 16, frames: np.ndarray | None = None
) -> np.ndarray:
    """A local CNN's clip predictions (the mean of its segment predictions; of audio only, given ``frames``)."""
    model.eval()
    return _batched(lambda x, f: aggregate(model, x, layers=(), frames=f)[1], mels, rows, device, batch_clips, frames)


def train_local(
    model: LocalCNN,
    mels: np.ndarray,
    *,
    train_rows: np.ndarray,
    valid_rows: np.ndarray,
    train_labels: np.ndarray,
    valid_labels: np.ndarray,
    config: TrainConfig,
    workdir: str | Path,
    device: torch.device,
    inputs: dict | None = None,
    frames: np.ndarray | None = None,
) -> TrainState:
    """Stage 1: train one local CNN on shuffled segments with binary cross-entropy.

    ``*_rows`` index ``mels`` (the mel cache); ``*_labels`` are aligned with them; ``frames`` (audio frames of every
    clip of ``mels``) keeps padding out of training and validation; ``inputs`` as in :func:`~.loop.fit`.
    """
    model.set_normalisation(*input_statistics(mels, train_rows))  # a resumed run recomputes the same values
    batches, n = segment_batches(
        mels,
        train_labels,
        rows=train_rows,
        size=model.arch.n_frames,
        batch_size=config.batch_size,
        seed=config.seed,
        mixup=config.mixup,
        frames=frames,
    )

    def validate(m: nn.Module) -> dict:
        return validation_metrics(local_clip_probs(m, mels, rows=valid_rows, device=device, frames=frames), valid_labels, task="multilabel")

    return fit(
        model,
        train_batches=batches,
        n_batches=n,
        validate=validate,
        loss_fn=masked_bce,
        config=config,
        workdir=workdir,
        device=device,
        desc=f"local {model.arch.n_frames}",
        inputs=inputs,
    )


def extract_features(
    model: TaggingModel,
    mels: list[np.ndarray],
    *,
    rows: np.ndarray,
    frames: list[np.ndarray],
    device: torch.device,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Stage 2: the aggregated features of every layer of every scale, and each local network's own clip outputs, for
    clips ``rows`` of ``mels`` (one cache per front end of ``model``, with their audio ``frames``).

    Returns ``(features, local_probs)``: clips x ``model.layout``'s width, and
    scale -> clips x that network's outputs, both float32 in the order of
    ``rows``. Under ``torchrun`` each process extracts a contiguous share and
    every process gets all of it: stage 3 then trains on every process (each
    takes its part of every batch), so all of them need the whole array, and
    an all-gather is cheaper than every process extracting everything.
    """
    rank, world = distributed()
    if world == 1:
        return _extract(model, mels, rows, frames, device)
    share = -(-len(rows) // world)
    feats, probs = _extract(model, mels, rows[rank * share : (rank + 1) * share], frames, device)
    scales = list(probs)
    widths = [feats.shape[1]] + [probs[s].shape[1] for s in scales]  # features, then each network's own outputs
    edges = np.cumsum([0] + widths)
    whole = all_gather_rows(np.concatenate([feats] + [probs[s] for s in scales], axis=1), rows=share)[: len(rows)]
    return whole[:, : edges[1]].copy(), {s: whole[:, edges[i + 1] : edges[i + 2]].copy() for i, s in enumerate(scales)}


def _extract(
    model: TaggingModel, mels: list[np.ndarray], rows: np.ndarray, frames: list[np.ndarray], device: torch.device, batch: int = 8
) -> tuple[np.ndarray, dict]:
    """:func:`extract_features` of one process: ``rows`` in batches of ``batch`` clips."""
    width = model.layout[-1].stop
    feats = [np.zeros((0, width), np.float32)]
    probs = {s: [np.zeros((0, model.network_of(s).n_outputs), np.float32)] for s in model.local_scales}
    with torch.inference_mode():
        for i in progress(range(0, len(rows), batch), desc="stage 2", unit="batch"):
            sel = rows[i : i + batch]
            x = [torch.from_numpy(np.asarray(m[sel], dtype=np.float32)).to(device) for m in mels]
            f, p = model.features_and_local_probs(x, [torch.from_numpy(fr[sel]).to(device) for fr in frames])
            feats.append(f.cpu().numpy())
            for s in p:
                probs[s].append(p[s].cpu().numpy())
    return np.concatenate(feats).astype(np.float32), {s: np.concatenate(v).astype(np.float32) for s, v in probs.items()}


def train_global(
    model: GlobalMLP,
    *,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    config: TrainConfig,
    workdir: str | Path,
    device: torch.device,
    inputs: dict | None = None,
) -> TrainState:
    """Stage 3: train the global classifier on aggregated features (standardised with the training set's statistics);
    ``inputs`` as in :func:`~.loop.fit`."""
    x_train = np.asarray(x_train, dtype=np.float32)
    y_train = np.asarray(y_train, dtype=np.float32)
    model.set_normalisation(torch.from_numpy(x_train.mean(0)), torch.from_numpy(x_train.std(0)))
    multiclass = model.arch.task == "multiclass"
    n = math.ceil(len(x_train) / config.batch_size)

    def batches(epoch: int):
        order = np.random.default_rng([config.seed, epoch]).permutation(len(x_train))
        for b in range(n):
            sel = order[b * config.batch_size : (b + 1) * config.batch_size]
            if len(sel) < 2:
                continue
            y = torch.from_numpy(y_train[sel])
            yield torch.from_numpy(x_train[sel]), (y.argmax(1) if multiclass else y)

    xv = torch.from_numpy(np.asarray(x_valid, dtype=np.float32))

    def validate(m: nn.Module) -> dict:
        with torch.inference_mode():
            return validation_metrics(m.predict_proba(xv.to(device)).cpu().numpy(), y_valid, task=model.arch.task)

    loss_fn = nn.CrossEntropyLoss() if multiclass else masked_bce
    return fit(
        model,
        train_batches=batches,
        n_batches=n,
        validate=validate,
        loss_fn=loss_fn,
        config=config,
        workdir=workdir,
        device=device,
        desc="global",
        inputs=inputs,
    )


def model_clip_probs(
    model: TaggingModel,
    mels: np.ndarray | list[np.ndarray],
    *,
    rows: np.ndarray,
    device: torch.device,
    batch_clips: int = 8,
    frames: np.ndarray | list[np.ndarray] | None = None,
) -> np.ndarray:
    """The whole tagger's probabilities for clips ``rows`` of ``mels`` (of their audio only, given ``frames``)."""
    model.eval()
    return _batched(model.predict_proba, mels, rows, device, batch_clips, frames)


def finetune_joint(
    model: TaggingModel,
    mels: np.ndarray | list[np.ndarray],
    *,
    train_rows: np.ndarray,
    valid_rows: np.ndarray,
    train_labels: np.ndarray,
    valid_labels: np.ndarray,
    config: TrainConfig,
    workdir: str | Path,
    device: torch.device,
    inputs: dict | None = None,
    frames: np.ndarray | list[np.ndarray] | None = None,
) -> TrainState:
    """The paper's future work (Sec. V): local CNNs and global classifier trained together, end to end.

    A clip's frames go through every local CNN and are aggregated exactly as
    in stage 2 (differentiably), and the classifier reads the concatenation:
    the same :class:`TaggingModel` that tags files, from its staged weights. ``inputs`` as in :func:`~.loop.fit`;
    ``frames`` keeps short clips' padding out of training and validation.
    """
    multiclass = model.task == "multiclass"
    batches, n = clip_batches(
        mels, train_labels, rows=train_rows, batch_size=config.batch_size, seed=config.seed, multiclass=multiclass, frames=frames
    )

    def validate(m: nn.Module) -> dict:
        return validation_metrics(model_clip_probs(m, mels, rows=valid_rows, device=device, frames=frames), valid_labels, task=model.task)

    loss = nn.CrossEntropyLoss() if multiclass else masked_bce
    return fit(
        model,
        train_batches=batches,
        n_batches=n,
        validate=validate,
        loss_fn=loss,
        config=config,
        workdir=workdir,
        device=device,
        desc="joint",
        inputs=inputs,
    )
