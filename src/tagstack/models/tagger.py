"""The whole tagger as one ``nn.Module``: log-mel clips in, aggregated features and tag logits out.

One type serves every stage that touches a trained tagger: stage 2 reads
its features, joint fine-tuning trains it end to end, the model file stores
it, and inference runs it. Its interface follows timm's split:

- :meth:`TaggingModel.forward_intermediates`: the aggregated features of
  each (scale, layer) block, for any subset of scales and layers;
- :meth:`TaggingModel.forward_features`: their concatenation in the
  canonical layout (scale, then layer), 4,096 values for the paper's CNNs;
- :meth:`TaggingModel.forward_head`: the global classifier on the columns
  it was trained on (``scales``/``layers``);
- :meth:`TaggingModel.forward`: both, so training and inference compute the
  same thing by construction.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..config import FrontEndConfig
from ..datasets.manifest import MAX_GROUP_NAME, is_group_name
from ..errors import ParameterError
from .aggregation import FeatureBlock, aggregate, feature_layout, select_columns
from .classifier import GlobalMLP
from .local import LocalCNN


class TaggingModel(nn.Module):
    """Five (or any number of) local CNNs, aggregation, and an optional global classifier.

    Parameters
    ----------
    local : dict[int, LocalCNN]
        One trained CNN per input size (frames).
    head : GlobalMLP, optional
        The stage-3 classifier; without it the model can embed but not tag.
    tags : list[str]
        Names of the outputs.
    frontend : FrontEndConfig
        The front end whose frames the CNNs read.
    scales, layers : tuple of int, optional
        Which feature blocks the head reads (all scales and all layers when None).
    info : dict
        Free-form provenance (dataset, command, test scores), stored in the model file.
    groups : dict[str, str], optional
        The group of each tag (e.g. mood, genre, a teacher's vocabulary), as the training data's
        ``tag_groups.csv`` gives it; stored in the model file so that tagging can pick the best
        tags within each group. Names not in ``tags`` are dropped.
    """

    def __init__(self, local: dict[int, LocalCNN], head: GlobalMLP | None, *, tags: list[str], frontend: FrontEndConfig,
                 scales: Iterable[int] | None = None, layers: Iterable[int] | None = None, info: dict | None = None,
                 groups: dict[str, str] | None = None) -> None:
        super().__init__()
        if not local:
            raise ParameterError("a tagger needs at least one local CNN")
        self.local = nn.ModuleDict({str(s): local[s] for s in sorted(local)})
        self.head = head
        self.tags = list(tags)
        self.frontend = frontend
        self.scales = tuple(sorted(int(s) for s in scales)) if scales else tuple(sorted(local))
        self.layers = None if layers is None else tuple(sorted(int(i) for i in layers))
        self.info = dict(info or {})
        if groups and not all(map(is_group_name, groups.values())):
            raise ParameterError(f"tag groups must be names of 1..{MAX_GROUP_NAME} characters")
        self.groups = {t: groups[t] for t in self.tags if t in (groups or {})}
        self.layout: list[FeatureBlock] = feature_layout(self.local_models)
        cols = select_columns(self.layout, scales=self.scales, layers=self.layers)
        self.register_buffer("columns", torch.from_numpy(cols), persistent=False)
        if head is not None and head.arch.n_features != len(cols):
            raise ParameterError(f"the global classifier reads {head.arch.n_features} features, but scales {self.scales} "
                                 f"and layers {self.layers or 'all'} give {len(cols)}")
        if head is not None and head.arch.n_outputs != len(self.tags):
            raise ParameterError(f"the global classifier has {head.arch.n_outputs} outputs for {len(self.tags)} tags")

    # ------------------------------------------------------------ description
    @property
    def local_models(self) -> dict[int, LocalCNN]:
        """The local CNNs by input size."""
        return {int(s): m for s, m in self.local.items()}

    @property
    def local_scales(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.local)

    @property
    def task(self) -> str:
        return self.head.arch.task if self.head is not None else "multilabel"

    @property
    def n_features(self) -> int:
        """Width of :meth:`forward_features` (all scales and layers)."""
        return self.layout[-1].stop

    def columns_of(self, *, scales: Iterable[int] | None = None, layers: Iterable[int] | None = None) -> np.ndarray:
        """Columns of :meth:`forward_features` holding the chosen scales and layers."""
        return select_columns(self.layout, scales=scales, layers=layers)

    def selection(self, *, scales: Iterable[int] | None = None, layers: Iterable[int] | None = None) -> tuple[list[int], list[int]]:
        """The scales and the layers that :meth:`columns_of` actually takes columns from (layer 6 exists only at some
        scales, so ``layers=[6]`` selects fewer scales than asked), for recording beside an embedding."""
        chosen = self._chosen_blocks(scales, layers)
        return sorted({b.scale for b in chosen}), sorted({b.layer for b in chosen})

    def _chosen_blocks(self, scales: Iterable[int] | None, layers: Iterable[int] | None) -> list[FeatureBlock]:
        """The :attr:`layout` blocks of the chosen scales and layers; refuses scales and layers the model lacks."""
        self.columns_of(scales=scales, layers=layers)
        s_set = None if scales is None else {int(x) for x in scales}
        l_set = None if layers is None else {int(x) for x in layers}
        return [b for b in self.layout if (s_set is None or b.scale in s_set) and (l_set is None or b.layer in l_set)]

    # ------------------------------------------------------------ computation
    def scale_features(self, scale: int, mels: torch.Tensor, frames: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All-layer aggregated features of one scale and that CNN's clip probabilities."""
        return aggregate(self.local[str(scale)], mels, frames=frames)

    def forward_intermediates(self, mels: torch.Tensor, *, scales: Iterable[int] | None = None,
                              layers: Iterable[int] | None = None) -> dict[tuple[int, int], torch.Tensor]:
        """Aggregated features ``(clips, channels)`` of each chosen ``(scale, layer)``.

        ``mels`` is ``(clips, frames, n_mels)``; each scale reads its whole segments of it.
        """
        chosen = self._chosen_blocks(scales, layers)
        out: dict[tuple[int, int], torch.Tensor] = {}
        for scale in sorted({b.scale for b in chosen}):
            wanted = [b.layer for b in chosen if b.scale == scale]
            feats, _ = aggregate(self.local[str(scale)], mels, layers=wanted)
            widths = [b.stop - b.start for b in chosen if b.scale == scale]
            for layer, part in zip(wanted, torch.split(feats, widths, dim=1)):
                out[(scale, layer)] = part
        return out

    def forward_features(self, mels: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """All layers of all scales, concatenated in :attr:`layout` order: ``(clips, n_features)``; ``frames``
        (audio frames per clip, the rest padding) as in :func:`~tagstack.models.aggregation.aggregate`."""
        return torch.cat([self.scale_features(s, mels, frames)[0] for s in self.local_scales], dim=1)

    def features_and_local_probs(self, mels: torch.Tensor, frames: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """:meth:`forward_features` and every local CNN's clip probabilities, from one pass (stage 2)."""
        parts = {s: self.scale_features(s, mels, frames) for s in self.local_scales}
        return torch.cat([f for f, _ in parts.values()], dim=1), {s: p for s, (_, p) in parts.items()}

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of the global classifier on full-layout ``features`` ``(clips, n_features)``."""
        if self.head is None:
            raise ParameterError("this model has no global classifier (stage 3); it can embed but not tag")
        return self.head(features.index_select(1, self.columns))

    def forward(self, mels: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Clip frames ``(clips, frames, n_mels)`` -> tag logits ``(clips, n_tags)``."""
        return self.forward_head(self.forward_features(mels, frames))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid (multi-label) or softmax (single-label) of logits."""
        return torch.sigmoid(logits) if self.task == "multilabel" else torch.softmax(logits, dim=1)

    def predict_proba(self, mels: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        return self.probabilities(self.forward(mels, frames))

    def proba_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Tag probabilities of full-layout features (inference averages features over windows first)."""
        return self.probabilities(self.forward_head(features))
