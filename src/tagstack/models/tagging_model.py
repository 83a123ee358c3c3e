"""The whole tagger as one ``nn.Module``: log-mel clips in, aggregated features and tag logits out.

One type serves every stage that touches a trained tagger: stage 2 reads
its features, joint fine-tuning trains it end to end, the model file stores
it, and inference runs it. Its local networks are the paper's CNNs
(trained here, stage 1), pretrained backbones (musicnn, the MSD artist CNN),
or both; a *branch* (the paper's "scale") is one network read on segments of
one length, and every branch is aggregated the same way. Its interface
follows timm's split:

- :meth:`TaggingModel.forward_intermediates`: the aggregated features of
  each (scale, layer) block, for any subset of scales and layers;
- :meth:`TaggingModel.forward_features`: their concatenation in the
  canonical layout (scale, then layer), 4,096 values for the paper's CNNs;
- :meth:`TaggingModel.forward_head`: the global classifier on the columns
  it was trained on (``scales``/``layers``);
- :meth:`TaggingModel.forward`: both, so training and inference compute the
  same thing by construction.

Inputs are one log-mel tensor per distinct front end of the networks
(:attr:`TaggingModel.frontends`; a single tensor when there is one), so a
front end shared by several networks is computed once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..config import FrontEndConfig
from ..errors import ParameterError
from ..tags import MAX_GROUP_NAME, is_group_name
from .aggregation import FeatureBlock, aggregate_sizes, feature_layout, select_columns
from .classifier import GlobalMLP, activation
from .local import LocalCNN

#: A network's name: letters, digits, '.', '_' and '-' (a branch adds '/frames').
NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

Inputs = torch.Tensor | Sequence[torch.Tensor]


@dataclass(frozen=True)
class Branch:
    """One network read on segments of ``frames`` frames: one of the paper's scales."""

    network: str
    frames: int

    @property
    def name(self) -> str:
        """``"27"`` for a paper CNN (named by its size), ``"musicnn-msd/187"`` for a backbone."""
        return self.network if self.network == str(self.frames) else f"{self.network}/{self.frames}"


class TaggingModel(nn.Module):
    """Local networks, aggregation, and an optional global classifier.

    Parameters
    ----------
    local : dict[str or int, nn.Module]
        The local networks by name: the paper's CNNs are named by their input size
        (``{18: LocalCNN, ...}``), backbones by what they are (``"musicnn-msd"``).
    head : GlobalMLP, optional
        The stage-3 classifier; without it the model can embed, and tag only through a
        network's own outputs (``tags_from``).
    tags : list[str]
        Names of the outputs.
    frontend : FrontEndConfig
        The front end of the paper's CNNs (backbones bring their own); its clip length is
        the window every front end is computed over.
    branches : list[Branch], optional
        The (network, segment length) pairs aggregated, in feature order (default: each paper
        CNN at its input size, by size).
    scales, layers : iterables, optional
        Which feature blocks the head reads: branch names and 1-based levels (all when None).
    info : dict
        Free-form provenance (dataset, command, test scores, sources and licences), stored in the model file.
    groups : dict[str, str], optional
        The group of each tag (mood, genre, a teacher's vocabulary), as the training data's
        ``tag_groups.csv`` gives it, so that tagging can pick the best tags within each group.
    tags_from : str, optional
        Without a head: the branch whose network's own outputs (mean over segments) are the tags,
        e.g. musicnn's 50 tags.

    Attributes
    ----------
    branches : list[Branch]
        The scales, in feature order; :attr:`local_scales` names them (``"27"``, ``"musicnn-mtt/187"``).
    frontends : list[FrontEndConfig]
        The distinct front ends the branches read: one input tensor each, in this order.
    layout : list[FeatureBlock]
        Where each (scale, layer) block sits in :meth:`forward_features`' ``n_features`` columns.
    scales, layers : tuple
        The blocks the head reads (``layers`` None: all).

    Raises
    ------
    ParameterError
        Inconsistent parts: a branch of a missing network or too long a segment, a head whose width does not
        match the chosen blocks or the tags, front ends of different clip lengths ...
    """

    def __init__(
        self,
        local: Mapping[str | int, nn.Module],
        head: GlobalMLP | None,
        *,
        tags: list[str],
        frontend: FrontEndConfig,
        branches: Sequence[Branch] | None = None,
        scales: Iterable[str | int] | None = None,
        layers: Iterable[int] | None = None,
        info: dict | None = None,
        groups: dict[str, str] | None = None,
        tags_from: str | None = None,
    ) -> None:
        super().__init__()
        if not local:
            raise ParameterError("a tagger needs at least one local network")
        names = {str(k): v for k, v in local.items()}
        bad = [n for n in names if not NETWORK_NAME.fullmatch(n)]
        if bad:
            raise ParameterError(f"network names must be letters, digits, '.', '_' or '-' (at most 64), got {bad}")
        self.local = nn.ModuleDict(names)
        if branches is None:
            if not all(isinstance(m, LocalCNN) for m in names.values()):
                raise ParameterError("pretrained backbones need their branches (segment lengths) given")
            branches = [Branch(n, m.arch.n_frames) for n, m in sorted(names.items(), key=lambda kv: kv[1].arch.n_frames)]
        self.branches = list(branches)
        self.frontend = frontend
        self.frontends: list[FrontEndConfig] = []
        self._frontend_of: dict[str, int] = {}
        for b in self.branches:
            if b.network not in names:
                raise ParameterError(f"branch {b.name} reads network {b.network!r}, which the model does not have")
            names[b.network].check_segment(b.frames)
            fe = names[b.network].frontend or frontend
            if fe not in self.frontends:
                self.frontends.append(fe)
            self._frontend_of[b.name] = self.frontends.index(fe)
            if b.frames > fe.n_frames:
                raise ParameterError(f"branch {b.name}: segments of {b.frames} frames do not fit a window of {fe.n_frames} frames")
        if len({b.name for b in self.branches}) != len(self.branches) or not self.branches:
            raise ParameterError(f"branches must be distinct and at least one, got {[b.name for b in self.branches]}")
        if len({fe.clip_seconds for fe in self.frontends}) > 1:
            raise ParameterError(
                f"every front end must window the same clip length, got {sorted({fe.clip_seconds for fe in self.frontends})}"
            )
        self.head = head
        self.tags = list(tags)
        self.scales = tuple(str(s) for s in scales) if scales else self.local_scales
        self.layers = None if layers is None else tuple(sorted(int(i) for i in layers))
        self.info = dict(info or {})
        if groups and not all(map(is_group_name, groups.values())):
            raise ParameterError(f"tag groups must be names of 1..{MAX_GROUP_NAME} characters")
        self.groups = {t: groups[t] for t in self.tags if t in (groups or {})}
        self.layout: list[FeatureBlock] = feature_layout({b.name: names[b.network] for b in self.branches})
        cols = select_columns(self.layout, scales=self.scales, layers=self.layers)
        self.register_buffer("columns", torch.from_numpy(cols), persistent=False)
        if head is not None and head.arch.n_features != len(cols):
            raise ParameterError(
                f"the global classifier reads {head.arch.n_features} features, but scales {self.scales} "
                f"and layers {self.layers or 'all'} give {len(cols)}"
            )
        if head is not None and head.arch.n_outputs != len(self.tags):
            raise ParameterError(f"the global classifier has {head.arch.n_outputs} outputs for {len(self.tags)} tags")
        self.tags_from = tags_from
        if tags_from is not None:
            if head is not None or tags_from not in self.local_scales:
                raise ParameterError(f"tags_from must name a branch of a model without a global classifier, got {tags_from!r}")
            if self.network_of(tags_from).n_outputs != len(self.tags):
                raise ParameterError(f"branch {tags_from} has {self.network_of(tags_from).n_outputs} outputs for {len(self.tags)} tags")

    # ------------------------------------------------------------ description
    @property
    def local_models(self) -> dict[str, nn.Module]:
        """The local networks by name."""
        return dict(self.local.items())

    @property
    def local_scales(self) -> tuple[str, ...]:
        """The branch names (scales), in feature order."""
        return tuple(b.name for b in self.branches)

    def branch(self, scale: str | int) -> Branch:
        """The branch named ``scale``."""
        for b in self.branches:
            if b.name == str(scale):
                return b
        raise ParameterError(f"no scale {scale!r} in this model (it has {list(self.local_scales)})")

    def network_of(self, scale: str | int) -> nn.Module:
        """The local network that branch ``scale`` reads (one network may serve several branches)."""
        return self.local[self.branch(scale).network]

    def frontend_of(self, scale: str | int) -> int:
        """Index in :attr:`frontends` of the front end that branch ``scale`` reads."""
        return self._frontend_of[self.branch(scale).name]

    @property
    def can_tag(self) -> bool:
        """Whether the model has tags to give: a global classifier, or a network's own outputs (``tags_from``)."""
        return self.head is not None or self.tags_from is not None

    @property
    def task(self) -> str:
        """``"multilabel"`` (sigmoid per tag) or ``"multiclass"`` (softmax over classes), from the classifier."""
        return self.head.arch.task if self.head is not None else "multilabel"

    @property
    def n_features(self) -> int:
        """Width of :meth:`forward_features` (all scales and layers)."""
        return self.layout[-1].stop

    def columns_of(self, *, scales: Iterable[str | int] | None = None, layers: Iterable[int] | None = None) -> np.ndarray:
        """Columns of :meth:`forward_features` holding the chosen scales and layers.

        Parameters
        ----------
        scales : iterable of str or int, optional
            Branch names (``"27"`` or 27, ``"musicnn-mtt/187"``); all when None.
        layers : iterable of int, optional
            1-based levels; all when None.

        Returns
        -------
        columns : np.ndarray [shape=(n_columns,), dtype=int]
            Indices into the ``n_features`` columns, in layout order.

        Raises
        ------
        ParameterError
            A scale or layer the model does not have.
        """
        return select_columns(self.layout, scales=scales, layers=layers)

    def selection(self, *, scales: Iterable[str | int] | None = None, layers: Iterable[int] | None = None) -> tuple[list[str], list[int]]:
        """The scales and the layers that :meth:`columns_of` actually takes columns from (layer 6 exists only at some
        scales, so ``layers=[6]`` selects fewer scales than asked), for recording beside an embedding."""
        chosen = self._chosen_blocks(scales, layers)
        return [s for s in self.local_scales if s in {b.scale for b in chosen}], sorted({b.layer for b in chosen})

    def _chosen_blocks(self, scales: Iterable[str | int] | None, layers: Iterable[int] | None) -> list[FeatureBlock]:
        """The :attr:`layout` blocks of the chosen scales and layers; refuses scales and layers the model lacks."""
        self.columns_of(scales=scales, layers=layers)
        s_set = None if scales is None else {str(x) for x in scales}
        l_set = None if layers is None else {int(x) for x in layers}
        return [b for b in self.layout if (s_set is None or b.scale in s_set) and (l_set is None or b.layer in l_set)]

    # ------------------------------------------------------------ computation
    def _per_frontend(self, x: Inputs | None, what: str) -> list[torch.Tensor | None]:
        """``x`` as one entry per front end (a single tensor is the only front end's)."""
        if x is None:
            return [None] * len(self.frontends)
        if isinstance(x, torch.Tensor):
            if len(self.frontends) != 1:
                raise ParameterError(f"this model reads {len(self.frontends)} front ends: give {what} as a list, one per front end")
            return [x]
        if len(x) != len(self.frontends):
            raise ParameterError(f"{len(x)} {what} for {len(self.frontends)} front ends")
        return list(x)

    def branch_features(
        self, mels: Inputs, frames: Inputs | None = None, *, scales: Iterable[str | int] | None = None, layers: Iterable[int] | None = None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Aggregated features of the chosen levels and the network's own clip probabilities, per branch (scale).

        The branches of one network are aggregated together
        (:func:`~tagstack.models.aggregation.aggregate_sizes`), so a network
        read at several segment lengths shares what it can between them.
        Only the front ends of the chosen branches need inputs.
        """
        chosen = self.local_scales if scales is None else [self.branch(s).name for s in scales]
        inputs, counts = self._per_frontend(mels, "inputs"), self._per_frontend(frames, "frame counts")
        by_network: dict[str, list[Branch]] = {}
        for b in self.branches:
            if b.name in chosen:
                by_network.setdefault(b.network, []).append(b)
        out = {}
        for network, branches in by_network.items():
            i, net = self._frontend_of[branches[0].name], self.local[network]
            mine = None if layers is None else [layer for layer in layers if 1 <= layer <= len(net.feature_info)]
            parts = aggregate_sizes(net, inputs[i], sizes=[b.frames for b in branches], layers=mine, frames=counts[i])
            out.update({b.name: part for b, part in zip(branches, parts)})
        return {s: out[s] for s in chosen}

    def forward_intermediates(
        self, mels: Inputs, *, scales: Iterable[str | int] | None = None, layers: Iterable[int] | None = None
    ) -> dict[tuple[str, int], torch.Tensor]:
        """Aggregated features ``(clips, channels)`` of each chosen ``(scale, layer)``.

        ``mels`` is ``(clips, frames, n_mels)`` per front end; each branch reads its whole segments of it.

        Parameters
        ----------
        mels : torch.Tensor [shape=(clips, frames, n_mels)], or a sequence of them
            Log-mel clips, one tensor per front end of :attr:`frontends` (a single tensor when there is one).
        scales : iterable of str or int, optional
            Branch names; all when None.
        layers : iterable of int, optional
            1-based levels; all when None.

        Returns
        -------
        features : dict[tuple[str, int], torch.Tensor [shape=(clips, channels)]]
            Keyed by ``(scale, layer)``, in layout order.
        """
        chosen = self._chosen_blocks(scales, layers)
        scales = [s for s in self.local_scales if s in {b.scale for b in chosen}]
        wanted = sorted({b.layer for b in chosen})
        out: dict[tuple[str, int], torch.Tensor] = {}
        for scale, (feats, _) in self.branch_features(mels, scales=scales, layers=wanted).items():
            have = [layer for layer in wanted if (scale, layer) in {(b.scale, b.layer) for b in self.layout}]
            widths = [self.network_of(scale).feature_info[layer - 1]["channels"] for layer in have]
            for layer, part in zip(have, torch.split(feats, widths, dim=1)):
                out[(scale, layer)] = part
        return out

    def forward_features(self, mels: Inputs, frames: Inputs | None = None) -> torch.Tensor:
        """All layers of all scales, concatenated in :attr:`layout` order: ``(clips, n_features)``; ``frames``
        (audio frames per clip, the rest padding) as in :func:`~tagstack.models.aggregation.aggregate`.

        Parameters
        ----------
        mels : torch.Tensor [shape=(clips, frames, n_mels)], or a sequence of them
            Log-mel clips, one tensor per front end of :attr:`frontends` (a single tensor when there is one).
        frames : torch.Tensor [shape=(clips,)], or a sequence of them, optional
            Frames of audio in each clip, per front end, when the rest is zero padding.

        Returns
        -------
        features : torch.Tensor [shape=(clips, n_features)]
            The paper's multi-level, multi-scale features (every block, whatever the head reads).
        """
        return self.features_and_local_probs(mels, frames)[0]

    def features_and_local_probs(self, mels: Inputs, frames: Inputs | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`forward_features` and every branch's own clip probabilities, from one pass (stage 2)."""
        parts = self.branch_features(mels, frames)
        return torch.cat([f for f, _ in parts.values()], dim=1), {s: p for s, (_, p) in parts.items()}

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of the global classifier on full-layout ``features`` ``(clips, n_features)``.

        Parameters
        ----------
        features : torch.Tensor [shape=(clips, n_features)]
            As :meth:`forward_features` gives them; the head picks its own columns.

        Returns
        -------
        logits : torch.Tensor [shape=(clips, n_tags)]

        Raises
        ------
        ParameterError
            The model has no global classifier.
        """
        require_classifier(self)
        return self.head(features.index_select(1, self.columns))

    def forward(self, mels: Inputs, frames: Inputs | None = None) -> torch.Tensor:
        """Clip frames ``(clips, frames, n_mels)`` per front end -> tag logits ``(clips, n_tags)``.

        Parameters
        ----------
        mels : torch.Tensor [shape=(clips, frames, n_mels)], or a sequence of them
            Log-mel clips, one tensor per front end of :attr:`frontends` (a single tensor when there is one).
        frames : torch.Tensor [shape=(clips,)], or a sequence of them, optional
            Frames of audio in each clip, per front end, when the rest is zero padding.

        Returns
        -------
        logits : torch.Tensor [shape=(clips, n_tags)]
            Of the global classifier (:meth:`probabilities` turns them into probabilities).
        """
        return self.forward_head(self.forward_features(mels, frames))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid (multi-label) or softmax (single-label) of logits."""
        return activation(logits, self.task)

    def predict_proba(self, mels: Inputs, frames: Inputs | None = None) -> torch.Tensor:
        """Tag probabilities of log-mel clips: :meth:`forward`, then sigmoid or softmax.

        Parameters
        ----------
        mels : torch.Tensor [shape=(clips, frames, n_mels)], or a sequence of them
            Log-mel clips, one tensor per front end of :attr:`frontends` (a single tensor when there is one).
        frames : torch.Tensor [shape=(clips,)], or a sequence of them, optional
            Frames of audio in each clip, per front end, when the rest is zero padding.

        Returns
        -------
        probs : torch.Tensor [shape=(clips, n_tags)]
        """
        return self.probabilities(self.forward(mels, frames))

    def proba_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Tag probabilities of full-layout features (inference averages features over windows first).

        Parameters
        ----------
        features : torch.Tensor [shape=(clips, n_features)]
            As :meth:`forward_features` gives them (or their mean over a file's windows).

        Returns
        -------
        probs : torch.Tensor [shape=(clips, n_tags)]
        """
        return self.probabilities(self.forward_head(features))


def require_classifier(model: TaggingModel) -> None:
    """The one check that ``model`` has a global classifier (stage 3), for what only a classifier can do."""
    if model.head is None:
        raise ParameterError(
            "this model has no global classifier (stage 3); it can embed, and tag only with a "
            "network's own outputs" + (f" ({model.tags_from})" if model.tags_from else "")
        )


def require_tagger(model: TaggingModel) -> None:
    """The one check that ``model`` can tag: a global classifier, or a network's own outputs (``tags_from``)."""
    if not model.can_tag:
        raise ParameterError(
            "this model has no global classifier (stage 3) and no network whose outputs are its tags; it can embed but not tag"
        )
