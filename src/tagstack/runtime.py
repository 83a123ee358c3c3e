"""Where computation runs: the torch device, and how many CPU threads to use.

The device is CUDA when one is available unless the caller names another.
Threads follow the CPUs this process may actually use (its affinity mask,
which a container or ``taskset`` narrows), not the machine's core count.
"""
from __future__ import annotations

import os

import torch

from .errors import ParameterError


def choose_device(name: str | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU; anything else is passed to torch."""
    if name in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ParameterError(f"--device {name!r} is not a torch device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"--device {name!r} asked for CUDA, but no CUDA GPU is available")
    return device


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
