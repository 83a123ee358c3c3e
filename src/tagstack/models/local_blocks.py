"""The paper's local CNNs as plain data (Sec. II-A): the conv blocks of each input size.

Apart from :mod:`.local` (the torch network built from them) so that what
only reads the sizes needs no torch: :class:`~tagstack.experiments.experiment_config.ExperimentConfig`
checks ``scales`` and ``layers`` against them when it is built, and the
command line builds one for its defaults, so ``tagstack --help`` and a
usage error answer without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConvBlock:
    """(filter length, number of filters)-(pool length) in the paper's notation."""

    kernel: int
    channels: int
    pool: int


def _stack_27() -> list[ConvBlock]:
    return [ConvBlock(3, 128, 3), ConvBlock(3, 128, 3), ConvBlock(3, 256, 3)]


#: Conv blocks per input size (frames), from Sec. II-A.
ARCHITECTURES: dict[int, list[ConvBlock]] = {
    18: _stack_27()[:2] + [ConvBlock(2, 256, 2)],
    27: _stack_27(),
    54: _stack_27() + [ConvBlock(2, 256, 2)],
    108: _stack_27() + [ConvBlock(2, 256, 2)] * 2,
    216: _stack_27() + [ConvBlock(2, 256, 2)] * 3,
}
