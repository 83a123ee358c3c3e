"""tagstack: multi-level and multi-scale music auto-tagging (Lee & Nam, 2017).

The tree is the architecture: :mod:`~tagstack.audio` (decoding, front end),
:mod:`~tagstack.models` (local CNNs and pretrained backbones, aggregation, the
global classifier, the whole tagger and its file, the shipped models),
:mod:`~tagstack.datasets` (adapters, mel cache), :mod:`~tagstack.corpus` (the
score-rendered default data), :mod:`~tagstack.train` (loop, stages),
:mod:`~tagstack.evaluation` (metrics, scoring a model),
:mod:`~tagstack.experiments` (configuration, the orchestrator, reproduce,
demo), :mod:`~tagstack.inference` (tagging and embedding),
:mod:`~tagstack.service` (HTTP), :mod:`~tagstack.distributed` (Ray),
:mod:`~tagstack.report` (everything shown to a person) and :mod:`~tagstack.cli`.
"""

import os

# Idle OpenMP threads sleep instead of spinning. With the default (spinning), torch ops on a machine whose
# cores are busy with other work ran 12x slower with 2 threads than with 1 (bench/bench_threads.py); passive
# waiting keeps 2 threads at least as fast as 1. It must be set before torch starts its OpenMP runtime, so
# here, before any tagstack module imports torch; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import AudioError, DatasetError, ModelFileError, ParameterError, TagstackError  # noqa: E402

__version__ = "0.2.0"

#: Public API, imported on first use so ``import tagstack`` stays light.
_LAZY = {
    "Tagger": "inference.tagger",
    "tag_files": "inference.outputs",
    "embed_files": "inference.outputs",
    "TaggingModel": "models.tagging_model",
    "load_model": "models.file",
    "save_model": "models.file",
    "ExperimentConfig": "experiments.experiment_config",
    "Experiment": "experiments.run",
    "run_experiment": "experiments.run",
    "reproduce": "experiments.reproduce",
    "TrainConfig": "config",
    "FrontEndConfig": "config",
    "load_dataset": "datasets",
    "load": "audio.io",
    "stream": "audio.io",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'tagstack' has no attribute {name!r}")


__all__ = ["AudioError", "DatasetError", "ModelFileError", "ParameterError", "TagstackError", "__version__", *_LAZY]
