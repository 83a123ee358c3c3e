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

import dataclasses
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

from ..config import FrontEndConfig
from ..tags import MAX_GROUP_NAME, is_group_name
from ..errors import ModelFileError, TagstackError
from ..fileio import atomic_write, finite_json
from .classifier import TASKS, GlobalArch, GlobalMLP
from .local import LocalCNN
from .networks import KINDS, build_network
from .tagging_model import NETWORK_NAME, Branch, TaggingModel

FORMAT = "tagstack-model"
#: 2: local networks of several kinds, each with its branches (segment lengths) and front end; 1: the paper's CNNs only.
FORMAT_VERSION = 2

#: Bounds on what a header may describe; far above any real tagger, far below what exhausts a machine.
LIMITS = {
    "sample_rate": 192_000,
    "n_fft": 16_384,
    "n_mels": 512,
    "n_frames": 100_000,
    "clip_seconds": 600.0,
    "channels": 4_096,
    "kernel": 64,
    "pool": 64,
    "blocks": 12,
    "fc_units": 8_192,
    "hidden": 8_192,
    "n_hidden_layers": 8,
    "tags": 10_000,
    "scales": 16,
    "header_bytes": 16 * 2**20,
    "networks": 16,
    "arch_number": 100_000,
    "parameters": 200_000_000,
}


def save_model(model: TaggingModel, path: str | Path, *, half: bool = False) -> None:
    """Write ``model`` to ``path`` atomically; ``half`` stores the weights (not the statistics) as float16.

    Parameters
    ----------
    model : TaggingModel
        The tagger to store: its networks' and classifier's tensors, and a header describing it (tags, tag
        groups, front ends, architectures, branches, the classifier's columns, ``info``).
    path : str or Path
        The ``.safetensors`` file to write; a file already there is replaced only once the new one is whole.
    half : bool
        Store the weights as float16 (half the size); normalisation statistics stay float32.

    Raises
    ------
    OutputError
        The file cannot be written (what was there is unchanged).
    """
    tensors = {}
    for name, m in model.local_models.items():
        for k, v in m.state_dict().items():
            tensors[f"local.{name}.{k}"] = v
    if model.head is not None:
        for k, v in model.head.state_dict().items():
            tensors[f"global.{k}"] = v

    def stored(k: str, v: torch.Tensor) -> torch.Tensor:
        statistic = any(t in k for t in ("mean", "std", "running"))
        return (v.half() if half and v.is_floating_point() and not statistic else v).detach().cpu().contiguous()

    tensors = {k: stored(k, v) for k, v in tensors.items()}
    meta = {"tagstack": json.dumps(finite_json(metadata(model)), allow_nan=False)}
    # serialised in memory, then written by Python: safetensors' own writer reports a full disk as a SafetensorError,
    # which atomic_write could not tell from a bug; Python's is an OSError it names in one line
    data = save(tensors, metadata=meta)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data), suffix=".safetensors")


def metadata(model: TaggingModel) -> dict:
    """The header that describes ``model``."""
    networks = {}
    for name, m in model.local_models.items():
        entry = {"kind": m.kind, "arch": m.arch.to_dict()}
        if m.frontend is not None:
            entry["frontend"] = asdict(m.frontend)
        networks[name] = entry
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tags": model.tags,
        "task": model.task,
        "frontend": asdict(model.frontend),
        "networks": networks,
        "branches": [{"network": b.network, "frames": b.frames} for b in model.branches],
        "global": None if model.head is None else model.head.arch.to_dict(),
        "scales": list(model.scales),
        "layers": None if model.layers is None else list(model.layers),
        "tags_from": model.tags_from,
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
    _need(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi, field, f"a number in {lo}..{hi}", v
    )
    return float(v)


def _validate(meta: Any, shapes: dict[str, tuple[int, ...]]) -> None:
    _need(isinstance(meta, dict), "tagstack", "a JSON object", meta)
    _need(meta.get("format") == FORMAT, "format", f"'{FORMAT}'", meta.get("format"))
    _int(meta, "format_version", "format_version", 1, FORMAT_VERSION)
    tags = meta.get("tags")
    _need(
        isinstance(tags, list) and len(tags) <= LIMITS["tags"] and all(isinstance(t, str) and t for t in tags),
        "tags",
        f"a list of up to {LIMITS['tags']} non-empty strings",
    )
    _need(bool(tags) or (meta.get("global") is None and meta.get("tags_from") is None), "tags", "a non-empty list for a model that tags")
    _need(len(set(tags)) == len(tags), "tags", "a list without repeated names")
    _need(meta.get("task") in TASKS, "task", f"one of {list(TASKS)}", meta.get("task"))
    fe = _frontend(meta.get("frontend"), "frontend")
    if meta["format_version"] == 1:
        _upgrade_v1(meta)
    networks = meta.get("networks")
    _need(
        isinstance(networks, dict) and 0 < len(networks) <= LIMITS["networks"],
        "networks",
        f"an object of 1..{LIMITS['networks']} local networks",
    )
    expected: dict[str, tuple[int, ...]] = {}
    built: dict[str, torch.nn.Module] = {}
    for name, entry in networks.items():
        f = f"networks.{name}"
        _need(isinstance(name, str) and NETWORK_NAME.fullmatch(name) is not None, f, "named with letters, digits, '.', '_' or '-'", name)
        _need(
            isinstance(entry, dict) and set(entry) <= {"kind", "arch", "frontend"} and {"kind", "arch"} <= set(entry),
            f,
            "an object with kind, arch and, for a backbone, frontend",
        )
        _need(entry["kind"] in KINDS, f"{f}.kind", f"one of {sorted(KINDS)}", entry["kind"])
        _need(_small_plain(entry["arch"]), f"{f}.arch", f"an object of numbers up to {LIMITS['arch_number']} and short lists")
        if entry["kind"] == LocalCNN.kind:
            _check_local_arch(entry["arch"], f"{f}.arch", fe)
        own = FrontEndConfig(**_frontend(entry["frontend"], f"{f}.frontend")) if "frontend" in entry else None
        try:
            with torch.device("meta"):  # shapes only: nothing is allocated
                module = build_network(entry["kind"], entry["arch"], frontend=own)
        except (TagstackError, TypeError, KeyError, ValueError, AttributeError) as e:
            raise _Bad(f"field '{f}' describes no valid network ({e})") from None
        _need((module.frontend is None) == (own is None), f"{f}.frontend", "given for a backbone and only for one")
        params = sum(v.numel() for v in module.state_dict().values())
        _need(params <= LIMITS["parameters"], f, f"a network of at most {LIMITS['parameters']} weights", params)
        expected.update({f"local.{name}.{k}": tuple(v.shape) for k, v in module.state_dict().items()})
        built[name] = module
    branches = meta.get("branches")
    _need(isinstance(branches, list) and 0 < len(branches) <= LIMITS["scales"], "branches", f"a list of 1..{LIMITS['scales']} branches")
    for i, br in enumerate(branches):
        _need(
            isinstance(br, dict) and set(br) == {"network", "frames"} and br["network"] in networks,
            f"branches[{i}]",
            "an object naming one of the networks and its segment frames",
        )
        _int(br, "frames", f"branches[{i}].frames", 1, LIMITS["n_frames"])
    try:
        with torch.device("meta"):
            shell = TaggingModel(built, None, tags=tags, frontend=FrontEndConfig(**fe), branches=[Branch(**b) for b in branches])
    except TagstackError as e:
        raise _Bad(f"field 'branches' is inconsistent ({e})") from None
    scales = meta.get("scales")
    _need(
        isinstance(scales, list) and scales and all(isinstance(x, str) and x in shell.local_scales for x in scales),
        "scales",
        f"a non-empty list of the branches {list(shell.local_scales)}",
        scales,
    )
    layers = meta.get("layers")
    _need(
        layers is None or (isinstance(layers, list) and layers and all(isinstance(x, int) and 1 <= x <= LIMITS["blocks"] for x in layers)),
        "layers",
        "null or a list of 1-based layer numbers",
        layers,
    )
    try:
        chosen = len(shell.columns_of(scales=scales, layers=layers))
    except TagstackError as e:
        raise _Bad(f"fields 'scales' and 'layers' select nothing ({e})") from None
    g = meta.get("global")
    if g is not None:
        _need(
            isinstance(g, dict) and set(g) == {"n_features", "n_outputs", "hidden", "n_hidden_layers", "dropout", "task"},
            "global",
            "null or an object with n_features, n_outputs, hidden, n_hidden_layers, dropout, task",
        )
        _int(g, "n_features", "global.n_features", chosen, chosen)
        _int(g, "n_outputs", "global.n_outputs", len(tags), len(tags))
        _int(g, "hidden", "global.hidden", 1, LIMITS["hidden"])
        _int(g, "n_hidden_layers", "global.n_hidden_layers", 0, LIMITS["n_hidden_layers"])
        _num(g, "dropout", "global.dropout", 0, 0.99)
        _need(g.get("task") == meta["task"], "global.task", "the model's task", g.get("task"))
        with torch.device("meta"):
            head = GlobalMLP(GlobalArch(**g))
        expected.update({f"global.{k}": tuple(v.shape) for k, v in head.state_dict().items()})
    tags_from = meta.get("tags_from")
    if tags_from is not None:
        _need(
            g is None and tags_from in shell.local_scales and shell.network_of(tags_from).n_outputs == len(tags),
            "tags_from",
            "null, or without a global classifier the branch whose network has one output per tag",
            tags_from,
        )
    _need(isinstance(meta.get("info", {}), dict), "info", "an object")
    groups = meta.get("tag_groups", {})
    _need(
        isinstance(groups, dict) and set(groups) <= set(tags) and all(map(is_group_name, groups.values())),
        "tag_groups",
        f"an object from tag names to group names of 1..{MAX_GROUP_NAME} characters",
        groups if isinstance(groups, dict) else None,
    )
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    _need(not missing, "tensors", "all the described weights", f"{len(missing)} missing, e.g. {missing[:2]}" if missing else None)
    _need(not extra, "tensors", "only the described weights", f"{len(extra)} extra, e.g. {extra[:2]}" if extra else None)
    wrong = [k for k in expected if expected[k] != shapes[k]]
    _need(
        not wrong,
        "tensors",
        "shaped as the architecture says",
        f"{wrong[0]} is {list(shapes[wrong[0]])}, expected {list(expected[wrong[0]])}" if wrong else None,
    )


def _frontend(fe: Any, field: str) -> dict:
    """A front-end object of a header, checked field by field."""
    _need(isinstance(fe, dict), field, "an object")
    known = {f.name for f in dataclasses.fields(FrontEndConfig)}
    _need(set(fe) <= known, field, f"an object with keys among {sorted(known)}", sorted(fe))
    _int(fe, "sample_rate", f"{field}.sample_rate", 1000, LIMITS["sample_rate"])
    _int(fe, "n_fft", f"{field}.n_fft", 16, LIMITS["n_fft"])
    _int(fe, "hop_length", f"{field}.hop_length", 1, LIMITS["n_fft"])
    _int(fe, "n_mels", f"{field}.n_mels", 1, LIMITS["n_mels"])
    _int(fe, "n_frames", f"{field}.n_frames", 1, LIMITS["n_frames"])
    _num(fe, "clip_seconds", f"{field}.clip_seconds", 0.01, LIMITS["clip_seconds"])
    for key in ("f_min", "compression"):
        if key in fe:
            _num(fe, key, f"{field}.{key}", 0, 1e6)
    if fe.get("f_max") is not None:
        _num(fe, "f_max", f"{field}.f_max", 1, LIMITS["sample_rate"])
    try:
        FrontEndConfig(**fe)
    except TagstackError as e:
        raise _Bad(f"field '{field}' is inconsistent ({e})") from None
    return fe


def _small_plain(value: Any, depth: int = 0) -> bool:
    """Plain data small enough to build on: numbers up to LIMITS['arch_number'], short lists, shallow objects."""
    if depth > 4:
        return False
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value) and 0 <= value <= LIMITS["arch_number"]
    if isinstance(value, list):
        return len(value) <= 64 and all(_small_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return len(value) <= 32 and all(isinstance(k, str) and _small_plain(v, depth + 1) for k, v in value.items())
    return False


def _check_local_arch(arch: dict, f: str, fe: dict) -> None:
    """The paper CNN's architecture fields, each within its bound."""
    _need(isinstance(arch, dict), f, "an object")
    n_frames = _int(arch, "n_frames", f"{f}.n_frames", 1, LIMITS["n_frames"])
    _need(n_frames <= fe["n_frames"], f"{f}.n_frames", "at most frontend.n_frames", n_frames)
    _need(arch.get("n_mels") == fe["n_mels"], f"{f}.n_mels", "frontend.n_mels", arch.get("n_mels"))
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
    _need(
        set(arch) == {"n_frames", "n_mels", "n_tags", "blocks", "fc_units", "dropout"},
        f,
        "an architecture with exactly n_frames, n_mels, n_tags, blocks, fc_units, dropout",
        sorted(arch),
    )


def _upgrade_v1(meta: dict) -> None:
    """A version-1 header (the paper's CNNs under 'local', scales as numbers) in version 2's terms, in place."""
    local = meta.pop("local", None)
    _need(isinstance(local, dict) and 0 < len(local) <= LIMITS["scales"], "local", f"an object of 1..{LIMITS['scales']} local CNNs")
    for s, arch in local.items():
        _need(
            s.isdigit() and isinstance(arch, dict) and arch.get("n_frames") == int(s),
            f"local.{s}",
            "keyed by its number of input frames, as its n_frames",
        )
    meta["networks"] = {s: {"kind": LocalCNN.kind, "arch": local[s]} for s in local}
    meta["branches"] = [{"network": s, "frames": int(s)} for s in sorted(local, key=int)]
    scales = meta.get("scales")
    _need(
        isinstance(scales, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in scales),
        "scales",
        "a list of input sizes",
        scales,
    )
    meta["scales"] = [str(x) for x in scales]
    if meta.get("global") is None:
        _need(all(a["n_tags"] == len(meta["tags"]) for a in local.values()), "tags", "one name per local CNN output")


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> TaggingModel:
    """Rebuild the :class:`TaggingModel` of a file written by :func:`save_model`, in eval mode on ``device``.

    The header is validated whole before any network is built, and weights that are not finite are refused.

    Parameters
    ----------
    path : str or Path
        A tagstack model file (``.safetensors``); shipped models are found by name through
        :func:`~tagstack.models.zoo.resolve_model` (or :class:`~tagstack.Tagger`).
    device : str or torch.device
        Where to put the model.

    Returns
    -------
    model : TaggingModel
        In evaluation mode, weights in float32.

    Raises
    ------
    ModelFileError
        A missing, foreign, damaged or inconsistent file, naming the file and the field.
    """
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path}: cannot read the weights ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelFileError(f"{path}: weights hold NaN or infinite values (e.g. '{bad[0]}')")
    networks = {}
    for name, entry in meta["networks"].items():
        own = FrontEndConfig(**entry["frontend"]) if "frontend" in entry else None
        m = build_network(entry["kind"], entry["arch"], frontend=own)
        prefix = f"local.{name}."
        m.load_state_dict({k[len(prefix) :]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith(prefix)})
        networks[name] = m
    head = None
    if meta["global"] is not None:
        head = GlobalMLP(GlobalArch(**meta["global"]))
        head.load_state_dict({k[7:]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith("global.")})
    model = TaggingModel(
        networks,
        head,
        tags=meta["tags"],
        frontend=FrontEndConfig(**meta["frontend"]),
        branches=[Branch(**b) for b in meta["branches"]],
        scales=meta["scales"],
        layers=meta["layers"],
        info=meta.get("info", {}),
        groups=meta.get("tag_groups", {}),
        tags_from=meta.get("tags_from"),
    )
    return model.to(device).eval()


__all__ = ["FORMAT", "FORMAT_VERSION", "load_model", "metadata", "read_metadata", "save_model"]
