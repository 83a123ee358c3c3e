"""Saving and loading a whole tagger as one self-describing file.

A model file is a single safetensors file: the tensors of the five local
CNNs and of the global classifier (never a pickle, so a file from a stranger
cannot run code), and in its header a JSON document with everything needed to
rebuild and use them: the tag vocabulary, the front-end parameters, the
normalisation statistics (also stored as tensors), the architecture of each
network, the feature layout, and what it was trained on with its test scores.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, safe_open

from .aggregation import FeatureBlock, feature_layout
from .config import FrontEndConfig
from .errors import ModelFileError
from .fileio import atomic_write
from .global_classifier import GlobalArch, GlobalMLP
from .local_models import LocalArch, LocalCNN

FORMAT = "tagstack-model"
FORMAT_VERSION = 1


@dataclass
class TaggingModel:
    """The three stages of a trained tagger, ready for inference.

    ``layers`` and ``scales`` say which aggregated features the global model
    reads (all of them by default); ``info`` is free-form provenance (dataset,
    command, test metrics).
    """

    local: dict[int, LocalCNN]
    global_model: GlobalMLP | None
    tags: list[str]
    frontend: FrontEndConfig
    scales: tuple[int, ...] = ()
    layers: tuple[int, ...] | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.scales:
            self.scales = tuple(sorted(self.local))

    @property
    def task(self) -> str:
        return self.global_model.arch.task if self.global_model is not None else "multilabel"

    @property
    def layout(self) -> list[FeatureBlock]:
        return feature_layout(self.local)

    def to(self, device: torch.device | str) -> "TaggingModel":
        for m in self.local.values():
            m.to(device).eval()
        if self.global_model is not None:
            self.global_model.to(device).eval()
        return self

    def metadata(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tags": self.tags,
            "task": self.task,
            "frontend": asdict(self.frontend),
            "local": {str(s): m.arch.to_dict() for s, m in sorted(self.local.items())},
            "normalisation": {str(s): {"mean": float(m.input_mean), "std": float(m.input_std)} for s, m in self.local.items()},
            "global": None if self.global_model is None else self.global_model.arch.to_dict(),
            "scales": list(self.scales),
            "layers": None if self.layers is None else list(self.layers),
            "feature_layout": [asdict(b) for b in self.layout],
            "info": self.info,
        }

    def save(self, path: str | Path, *, half: bool = False) -> None:
        """Write the model to ``path`` (``.safetensors``), atomically; ``half`` stores weights as float16."""
        tensors = {}
        for s, m in self.local.items():
            for k, v in m.state_dict().items():
                tensors[f"local.{s}.{k}"] = v
        if self.global_model is not None:
            for k, v in self.global_model.state_dict().items():
                tensors[f"global.{k}"] = v
        tensors = {k: (v.half() if half and v.is_floating_point() and "mean" not in k and "std" not in k and "running" not in k else v).detach().cpu().contiguous()
                   for k, v in tensors.items()}
        meta = {"tagstack": json.dumps(self.metadata())}
        atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta), suffix=".safetensors")


def read_metadata(path: str | Path) -> dict:
    """The JSON header of a model file, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path}: not a safetensors file ({e})") from e
    if "tagstack" not in meta:
        raise ModelFileError(f"{path}: a safetensors file, but not a tagstack model (no 'tagstack' metadata)")
    data = json.loads(meta["tagstack"])
    if data.get("format") != FORMAT or data.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: unsupported model format {data.get('format')} v{data.get('format_version')}")
    return data


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> TaggingModel:
    """Rebuild a :class:`TaggingModel` from a file written by :meth:`TaggingModel.save`."""
    meta = read_metadata(path)
    try:
        return _build(meta, load_file(str(path))).to(device)
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise ModelFileError(f"{path}: weights do not match the described architecture ({e})") from e


def _build(meta: dict, tensors: dict[str, torch.Tensor]) -> TaggingModel:
    local = {}
    for s, arch in meta["local"].items():
        m = LocalCNN(LocalArch.from_dict(arch))
        prefix = f"local.{s}."
        m.load_state_dict({k[len(prefix):]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith(prefix)})
        local[int(s)] = m
    g = None
    if meta["global"] is not None:
        g = GlobalMLP(GlobalArch(**meta["global"]))
        g.load_state_dict({k[7:]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith("global.")})
    return TaggingModel(local=local, global_model=g, tags=meta["tags"], frontend=FrontEndConfig(**meta["frontend"]),
                        scales=tuple(meta["scales"]), layers=None if meta["layers"] is None else tuple(meta["layers"]), info=meta["info"])
