"""Networks pretrained elsewhere, ported to PyTorch: musicnn (:mod:`.musicnn`), the MSD artist CNN (:mod:`.artist`)
and Won et al.'s FCN and CRNN (:mod:`.won`).

Their weights are converted once from the original files (``scripts/convert_pretrained.py``)
and ship inside the package as tagstack model files (``tagstack info musicnn-msd``).
"""

from __future__ import annotations

from ...config import FrontEndConfig
from ...errors import ParameterError


def own_frontend(trained: FrontEndConfig, given: FrontEndConfig | None, *, what: str) -> FrontEndConfig:
    """The front end a backbone reads: the one it was trained on, over the window of ``given`` (any clip length)."""
    if given is None:
        return trained
    if not trained.same_transform(given):
        raise ParameterError(f"{what} reads {trained}, not {given}")
    return given
