"""One trainer for stage 1 (local CNNs) and stage 3 (global classifier).

The authors' schedule: SGD with Nesterov momentum, learning rate 0.01, and
whenever the monitored validation score has not improved for ``patience``
epochs the best checkpoint is restored and the rate multiplied by 0.2; after
``lr_stages`` rates training stops. A checkpoint is written atomically after
every epoch, so a killed run resumes at the epoch where it stopped, and a
finished run is not trained again.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .config import TrainConfig
from .errors import ParameterError
from .fileio import atomic_write, atomic_write_json


def choose_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; anything else is passed to torch."""
    if name in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ParameterError(f"--device {name!r} is not a torch device ({e})") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"--device {name!r} asked for CUDA, but no CUDA GPU is available")
    return device


@dataclass
class TrainState:
    """The trainer's progress, saved with every checkpoint."""

    epoch: int = 0
    stage: int = 0
    lr: float = 0.0
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    done: bool = False
    history: list[dict] = field(default_factory=list)


def _score(metrics: dict, monitor: str) -> float:
    """Higher is better: negative loss, or ROC-AUC."""
    return -metrics["loss"] if monitor == "loss" else metrics["roc_auc"]


def _save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, state: TrainState) -> None:
    payload = {"model": model.state_dict(), "optimizer": opt.state_dict(), "state": json.dumps(asdict(state))}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)


def fit(
    model: nn.Module,
    *,
    train_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    n_batches: int,
    validate: Callable[[nn.Module], dict],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    config: TrainConfig,
    workdir: str | Path,
    device: torch.device,
    desc: str = "train",
) -> TrainState:
    """Train ``model`` in place and leave it holding its best weights.

    Parameters
    ----------
    train_batches : callable
        ``train_batches(epoch)`` yields ``(inputs, targets)`` CPU tensors for one
        epoch, shuffled deterministically from the epoch number.
    validate : callable
        ``validate(model)`` returns a dict with at least ``loss`` and ``roc_auc``.
    workdir : path
        Holds ``last.pt`` (resume point), ``best.pt`` and ``history.json``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    last, best = workdir / "last.pt", workdir / "best.pt"
    model.to(device)
    state = TrainState(lr=config.lr)
    opt = _optimizer(model, config, config.lr)
    if last.exists():
        ckpt = torch.load(last, map_location=device, weights_only=True)
        state = TrainState(**json.loads(ckpt["state"]))
        model.load_state_dict(ckpt["model"])
        opt = _optimizer(model, config, state.lr)
        opt.load_state_dict(ckpt["optimizer"])
        if not state.done:
            tqdm.write(f"[{desc}] resuming after epoch {state.epoch} (lr {state.lr:g})")
    started = time.time()
    epochs_run = 0
    while not state.done:
        torch.manual_seed(config.seed + state.epoch)
        model.train()
        total, count = 0.0, 0
        bar = tqdm(train_batches(state.epoch), total=n_batches, desc=f"[{desc}] epoch {state.epoch + 1}", leave=False, unit="batch", disable=None)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x)
            count += len(x)
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        bar.close()
        model.eval()
        metrics = validate(model)
        state.epoch += 1
        epochs_run += 1
        record = {"epoch": state.epoch, "lr": state.lr, "train_loss": total / max(count, 1), **{f"val_{k}": v for k, v in metrics.items()}}
        state.history.append(record)
        score = _score(metrics, config.monitor)
        if score > state.best_score:
            state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
            atomic_write(best, lambda tmp: torch.save(model.state_dict(), tmp))
        else:
            state.bad_epochs += 1
        if state.bad_epochs >= config.patience:
            state.stage += 1
            if state.stage >= config.lr_stages:
                state.done = True
            else:
                model.load_state_dict(torch.load(best, map_location=device, weights_only=True))
                state.lr *= config.lr_decay
                state.bad_epochs = 0
                opt = _optimizer(model, config, state.lr)
        if state.epoch >= config.max_epochs:
            state.done = True
        per_epoch = (time.time() - started) / epochs_run
        left = "" if state.done else f", at most {per_epoch * (config.max_epochs - state.epoch) / 60:.1f} min left"
        tqdm.write(
            f"[{desc}] epoch {state.epoch}: train loss {record['train_loss']:.4f}, val loss {metrics['loss']:.4f}, "
            f"val ROC-AUC {metrics['roc_auc']:.4f}, lr {record['lr']:g} ({per_epoch:.1f} s/epoch{left})"
        )
        _save_checkpoint(last, model, opt, state)
        atomic_write_json(workdir / "history.json", state.history)
    if best.exists():
        model.load_state_dict(torch.load(best, map_location=device, weights_only=True))
    model.eval()
    return state


# ---------------------------------------------------------------- stage 1

def input_statistics(mels: np.ndarray, idx: np.ndarray, *, chunk: int = 256) -> tuple[float, float]:
    """Scalar mean and standard deviation of the frames of clips ``idx`` (read in chunks, float64)."""
    s = ss = 0.0
    n = 0
    for i in range(0, len(idx), chunk):
        x = np.asarray(mels[np.sort(idx[i : i + chunk])], dtype=np.float64)
        s += x.sum()
        ss += np.square(x).sum()
        n += x.size
    mean = s / n
    return float(mean), float(np.sqrt(max(ss / n - mean * mean, 1e-12)))


def segment_batches(
    mels: np.ndarray, labels: np.ndarray, idx: np.ndarray, *, size: int, batch_size: int, seed: int
) -> tuple[Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]], int]:
    """Shuffled segments across clips; each segment carries its clip's labels.

    Returns ``(batches(epoch), n_batches)``. Segments are read straight from
    ``mels`` (a memmap is fine), one batch at a time.
    """
    per_clip = mels.shape[1] // size
    clip_of = np.repeat(idx, per_clip)
    seg_of = np.tile(np.arange(per_clip), len(idx))
    n_batches = math.ceil(len(clip_of) / batch_size)
    offsets = np.arange(size)

    def batches(epoch: int):
        order = np.random.default_rng([seed, epoch]).permutation(len(clip_of))
        for b in range(n_batches):
            sel = order[b * batch_size : (b + 1) * batch_size]
            if len(sel) < 2:  # BatchNorm needs two samples
                continue
            c, s = clip_of[sel], seg_of[sel]
            x = np.asarray(mels[c[:, None], s[:, None] * size + offsets[None, :]], dtype=np.float32)
            yield torch.from_numpy(x), torch.from_numpy(labels[c])

    return batches, n_batches


def _clip_validation(predict: Callable[[np.ndarray], np.ndarray], labels: np.ndarray, task: str) -> dict:
    """Validation loss and macro ROC-AUC of clip-level predictions."""
    from .evaluation import tagging_metrics

    probs = np.clip(predict(labels), 1e-7, 1 - 1e-7)
    if task == "multiclass":
        loss = float(-np.mean(np.log(probs[labels > 0])))
    else:
        loss = float(-np.mean(labels * np.log(probs) + (1 - labels) * np.log(1 - probs)))
    return {"loss": loss, "roc_auc": tagging_metrics(labels, probs)["roc_auc"]}


def local_clip_predictions(model: nn.Module, mels: np.ndarray, idx: np.ndarray, *, device: torch.device, batch_clips: int = 16) -> np.ndarray:
    """A local model's clip predictions: the mean of its segment predictions."""
    from .aggregation import segment

    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(idx), batch_clips):
            x = torch.from_numpy(np.asarray(mels[idx[i : i + batch_clips]], dtype=np.float32)).to(device)
            segs = segment(x, model.arch.n_frames)
            b, s = segs.shape[:2]
            p = torch.sigmoid(model(segs.reshape(b * s, *segs.shape[2:]))).reshape(b, s, -1).mean(1)
            out.append(p.cpu().numpy())
    return np.concatenate(out)


def train_local(
    model: nn.Module, mels: np.ndarray, labels: np.ndarray, *, train_idx: np.ndarray, valid_idx: np.ndarray,
    config: TrainConfig, workdir: str | Path, device: torch.device,
) -> TrainState:
    """Stage 1: train one local CNN on shuffled segments with binary cross-entropy."""
    model.set_normalisation(*input_statistics(mels, train_idx))  # a resumed run reloads the same values
    batches, n = segment_batches(mels, labels, train_idx, size=model.arch.n_frames, batch_size=config.batch_size, seed=config.seed)
    y_valid = labels[valid_idx]

    def validate(m: nn.Module) -> dict:
        return _clip_validation(lambda _: local_clip_predictions(m, mels, valid_idx, device=device), y_valid, "multilabel")

    return fit(model, train_batches=batches, n_batches=n, validate=validate, loss_fn=nn.BCEWithLogitsLoss(),
               config=config, workdir=workdir, device=device, desc=f"local {model.arch.n_frames}")


# ---------------------------------------------------------------- stage 3

def train_global(
    model: nn.Module, features: np.ndarray, labels: np.ndarray, *, train_idx: np.ndarray, valid_idx: np.ndarray,
    config: TrainConfig, workdir: str | Path, device: torch.device,
) -> TrainState:
    """Stage 3: train the global classifier on aggregated features (same trainer as stage 1)."""
    x_train = features[train_idx].astype(np.float32)
    model.set_normalisation(torch.from_numpy(x_train.mean(0)), torch.from_numpy(x_train.std(0)))
    multiclass = model.arch.task == "multiclass"
    y_train = labels[train_idx].astype(np.float32)
    n = math.ceil(len(train_idx) / config.batch_size)

    def batches(epoch: int):
        order = np.random.default_rng([config.seed, epoch]).permutation(len(train_idx))
        for b in range(n):
            sel = order[b * config.batch_size : (b + 1) * config.batch_size]
            if len(sel) < 2:
                continue
            y = torch.from_numpy(y_train[sel])
            yield torch.from_numpy(x_train[sel]), (y.argmax(1) if multiclass else y)

    x_valid = torch.from_numpy(features[valid_idx].astype(np.float32))

    def predict(m: nn.Module) -> np.ndarray:
        with torch.inference_mode():
            return m.predict_proba(x_valid.to(device)).cpu().numpy()

    def validate(m: nn.Module) -> dict:
        return _clip_validation(lambda _: predict(m), labels[valid_idx], model.arch.task)

    loss_fn = nn.CrossEntropyLoss() if multiclass else nn.BCEWithLogitsLoss()
    return fit(model, train_batches=batches, n_batches=n, validate=validate, loss_fn=loss_fn,
               config=config, workdir=workdir, device=device, desc="global")
