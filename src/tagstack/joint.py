"""Joint fine-tuning, the paper's stated future work (Sec. V).

After the three stages, the local CNNs and the global classifier are trained
together end to end: a clip's frames go through every local CNN, the
per-layer activations are aggregated exactly as in stage 2 (max within each
segment, mean over segments, differentiably), and the global classifier
reads the concatenation. The same trainer as stages 1 and 3 runs it, from the
staged weights, with a smaller learning rate.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .aggregation import aggregate, feature_layout, select_columns
from .config import TrainConfig
from .global_classifier import GlobalMLP
from .training import TrainState, fit


class JointTagger(nn.Module):
    """Clip frames ``(batch, frames, n_mels)`` -> global logits, through every local CNN."""

    def __init__(self, local: dict[int, nn.Module], global_model: GlobalMLP, *, scales, layers) -> None:
        super().__init__()
        self.scales = sorted(local)
        self.local = nn.ModuleDict({str(s): local[s] for s in self.scales})
        self.global_model = global_model
        cols = select_columns(feature_layout(local), scales=scales, layers=layers)
        self.register_buffer("columns", torch.from_numpy(cols), persistent=False)

    def features(self, mels: torch.Tensor) -> torch.Tensor:
        return torch.cat([aggregate(self.local[str(s)], mels)[0] for s in self.scales], dim=1)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        return self.global_model(self.features(mels)[:, self.columns])

    def predict_proba(self, mels: torch.Tensor) -> torch.Tensor:
        logits = self.forward(mels)
        return torch.sigmoid(logits) if self.global_model.arch.task == "multilabel" else torch.softmax(logits, dim=1)


def _clip_batches(mels, labels, idx, *, batch_size: int, seed: int, multiclass: bool):
    n = int(np.ceil(len(idx) / batch_size))

    def batches(epoch: int):
        order = np.random.default_rng([seed, epoch]).permutation(len(idx))
        for b in range(n):
            sel = idx[np.sort(order[b * batch_size : (b + 1) * batch_size])]
            if len(sel) < 2:
                continue
            y = torch.from_numpy(labels[sel])
            yield torch.from_numpy(np.asarray(mels[sel], dtype=np.float32)), (y.argmax(1) if multiclass else y)

    return batches, n


def predict_joint(model: JointTagger, mels: np.ndarray, idx: np.ndarray, *, device: torch.device, batch_size: int = 8) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(idx), batch_size):
            x = torch.from_numpy(np.asarray(mels[idx[i : i + batch_size]], dtype=np.float32)).to(device)
            out.append(model.predict_proba(x).cpu().numpy())
    return np.concatenate(out)


def finetune_joint(
    model: JointTagger, mels: np.ndarray, labels_by_row: np.ndarray, *, train_rows: np.ndarray, valid_rows: np.ndarray,
    config: TrainConfig, workdir: str | Path, device: torch.device,
) -> TrainState:
    """Train local CNNs and global classifier together (labels indexed by mel-cache row)."""
    from .training import _clip_validation

    multiclass = model.global_model.arch.task == "multiclass"
    batches, n = _clip_batches(mels, labels_by_row, train_rows, batch_size=config.batch_size, seed=config.seed, multiclass=multiclass)

    def validate(m: nn.Module) -> dict:
        return _clip_validation(lambda _: predict_joint(m, mels, valid_rows, device=device), labels_by_row[valid_rows], model.global_model.arch.task)

    loss = nn.CrossEntropyLoss() if multiclass else nn.BCEWithLogitsLoss()
    return fit(model, train_batches=batches, n_batches=n, validate=validate, loss_fn=loss, config=config,
               workdir=workdir, device=device, desc="joint")
