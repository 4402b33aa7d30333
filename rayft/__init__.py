"""rayft: Ray-native fine-tuning experiments.

Sweep with Ray Tune + Optuna, train each trial with Ray Train + DeepSpeed, export to an adapter store,
and serve the results behind an OpenAI-compatible Ray Serve app. Heavy stages import lazily.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from rayft.config import ExperimentConfig, load_config
from rayft.errors import ConfigError, DataError, RayftError, StoreError
from rayft.options import StartupOptions

__version__ = "0.1.0"

_LAZY = {
    "run_training": "rayft.train",
    "run_sweep": "rayft.sweep",
    "prepare_data": "rayft.data",
    "AdapterStore": "rayft.store",
    "export_checkpoint": "rayft.store",
    "load_for_inference": "rayft.store",
}

__all__ = ["AdapterStore", "ConfigError", "DataError", "ExperimentConfig", "RayftError", "StartupOptions",
           "StoreError", "export_checkpoint", "load_config", "load_for_inference", "prepare_data", "run_sweep", "run_training"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rayft' has no attribute {name!r}")
