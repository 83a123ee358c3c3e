"""Range checks of numeric options: one home, shared by the CLI (where it parses a flag), the service, Ray and the Python API.

Each option that takes a number has one :class:`Range` here. A value outside
it, or no number at all (NaN, infinity, a bool, a string that is not a
number), is a :class:`~tagstack.errors.ParameterError` naming the option,
the range and the value; so ``--hop 1e308`` is refused before it can
overflow in a conversion to samples, and the same words reach a user of the
CLI, the HTTP API and Python.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from .errors import ParameterError

#: No duration an option takes may exceed this (about 116 days): beyond it a number is a mistake, and a
#: conversion to samples (seconds x rate) would leave the range of the integers the decoders and numpy use.
LONGEST_SECONDS = 10_000_000.0


@dataclass(frozen=True)
class Range:
    """The numbers an option accepts: ``low`` (excluded with ``above``) to ``high``, whole numbers with ``integer``."""

    name: str
    low: float
    high: float
    integer: bool = False
    above: bool = False  # low itself is not accepted
    unit: str = ""
    below: bool = False  # high itself is not accepted

    def describe(self) -> str:
        """The accepted range in words (``a whole number >= 1 and <= 64``), for error messages and ``--help``."""
        kind = "a whole number" if self.integer else "a number"
        low = f"> {_plain(self.low)}" if self.above else f">= {_plain(self.low)}"
        high = f"< {_plain(self.high)}" if self.below else f"<= {_plain(self.high)}"
        return f"{kind} {low} and {high}" + (f" ({self.unit})" if self.unit else "")

    def check(self, value):
        """``value`` itself (a Python int or float) when it is in range; else a :class:`ParameterError`."""
        ok_type = isinstance(value, numbers.Integral) if self.integer else isinstance(value, numbers.Real)
        if isinstance(value, bool) or not ok_type:
            raise ParameterError(f"{self.name} must be {self.describe()}, got {value!r}")
        value = int(value) if self.integer else float(value)
        if (
            not math.isfinite(value)
            or value < self.low
            or value > self.high
            or (self.above and value == self.low)
            or (self.below and value == self.high)
        ):
            raise ParameterError(f"{self.name} must be {self.describe()}, got {value!r}")
        return value

    def named(self, name: str) -> Range:
        """The same range under another name: a configuration field's (``max_epochs``) rather than its flag's (``epochs``)."""
        return dataclasses.replace(self, name=name)

    def parse(self, text: str):
        """A number written as text (a flag, a query parameter), checked."""
        try:
            return self.check(int(text) if self.integer else float(text))
        except (TypeError, ValueError):  # ParameterError too: the message quotes what was written
            raise ParameterError(f"{self.name} must be {self.describe()}, got {text!r}") from None


def _plain(x: float) -> str:
    """A bound as people write it: 10,000,000 rather than 1e+07."""
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


# ------------------------------------------------------------ tagging and serving
HOP = Range("hop", 0.0, LONGEST_SECONDS, above=True, unit="seconds")
MAX_SECONDS = Range("max_seconds", 0.0, LONGEST_SECONDS, above=True, unit="seconds")
TOP_K = Range("top_k", 0, 10**9, integer=True)
#: tags reported per file when neither top_k nor a threshold is given (CLI, Python, service)
DEFAULT_TOP_K = 5
THRESHOLD = Range("threshold", 0.0, 1.0)
BATCH_WINDOWS = Range("batch_windows", 1, 65_536, integer=True)
BATCH_FILES = Range("batch_files", 1, 65_536, integer=True)
WORKERS = Range("workers", 0, 4096, integer=True)
PORT = Range("port", 1, 65_535, integer=True)
MAX_UPLOAD_MB = Range("max_upload_mb", 0.0, 1_000_000.0, above=True, unit="MB")
CONCURRENCY = Range("concurrency", 0, 4096, integer=True)
MAX_UPLOADS = Range("max_uploads", 1, 100_000, integer=True)
UPLOAD_TIMEOUT = Range("upload_timeout", 0.0, 3600.0, above=True, unit="seconds")
MIN_UPLOAD_RATE = Range("min_upload_kbps", 0.0, 1_000_000.0, unit="kB/s")
HEADER_TIMEOUT = Range("header_timeout", 0.0, 3600.0, above=True, unit="seconds")
SHUTDOWN_TIMEOUT = Range("shutdown_timeout", 0.0, 3600.0, unit="seconds")

# ------------------------------------------------------------ training (flags and the configuration's fields alike)
EPOCHS = Range("epochs", 1, 1_000_000, integer=True)
LR = Range("lr", 0.0, 1e6, above=True)
LR_DECAY = Range("lr_decay", 0.0, 1.0, above=True, below=True)
MOMENTUM = Range("momentum", 0.0, 1.0, above=True, below=True)  # Nesterov momentum needs one
WEIGHT_DECAY = Range("weight_decay", 0.0, 1e6)
BATCH_SIZE = Range("batch_size", 1, 1_000_000, integer=True)
N_BOOT = Range("n_boot", 0, 1_000_000, integer=True)
LR_STAGES = Range("lr_stages", 1, 100, integer=True)
PATIENCE = Range("patience", 1, 1_000_000, integer=True)
SEED = Range("seed", 0, 2**32 - 1, integer=True)
LAYER = Range("layer", 1, 1000, integer=True)
HIDDEN = Range("hidden", 1, 65_536, integer=True)
WARMUP_EPOCHS = Range("warmup_epochs", 0, 1_000_000, integer=True)
MIXUP = Range("mixup", 0.0, 1e6)
CLIP_NORM = Range("clip_norm", 0.0, 1e6)


def check_hop(hop: float, sample_rate: int) -> int:
    """The taggram hop, seconds between window starts, as a whole number of samples (at least one) at ``sample_rate``."""
    return max(1, round(HOP.check(hop) * sample_rate))


def check_taggram_hop(hop: float | None, taggram: bool) -> None:
    """A hop is for taggrams alone: refuse one given without a taggram (it would be ignored), or out of range."""
    if hop is not None:
        if not taggram:
            raise ParameterError(f"hop {hop!r} is the step between taggram windows: it needs a taggram (--taggram DIR)")
        HOP.check(hop)


def check_selection(top_k: int | None, threshold: float | None) -> None:
    """Refuse a tag selection that cannot mean anything (a negative or fractional count, a threshold outside [0, 1])."""
    if top_k is not None:
        TOP_K.check(top_k)
    if threshold is not None:
        THRESHOLD.check(threshold)


__all__ = ["LONGEST_SECONDS", "Range", "check_hop", "check_selection", "check_taggram_hop"]
