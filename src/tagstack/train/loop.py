"""The one training loop, for stage 1 (local CNNs), stage 3 (global classifier) and joint fine-tuning.

The authors' schedule: SGD with Nesterov momentum, learning rate 0.01, and
whenever the monitored validation score has not improved for ``patience``
epochs the best checkpoint is restored and the rate multiplied by 0.2; after
``lr_stages`` rates training stops. A checkpoint is written atomically after
every epoch, so a killed run resumes at the epoch where it stopped, and a
finished run is not trained again.

Under ``torchrun`` (DistributedDataParallel) every process runs this same
loop on the same shuffled batches and computes its share of each one; each
share's mean loss is weighted by its part of the batch's known targets
(:func:`share_weight`; shares differ in size, and in unknown labels) and the
gradients are averaged, so the steps, the schedule and early stopping are
those of one process with the same batch size, and every process holds the
same weights and takes the same decisions without further communication.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import TagstackError
from ..fileio import atomic_write, atomic_write_json
from ..progress import progress
from ..provenance import differences, plain
from ..runtime import barrier, distributed

log = logging.getLogger(__name__)


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


def _save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, state: TrainState, key: dict) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "state": json.dumps(asdict(state)),
        "key": json.dumps(key, sort_keys=True),
    }
    atomic_write(path, lambda tmp: _torch_save(payload, tmp))


def _torch_save(obj: object, tmp: str) -> None:
    """``torch.save`` into memory, then written by Python. In memory the archive inside is named ``archive``, not
    after the temporary file, so the same weights always give the same bytes; and a full disk is an OSError that
    :func:`atomic_write` names in one line (torch's own file writer turns it into an opaque RuntimeError)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    Path(tmp).write_bytes(buf.getbuffer())


def _load_weights(path: Path, device: torch.device) -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise TagstackError(f"{path}: cannot read these weights ({type(e).__name__}); delete the folder to train again") from None


def _optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)


def _known(y: torch.Tensor) -> int:
    """Targets that count in a mean loss: the non-NaN labels (tags), or the rows (class indices)."""
    return int((~torch.isnan(y)).sum()) if y.is_floating_point() else int(y.shape[0])


def share_weight(y: torch.Tensor, *, rank: int, world: int) -> float:
    """The factor that turns the mean loss of process ``rank``'s share of a batch into its part of the batch's mean.

    With it, the average over the ``world`` processes (what DDP does to
    gradients) equals the gradient of the whole batch's mean loss on one
    process, however the known targets fall into the shares.
    """
    return _known(y[rank::world]) / max(_known(y), 1) * world


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
    inputs: dict | None = None,
) -> TrainState:
    """Train ``model`` in place and leave it holding its best weights.

    Parameters
    ----------
    train_batches : callable
        ``train_batches(epoch)`` yields ``(inputs, targets)`` CPU tensors for one
        epoch, shuffled deterministically from the epoch number; ``inputs`` may be
        a tuple of tensors, the model's arguments.
    validate : callable
        ``validate(model)`` returns a dict with at least ``loss`` and ``roc_auc``.
    workdir : path
        Holds ``last.pt`` (resume point), ``best.pt`` and ``history.json``.
    inputs : dict, optional
        Digests of what the training reads (data, starting networks). With the
        schedule they are the checkpoint's key: a checkpoint made under another
        key is refused, never resumed (:mod:`tagstack.provenance`).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    last, best = workdir / "last.pt", workdir / "best.pt"
    model.to(device)
    state = TrainState(lr=config.lr)
    opt = _optimizer(model, config, config.lr)
    key = plain({"schedule": asdict(config), **(inputs or {})})
    if last.exists():
        try:
            ckpt = torch.load(last, map_location=device, weights_only=True)
            changed = differences(json.loads(ckpt["key"]), key) if "key" in ckpt else None
            state = TrainState(**json.loads(ckpt["state"]))
            model.load_state_dict(ckpt["model"])
            opt = _optimizer(model, config, state.lr)
            opt.load_state_dict(ckpt["optimizer"])
        except Exception as e:  # written atomically by tagstack, so damaged by something else
            raise TagstackError(
                f"{last}: cannot resume from this checkpoint ({type(e).__name__}); delete it to train this network again from the start"
            ) from None
        if changed is None:
            raise TagstackError(
                f"{workdir}: trained by an earlier tagstack, which did not record its settings and inputs; "
                "delete that folder to train it again, or use another run folder"
            )
        if changed:
            raise TagstackError(
                f"{workdir}: trained with other settings or inputs ({', '.join(changed)}); run the same command "
                "as before to resume it, or use another run folder (or delete this one to train it again)"
            )
        log.info("[%s] %s", desc, "already trained, reused" if state.done else f"resuming after epoch {state.epoch} (lr {state.lr:g})")
    rank, world = distributed()
    step_model = model
    if world > 1:  # torchrun: every process takes its share of each batch; DDP averages the gradients
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    started = time.time()
    epochs_run = 0
    while not state.done:
        torch.manual_seed(config.seed + state.epoch)
        model.train()
        total, count = 0.0, 0
        bar = progress(
            train_batches(state.epoch), total=n_batches, desc=f"[{desc}] epoch {state.epoch + 1}", unit="batch", leave=False, hide=rank != 0
        )
        for b, (x, y) in enumerate(bar):
            xs = x if isinstance(x, tuple) else (x,)  # the model's inputs: frames, and for whole clips their audio frames
            weight = 1.0
            if world > 1:
                if len(y) < world:  # every process sees the same batches, so all skip this one
                    continue
                weight = share_weight(y, rank=rank, world=world)
                xs, y = tuple(_each(t, lambda u: u[rank::world]) for t in xs), y[rank::world]
            if state.epoch < config.warmup_epochs:  # a linear ramp to the first rate, batch by batch
                for group in opt.param_groups:
                    group["lr"] = state.lr * (state.epoch * n_batches + b + 1) / (config.warmup_epochs * n_batches)
            elif state.epoch == config.warmup_epochs and b == 0:
                for group in opt.param_groups:
                    group["lr"] = state.lr
            xs, y = tuple(_each(t, lambda u: u.to(device, non_blocking=True)) for t in xs), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(step_model(*xs), y)
            (loss * weight).backward()
            if config.clip_norm:
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            opt.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
            bar.set_postfix(
                loss=f"{total / max(count, 1):.4f}", refresh=False
            )  # shown at the bar's next refresh, not a log line of its own
        bar.close()
        if world > 1:  # running statistics (BatchNorm) are rank 0's, as DDP broadcasts them before each step
            for buf in model.buffers():
                torch.distributed.broadcast(buf, 0)
        model.eval()
        metrics = validate(model)
        state.epoch += 1
        epochs_run += 1
        record = {"epoch": state.epoch, "lr": state.lr, "train_loss": total / max(count, 1), **{f"val_{k}": v for k, v in metrics.items()}}
        state.history.append(record)
        score = _score(metrics, config.monitor)
        if score > state.best_score:
            state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
            atomic_write(best, lambda tmp: _torch_save(model.state_dict(), tmp))
        else:
            state.bad_epochs += 1
        if state.bad_epochs >= config.patience:
            state.stage += 1
            if state.stage >= config.lr_stages:
                state.done = True
            else:
                model.load_state_dict(_load_weights(best, device))
                state.lr *= config.lr_decay
                state.bad_epochs = 0
                opt = _optimizer(model, config, state.lr)
        if state.epoch >= config.max_epochs:
            state.done = True
        per_epoch = (time.time() - started) / epochs_run
        left = "" if state.done else f", at most {per_epoch * (config.max_epochs - state.epoch) / 60:.1f} min left"
        log.info(
            f"[{desc}] epoch {state.epoch}: train loss {record['train_loss']:.4f}, val loss {metrics['loss']:.4f}, "
            f"val ROC-AUC {metrics['roc_auc']:.4f}, lr {record['lr']:g} ({per_epoch:.1f} s/epoch{left})"
        )
        _save_checkpoint(last, model, opt, state, key)
        atomic_write_json(workdir / "history.json", state.history)
        barrier()  # under torchrun, rank 0's checkpoints are on disk before any process reads them
    if best.exists():
        model.load_state_dict(_load_weights(best, device))
    model.eval()
    return state


def _each(x, fn):
    """``fn`` of a tensor, or of each tensor of a list (the inputs of a model that reads several front ends)."""
    return [fn(t) for t in x] if isinstance(x, list) else fn(x)
