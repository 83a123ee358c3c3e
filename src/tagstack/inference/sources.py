"""What a :class:`~.tagger.Tagger` accepts as audio (:data:`Source`), and how each kind reaches the one decoder.

Every entry point (``predict``, ``predict_batch``, both ways of
``predict_many``) turns its inputs into sources and decodes them here, so a
file or an array gives the same samples, and so the same result, whichever
path it takes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..audio.io import stream
from ..errors import ParameterError
from ..models.tagging_model import TaggingModel


#: What a :class:`~.tagger.Tagger` reads: a file (a path as text, bytes or ``os.PathLike``) or samples (a numpy array, a torch
#: tensor, or a sequence of numbers; 1-D mono, or 2-D with channels on either axis, the shorter taken as channels).
Source = Union[str, bytes, "os.PathLike[str]", np.ndarray, torch.Tensor, Sequence[float], Sequence[Sequence[float]]]


def as_source(source: Source) -> str | np.ndarray:
    """``source`` as the decoder takes it: a path as ``str`` (bytes decoded as the OS gives names), or samples as a
    numpy array; anything else is a :class:`~tagstack.errors.ParameterError` saying what is accepted."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, bytes):
        return os.fsdecode(source)
    if isinstance(source, (str, np.ndarray)):
        return source
    if isinstance(source, torch.Tensor):
        t = source.detach().cpu()
        return (t.float() if t.is_floating_point() and t.dtype != torch.float64 else t).numpy()
    if isinstance(source, (list, tuple)):
        if any(isinstance(x, (str, bytes, os.PathLike)) for x in source):
            raise ParameterError(
                "got a list of file names: this takes one file or one array of samples "
                "(several files: Tagger.predict_batch or predict_many)"
            )
        try:
            return np.asarray(source)
        except (ValueError, TypeError) as e:
            raise ParameterError(f"a sequence of samples must be numbers, 1-D or 2-D with rows of one length ({e})") from None
    raise ParameterError(f"audio must be a file path, a numpy array, a torch tensor or a sequence of numbers, got {type(source).__name__}")


def source_name(source: str | np.ndarray) -> str:
    """What a :class:`~.result.Result` of ``source`` (as :func:`as_source` gives it) is labelled: the path, or ``"<array>"``."""
    return "<array>" if isinstance(source, np.ndarray) else str(source)


def model_stream(source: str | Path | np.ndarray, model: TaggingModel, *, sr: int | None = None) -> Iterator[tuple[np.ndarray, ...]]:
    """A source decoded for ``model``: mono float32 blocks at each rate of :func:`decoding_rates` (a clip's length each),
    from one decoding.

    Every path that hands audio to a :class:`~.tagger.Tagger` decodes through this, so
    their samples, and so their results, are the same.
    """
    return stream(source, sr=decoding_rates(model), block_seconds=model.frontend.clip_seconds, source_sr=sr)


def decoding_rates(model: TaggingModel) -> list[int]:
    """The distinct sample rates of a model's front ends, the first one's first."""
    return list(dict.fromkeys(fe.sample_rate for fe in model.frontends))
