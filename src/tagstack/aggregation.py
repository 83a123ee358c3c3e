"""Stage 2: multi-level, multi-scale feature aggregation (Sec. II-B).

For one clip and one conv layer of one local CNN, the layer's activation on
every segment is max-pooled over time within the segment, then averaged over
the clip's segments; the resulting vectors of the chosen layers and scales are
concatenated. With all layers of the five paper CNNs that is
512 + 512 + 768 + 1,024 + 1,280 = 4,096 dimensions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import ParameterError
from .local_models import LocalCNN


@dataclass(frozen=True)
class FeatureBlock:
    """Where the features of one (scale, layer) sit in the concatenated vector."""

    scale: int
    layer: int
    start: int
    stop: int


def feature_layout(models: dict[int, LocalCNN]) -> list[FeatureBlock]:
    """Blocks of every layer of every model, in order of scale then layer."""
    blocks, start = [], 0
    for scale in sorted(models):
        for info in models[scale].feature_info:
            blocks.append(FeatureBlock(scale, info["layer"], start, start + info["channels"]))
            start += info["channels"]
    return blocks


def select_columns(
    layout: Sequence[FeatureBlock], *, scales: Iterable[int] | None = None, layers: Iterable[int] | None = None
) -> np.ndarray:
    """Column indices of the chosen scales and layers (1-based), for slicing stored features.

    Features are extracted once with every layer and scale and sliced, so the
    ablations of Figs. 3 and 4 never recompute them.
    """
    scales = None if scales is None else set(scales)
    layers = None if layers is None else set(layers)
    available = {b.scale for b in layout}
    if scales is not None and not scales <= available:
        raise ParameterError(f"scales {sorted(scales - available)} not in the features (have {sorted(available)})")
    cols = [
        np.arange(b.start, b.stop)
        for b in layout
        if (scales is None or b.scale in scales) and (layers is None or b.layer in layers)
    ]
    if not cols:
        raise ParameterError(f"no features for scales={scales} layers={layers}")
    return np.concatenate(cols)


def segment(mels: torch.Tensor, size: int) -> torch.Tensor:
    """``(clips, frames, mels)`` -> ``(clips, n_segments, size, mels)``, dropping the remainder."""
    n = mels.shape[1] // size
    if n == 0:
        raise ParameterError(f"a clip of {mels.shape[1]} frames holds no segment of {size} frames")
    return mels[:, : n * size].reshape(mels.shape[0], n, size, mels.shape[2])


def aggregate(
    model: LocalCNN, mels: torch.Tensor, *, layers: Iterable[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aggregate one model over a batch of clips (differentiable; see :func:`aggregate_clips`)."""
    segs = segment(mels, model.arch.n_frames)
    b, s = segs.shape[:2]
    acts, logits = model.forward_intermediates(segs.reshape(b * s, *segs.shape[2:]))
    chosen = range(1, len(acts) + 1) if layers is None else list(layers)
    feats = [acts[i - 1].amax(dim=2).reshape(b, s, -1).mean(dim=1) for i in chosen]
    probs = torch.sigmoid(logits).reshape(b, s, -1).mean(dim=1)
    return torch.cat(feats, dim=1), probs


@torch.inference_mode()
def aggregate_clips(
    model: LocalCNN, mels: torch.Tensor, *, layers: Iterable[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aggregate one model over a batch of clips, without gradients.

    Parameters
    ----------
    mels : torch.Tensor [shape=(clips, frames, n_mels)]

    Returns
    -------
    features : torch.Tensor [shape=(clips, sum of chosen layer widths)]
    probs : torch.Tensor [shape=(clips, n_tags)]
        The local model's clip prediction: the mean of its segment predictions.
    """
    return aggregate(model, mels, layers=layers)


def extract_features(
    models: dict[int, LocalCNN],
    mels: np.ndarray,
    idx: np.ndarray,
    *,
    device: torch.device,
    batch_clips: int = 8,
    progress: bool = True,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """All-layer, all-scale features of clips ``idx`` and each local model's clip predictions.

    One forward pass per model and clip gives both, so stage 2 also evaluates
    the local models for free.

    Returns
    -------
    features : np.ndarray [shape=(len(idx), sum of all layer widths), dtype=float32]
        Laid out as :func:`feature_layout` describes.
    local_probs : dict[int, np.ndarray [shape=(len(idx), n_tags)]]
    """
    from tqdm.auto import tqdm

    scales = sorted(models)
    for m in models.values():
        m.to(device).eval()
    feats, probs = [], {s: [] for s in scales}
    for i in tqdm(range(0, len(idx), batch_clips), desc="aggregate", unit="batch", disable=None if progress else True):
        x = torch.from_numpy(np.asarray(mels[idx[i : i + batch_clips]], dtype=np.float32)).to(device)
        row = []
        for s in scales:
            f, p = aggregate_clips(models[s], x)
            row.append(f.cpu())
            probs[s].append(p.cpu().numpy())
        feats.append(torch.cat(row, dim=1).numpy())
    return np.concatenate(feats), {s: np.concatenate(p) for s, p in probs.items()}
