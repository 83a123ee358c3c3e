"""Where computation runs: the torch device, how many CPU threads, and which process of a ``torchrun`` job this is.

The device is CUDA when one is available unless the caller names another
(under ``torchrun``, the GPU of this process's local rank).
Threads follow the CPUs this process may actually use (its affinity mask,
which a container or ``taskset`` narrows), not the machine's core count.

Every use of ``torch.distributed`` outside the trainer is here: joining and
leaving the process group (:func:`distributed`, :func:`leave_distributed`),
waiting for the others (:func:`barrier`, :func:`rank_zero_first`) and putting
the processes' shares of an array together (:func:`all_gather_rows`). It is
a low module so that the stages, the orchestrator and the mel cache can use
it; ``tagstack.distributed`` sits above them and is for Ray.

torch is imported by the functions that need it, not with the module:
:class:`~tagstack.experiments.experiment_config.ExperimentConfig` checks its
device with :func:`parse_device` and the command line ends every command
with :func:`leave_distributed`, yet ``tagstack --help``, a usage error and
``tagstack info --list`` must answer without the seconds torch takes to
import (bench/bench_startup.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from .errors import ParameterError

if TYPE_CHECKING:
    import torch


def parse_device(name: str | None) -> torch.device | None:
    """The device ``name`` names (``None`` for ``"auto"``), checked as a name only.

    Whether this machine has it is :func:`choose_device`'s question, asked
    when work starts: a ``config.toml`` written on a GPU machine with
    ``device = "cuda"`` still loads on a laptop (and runs there with
    ``--device cpu``).
    """
    if name in ("auto", "", None):
        return None
    import torch

    try:
        return torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ParameterError(f"--device {name!r} is not a torch device ({e})") from None


def choose_device(name: str | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU; anything else is passed to torch, and must be here."""
    import torch

    device = parse_device(name)
    if device is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if world_size() > 1 else torch.device("cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"--device {name!r} asked for CUDA, but no CUDA GPU is available")
    return device


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def world_size() -> int:
    """Processes in this job: ``torchrun``'s ``WORLD_SIZE``, or 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ParameterError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def distributed() -> tuple[int, int]:
    """``(rank, world size)`` of this process, joining ``torchrun``'s process group on first call; ``(0, 1)`` alone.

    The backend is NCCL when CUDA is available, else gloo (CPU). The timeout
    is long because rank 0 may build a large mel cache while the others wait.
    """
    if world_size() == 1:
        return 0, 1
    import datetime

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=12))
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    """Wait for every process of a ``torchrun`` job (nothing alone)."""
    if distributed()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Under ``torchrun``, run the body on rank 0 first and on the other processes once it has finished; alone, just run it.

    For work whose result is shared through files, such as a mel cache: rank 0
    builds it while the others wait, then they open what it wrote instead of
    building it too. An exception in the body is not caught here: the others
    then keep waiting until the process group's timeout, or until torchrun
    ends them when rank 0 exits.
    """
    rank, _ = distributed()
    if rank > 0:
        barrier()
    yield
    if rank == 0:
        barrier()


def all_gather_rows(part: np.ndarray, *, rows: int) -> np.ndarray:
    """Every process's ``part`` (float32, at most ``rows`` rows), each padded with zero rows to ``rows``, stacked in rank
    order: ``(world size x rows, columns)``, the same on every process.

    ``torch.distributed.all_gather`` needs one shape on every process, hence
    the padding; a caller whose processes took contiguous shares of ``rows``
    rows (only the last ones short) gets its whole array back as the first
    rows of the result. On NCCL the tensors go through this process's GPU.
    """
    import torch
    import torch.distributed as dist

    _, world = distributed()
    mine = np.zeros((rows, part.shape[1]), np.float32)
    mine[: len(part)] = part
    if world == 1:
        return mine
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    parts = [torch.empty(mine.shape, dtype=torch.float32, device=on) for _ in range(world)]
    dist.all_gather(parts, torch.from_numpy(mine).to(on))
    return torch.cat(parts).cpu().numpy()


def leave_distributed() -> None:
    """Leave ``torchrun``'s process group if this process joined it: the last thing a command does, however it ended.

    Reads ``WORLD_SIZE`` as it is rather than through :func:`world_size`, so that it never raises on the way out.
    """
    if os.environ.get("WORLD_SIZE", "1") != "1":
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def die_with_parent() -> None:
    """On Linux, ask the kernel to end this process when its parent dies, even by kill -9.

    Used by the mel cache's decoding workers and by every process of a
    ``torchrun`` job (whose agent starts them in sessions of their own, so
    killing the agent would otherwise leave them training).
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() == 1:  # the parent was already gone before prctl took effect
            os._exit(1)
