"""What a stored result was made from, so that a run folder never resumes or reuses it for other inputs.

A run folder is resumed by running the same command again. Each stored
result (a training checkpoint, the stage-2 features) records a small key:
the schedule it was trained with and digests of the data and networks it
read. When the command changes in a way that changes the result (another
schedule, other clips or labels, other CNNs), the stage stops with one line
naming the folder and what differs, instead of mixing old and new work.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch
from torch import nn


def data_digest(paths: list[str], *, splits: np.ndarray, labels: np.ndarray, tags: list[str], frontend: Any) -> str:
    """A digest of the clips, their splits and labels (unknown ones included), the tags and the front end."""
    h = hashlib.sha256()
    h.update(json.dumps([list(paths), [str(s) for s in splits], list(tags), repr(frontend)]).encode())
    y = np.asarray(labels, dtype=np.float32)
    h.update(np.where(np.isnan(y), np.float32(-1.0), y).tobytes())  # one byte pattern for every NaN
    return h.hexdigest()[:16]


def weights_digest(module: nn.Module) -> str:
    """A digest of a network's parameters and buffers (names, shapes and values)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def plain(key: dict) -> dict:
    """``key`` as JSON would give it back (tuples as lists), for comparing with a stored one."""
    return json.loads(json.dumps(key, sort_keys=True))


def differences(old: dict, new: dict, *, prefix: str = "") -> list[str]:
    """Readable differences between two keys: ``schedule.max_epochs 30 -> 60``, or just ``data`` for a digest."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        name = prefix + k
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, prefix=name + ".")
        elif all(_short(v) for v in (a, b)):
            out.append(f"{name} {a} -> {b}")
        else:  # digests and lists: only which
            out.append(name)
    return out


def _short(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) < 12)
