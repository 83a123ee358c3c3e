"""Stage 3: the global classifier of Sec. II-C.

A fully connected network with two hidden layers (512 or 1,024 units), each
Linear -> BatchNorm -> ReLU -> Dropout(0.5), on standardised aggregated
features. Multi-label tagging uses sigmoid outputs and binary cross-entropy;
single-label genre classification uses softmax and cross-entropy. The
feature mean and standard deviation are buffers, so the model carries them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import ParameterError

TASKS = ("multilabel", "multiclass")


@dataclass(frozen=True)
class GlobalArch:
    """The global classifier's shape: ``n_features`` in, ``n_hidden_layers`` x ``hidden`` units, ``n_outputs`` out."""

    n_features: int
    n_outputs: int
    hidden: int = 512
    n_hidden_layers: int = 2
    dropout: float = 0.5
    task: str = "multilabel"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ParameterError(f"task must be one of {TASKS}, got {self.task!r}")

    def to_dict(self) -> dict:
        """The architecture as plain JSON values, as a model file's header stores it."""
        return asdict(self)


class GlobalMLP(nn.Module):
    """Aggregated features ``(batch, n_features)`` -> logits ``(batch, n_outputs)``."""

    def __init__(self, arch: GlobalArch) -> None:
        super().__init__()
        self.arch = arch
        layers: list[nn.Module] = []
        width = arch.n_features
        for _ in range(arch.n_hidden_layers):
            layers += [
                nn.Linear(width, arch.hidden, bias=False),
                nn.BatchNorm1d(arch.hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(arch.dropout),
            ]
            width = arch.hidden
        layers.append(nn.Linear(width, arch.n_outputs))
        self.net = nn.Sequential(*layers)
        self.register_buffer("feature_mean", torch.zeros(arch.n_features))
        self.register_buffer("feature_std", torch.ones(arch.n_features))

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the training features' per-column ``mean`` and ``std`` ``(n_features,)``, applied before the first layer."""
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        std = torch.as_tensor(std, dtype=torch.float32)
        # a feature that never varied in training (a unit dead on the training set) is left unscaled,
        # so a rare non-zero value at test time cannot blow up to a huge z-score
        self.feature_std.copy_(torch.where(std < 1e-3, torch.ones_like(std), std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(batch, n_features)``, unstandardised -> logits ``(batch, n_outputs)``."""
        if x.dim() != 2 or x.shape[1] != self.arch.n_features:
            raise ParameterError(f"expected features (batch, {self.arch.n_features}), got {tuple(x.shape)}")
        return self.net((x - self.feature_mean) / self.feature_std)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid (multi-label) or softmax (multi-class) of the logits."""
        return activation(self.forward(x), self.arch.task)


def activation(logits: torch.Tensor, task: str) -> torch.Tensor:
    """The output activation of ``task``: sigmoid per tag (multi-label) or softmax over classes (single-label)."""
    return torch.sigmoid(logits) if task == "multilabel" else torch.softmax(logits, dim=1)
