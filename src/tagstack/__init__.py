"""tagstack: multi-level and multi-scale music auto-tagging (Lee & Nam, 2017).

Stages, each in a module named for it: :mod:`~tagstack.frontend` (log-mel),
:mod:`~tagstack.local_models` (stage 1 CNNs), :mod:`~tagstack.aggregation`
(stage 2), :mod:`~tagstack.global_classifier` (stage 3), with
:mod:`~tagstack.training`, :mod:`~tagstack.evaluation`,
:mod:`~tagstack.datasets`, :mod:`~tagstack.inference` and :mod:`~tagstack.cli`.
"""
from .errors import AudioError, DatasetError, ModelFileError, ParameterError, TagstackError

__version__ = "0.1.0"

#: Public API loaded on first use, so ``import tagstack`` stays light.
_LAZY = {"Tagger": "inference", "load_model": "artifact", "TaggingModel": "artifact", "run_all": "pipeline",
         "ExperimentConfig": "config", "TrainConfig": "config", "FrontEndConfig": "config", "load_dataset": "datasets"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'tagstack' has no attribute {name!r}")


__all__ = ["AudioError", "DatasetError", "ModelFileError", "ParameterError", "TagstackError", "__version__", *_LAZY]
