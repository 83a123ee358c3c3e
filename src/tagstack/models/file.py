"""A whole tagger as one self-describing safetensors file.

The file holds the tensors of the local CNNs and of the global classifier
(never a pickle, so a file from a stranger cannot run code) and, in its
header, a JSON document with everything needed to rebuild them: the tag
vocabulary and its tag groups, the front end, each network's architecture, which feature
blocks the classifier reads, and provenance (dataset, command, test scores).

A model file is a stranger's input. :func:`read_metadata` validates the
whole header (types, ranges, and the shape of every tensor against the
architecture it describes, read from the safetensors header without
allocating anything) before :func:`load_model` builds a network, and
:func:`load_model` refuses weights that are not finite. Every problem is
one :class:`ModelFileError` naming the file and the field.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..config import FrontEndConfig
from ..datasets.manifest import MAX_GROUP_NAME, is_group_name
from ..errors import ModelFileError, TagstackError
from ..fileio import atomic_write, finite_json
from .classifier import TASKS, GlobalArch, GlobalMLP
from .local import LocalArch, LocalCNN
from .tagger import TaggingModel

FORMAT = "tagstack-model"
FORMAT_VERSION = 1

#: Bounds on what a header may describe; far above any real tagger, far below what exhausts a machine.
LIMITS = {"sample_rate": 192_000, "n_fft": 16_384, "n_mels": 512, "n_frames": 100_000, "clip_seconds": 600.0,
          "channels": 4_096, "kernel": 64, "pool": 64, "blocks": 12, "fc_units": 8_192, "hidden": 8_192,
          "n_hidden_layers": 8, "tags": 10_000, "scales": 16, "header_bytes": 16 * 2**20}


def save_model(model: TaggingModel, path: str | Path, *, half: bool = False) -> None:
    """Write ``model`` to ``path`` atomically; ``half`` stores the weights (not the statistics) as float16."""
    tensors = {}
    for s, m in model.local_models.items():
        for k, v in m.state_dict().items():
            tensors[f"local.{s}.{k}"] = v
    if model.head is not None:
        for k, v in model.head.state_dict().items():
            tensors[f"global.{k}"] = v

    def stored(k: str, v: torch.Tensor) -> torch.Tensor:
        statistic = any(t in k for t in ("mean", "std", "running"))
        return (v.half() if half and v.is_floating_point() and not statistic else v).detach().cpu().contiguous()

    tensors = {k: stored(k, v) for k, v in tensors.items()}
    meta = {"tagstack": json.dumps(finite_json(metadata(model)), allow_nan=False)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta), suffix=".safetensors")


def metadata(model: TaggingModel) -> dict:
    """The header that describes ``model``."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tags": model.tags,
        "task": model.task,
        "frontend": asdict(model.frontend),
        "local": {str(s): m.arch.to_dict() for s, m in model.local_models.items()},
        "global": None if model.head is None else model.head.arch.to_dict(),
        "scales": list(model.scales),
        "layers": None if model.layers is None else list(model.layers),
        "feature_layout": [asdict(b) for b in model.layout],
        "info": model.info,
        "tag_groups": model.groups,
    }


# ------------------------------------------------------------ reading

def read_metadata(path: str | Path) -> dict:
    """The validated JSON header of a model file, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path}: not a safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if "tagstack" not in raw:
        raise ModelFileError(f"{path}: a safetensors file, but not a tagstack model (no 'tagstack' metadata)")
    text = raw["tagstack"]
    if len(text) > LIMITS["header_bytes"]:
        raise ModelFileError(f"{path}: the 'tagstack' metadata is {len(text)} bytes, more than any model needs")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ModelFileError(f"{path}: the 'tagstack' metadata is not valid JSON ({type(e).__name__})") from None
    try:
        _validate(meta, shapes)
    except _Bad as e:
        raise ModelFileError(f"{path}: {e}") from None
    return meta


class _Bad(Exception):
    """A header field that is wrong; the message names it."""


def _need(ok: bool, field: str, what: str, value: Any = None) -> None:
    if not ok:
        shown = "" if value is None else f", got {json.dumps(value)[:80] if _jsonable(value) else type(value).__name__}"
        raise _Bad(f"field '{field}' must be {what}{shown}")


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError, RecursionError):
        return False


def _int(d: dict, key: str, field: str, lo: int, hi: int) -> int:
    v = d.get(key)
    _need(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi, field, f"an integer in {lo}..{hi}", v)
    return v


def _num(d: dict, key: str, field: str, lo: float, hi: float) -> float:
    v = d.get(key)
    _need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi, field, f"a number in {lo}..{hi}", v)
    return float(v)


def _validate(meta: Any, shapes: dict[str, tuple[int, ...]]) -> None:
    _need(isinstance(meta, dict), "tagstack", "a JSON object", meta)
    _need(meta.get("format") == FORMAT, "format", f"'{FORMAT}'", meta.get("format"))
    _int(meta, "format_version", "format_version", 1, FORMAT_VERSION)
    tags = meta.get("tags")
    _need(isinstance(tags, list) and 0 < len(tags) <= LIMITS["tags"] and all(isinstance(t, str) and t for t in tags),
          "tags", f"a list of 1..{LIMITS['tags']} non-empty strings")
    _need(len(set(tags)) == len(tags), "tags", "a list without repeated names")
    _need(meta.get("task") in TASKS, "task", f"one of {list(TASKS)}", meta.get("task"))
    fe = meta.get("frontend")
    _need(isinstance(fe, dict), "frontend", "an object")
    known = {"sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "compression", "clip_seconds", "n_frames"}
    _need(set(fe) <= known, "frontend", f"an object with keys among {sorted(known)}", sorted(fe))
    _int(fe, "sample_rate", "frontend.sample_rate", 1000, LIMITS["sample_rate"])
    _int(fe, "n_fft", "frontend.n_fft", 16, LIMITS["n_fft"])
    _int(fe, "hop_length", "frontend.hop_length", 1, LIMITS["n_fft"])
    n_mels = _int(fe, "n_mels", "frontend.n_mels", 1, LIMITS["n_mels"])
    _int(fe, "n_frames", "frontend.n_frames", 1, LIMITS["n_frames"])
    _num(fe, "clip_seconds", "frontend.clip_seconds", 0.01, LIMITS["clip_seconds"])
    for key in ("f_min", "compression"):
        if key in fe:
            _num(fe, key, f"frontend.{key}", 0, 1e6)
    if fe.get("f_max") is not None:
        _num(fe, "f_max", "frontend.f_max", 1, LIMITS["sample_rate"])
    try:
        FrontEndConfig(**fe)
    except TagstackError as e:
        raise _Bad(f"field 'frontend' is inconsistent ({e})") from None

    local = meta.get("local")
    _need(isinstance(local, dict) and 0 < len(local) <= LIMITS["scales"], "local", f"an object of 1..{LIMITS['scales']} local CNNs")
    expected: dict[str, tuple[int, ...]] = {}
    for s, arch in local.items():
        f = f"local.{s}"
        _need(s.isdigit(), f, "keyed by its number of input frames", s)
        _need(isinstance(arch, dict), f, "an object")
        n_frames = _int(arch, "n_frames", f"{f}.n_frames", 1, LIMITS["n_frames"])
        _need(n_frames == int(s) and n_frames <= fe["n_frames"], f"{f}.n_frames", f"{s} and at most frontend.n_frames", n_frames)
        _need(arch.get("n_mels") == n_mels, f"{f}.n_mels", "frontend.n_mels", arch.get("n_mels"))
        _int(arch, "n_tags", f"{f}.n_tags", 1, LIMITS["tags"])
        _int(arch, "fc_units", f"{f}.fc_units", 1, LIMITS["fc_units"])
        _num(arch, "dropout", f"{f}.dropout", 0, 0.99)
        blocks = arch.get("blocks")
        _need(isinstance(blocks, list) and 0 < len(blocks) <= LIMITS["blocks"], f"{f}.blocks", f"a list of 1..{LIMITS['blocks']} conv blocks")
        for i, b in enumerate(blocks):
            _need(isinstance(b, dict) and set(b) == {"kernel", "channels", "pool"}, f"{f}.blocks[{i}]", "an object with kernel, channels, pool")
            _int(b, "kernel", f"{f}.blocks[{i}].kernel", 1, LIMITS["kernel"])
            _int(b, "channels", f"{f}.blocks[{i}].channels", 1, LIMITS["channels"])
            _int(b, "pool", f"{f}.blocks[{i}].pool", 1, LIMITS["pool"])
        _need(set(arch) == {"n_frames", "n_mels", "n_tags", "blocks", "fc_units", "dropout"}, f, "an architecture with exactly "
              "n_frames, n_mels, n_tags, blocks, fc_units, dropout", sorted(arch))
        try:
            with torch.device("meta"):  # shapes only: nothing is allocated
                module = LocalCNN(LocalArch.from_dict(arch))
        except TagstackError as e:
            raise _Bad(f"field '{f}' describes no valid CNN ({e})") from None
        expected.update({f"{f}.{k}": tuple(v.shape) for k, v in module.state_dict().items()})

    scales = meta.get("scales")
    _need(isinstance(scales, list) and scales and all(isinstance(x, int) and str(x) in local for x in scales), "scales",
          f"a non-empty list of the local CNNs' sizes {sorted(map(int, local))}", scales)
    layers = meta.get("layers")
    _need(layers is None or (isinstance(layers, list) and layers and all(isinstance(x, int) and 1 <= x <= LIMITS["blocks"] for x in layers)),
          "layers", "null or a list of 1-based layer numbers", layers)
    chosen = sum(b["channels"] for s in scales for i, b in enumerate(local[str(s)]["blocks"]) if layers is None or i + 1 in layers)
    g = meta.get("global")
    if g is not None:
        _need(isinstance(g, dict) and set(g) == {"n_features", "n_outputs", "hidden", "n_hidden_layers", "dropout", "task"}, "global",
              "null or an object with n_features, n_outputs, hidden, n_hidden_layers, dropout, task")
        _int(g, "n_features", "global.n_features", chosen, chosen)
        _int(g, "n_outputs", "global.n_outputs", len(tags), len(tags))
        _int(g, "hidden", "global.hidden", 1, LIMITS["hidden"])
        _int(g, "n_hidden_layers", "global.n_hidden_layers", 0, LIMITS["n_hidden_layers"])
        _num(g, "dropout", "global.dropout", 0, 0.99)
        _need(g.get("task") == meta["task"], "global.task", "the model's task", g.get("task"))
        with torch.device("meta"):
            head = GlobalMLP(GlobalArch(**g))
        expected.update({f"global.{k}": tuple(v.shape) for k, v in head.state_dict().items()})
    else:
        _need(all(a["n_tags"] == len(tags) for a in local.values()), "tags", "one name per local CNN output")
    _need(isinstance(meta.get("info", {}), dict), "info", "an object")
    groups = meta.get("tag_groups", {})
    _need(isinstance(groups, dict) and set(groups) <= set(tags)
          and all(map(is_group_name, groups.values())), "tag_groups",
          f"an object from tag names to group names of 1..{MAX_GROUP_NAME} characters", groups if isinstance(groups, dict) else None)
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    _need(not missing, "tensors", "all the described weights", f"{len(missing)} missing, e.g. {missing[:2]}" if missing else None)
    _need(not extra, "tensors", "only the described weights", f"{len(extra)} extra, e.g. {extra[:2]}" if extra else None)
    wrong = [k for k in expected if expected[k] != shapes[k]]
    _need(not wrong, "tensors", "shaped as the architecture says",
          f"{wrong[0]} is {list(shapes[wrong[0]])}, expected {list(expected[wrong[0]])}" if wrong else None)


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> TaggingModel:
    """Rebuild the :class:`TaggingModel` of a file written by :func:`save_model`, in eval mode on ``device``."""
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path}: cannot read the weights ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelFileError(f"{path}: weights hold NaN or infinite values (e.g. '{bad[0]}')")
    local = {}
    for s, arch in meta["local"].items():
        m = LocalCNN(LocalArch.from_dict(arch))
        prefix = f"local.{s}."
        m.load_state_dict({k[len(prefix):]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith(prefix)})
        local[int(s)] = m
    head = None
    if meta["global"] is not None:
        head = GlobalMLP(GlobalArch(**meta["global"]))
        head.load_state_dict({k[7:]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith("global.")})
    model = TaggingModel(local, head, tags=meta["tags"], frontend=FrontEndConfig(**meta["frontend"]), scales=meta["scales"],
                         layers=meta["layers"], info=meta.get("info", {}), groups=meta.get("tag_groups", {}))
    return model.to(device).eval()


__all__ = ["FORMAT", "FORMAT_VERSION", "load_model", "metadata", "read_metadata", "save_model"]
