"""Every kind of local network a :class:`~tagstack.models.TaggingModel` can hold, by the name its file records.

A local network reads segments ``(batch, frames, n_mels)`` of one log-mel
front end and exposes, like the paper's CNNs:

- ``feature_info``: one ``{"layer", "channels"}`` per level the aggregation reads;
- ``forward_intermediates(x)``: those levels, ``(batch, channels, frames)``
  per frame or ``(batch, channels)`` per segment, and its own logits (or None);
- ``check_segment(frames)``: refuses a segment length it cannot read;
- ``frontend``: the :class:`~tagstack.config.FrontEndConfig` it reads (None:
  the model's own, as for the paper's CNNs), ``n_outputs``, ``arch`` (plain data).

The paper's CNNs are trained here (stage 1); the others are pretrained
elsewhere and converted once (``scripts/convert_pretrained.py``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import FrontEndConfig
from ..errors import ParameterError
from .backbones.artist import ArtistArch, ArtistCNN
from .backbones.musicnn import Musicnn, MusicnnArch
from .backbones.won import Won2d, Won2dArch
from .local import LocalArch, LocalCNN

#: kind -> (network class, its architecture class)
KINDS: dict[str, tuple[type[nn.Module], Any]] = {
    LocalCNN.kind: (LocalCNN, LocalArch),
    Musicnn.kind: (Musicnn, MusicnnArch),
    ArtistCNN.kind: (ArtistCNN, ArtistArch),
    Won2d.kind: (Won2d, Won2dArch),
}


def build_network(kind: str, arch: dict, *, frontend: FrontEndConfig | None = None) -> nn.Module:
    """The network of ``kind`` described by ``arch`` (plain data, as a model file stores it); a backbone reads
    its own front end over the window of ``frontend``."""
    if kind not in KINDS:
        raise ParameterError(f"unknown network kind {kind!r}; known: {sorted(KINDS)}")
    cls, arch_cls = KINDS[kind]
    if cls is LocalCNN:
        return LocalCNN(arch_cls.from_dict(arch))
    return cls(arch_cls.from_dict(arch), frontend=frontend)
