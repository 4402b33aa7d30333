"""Training stage: DeepSpeed config, the Ray Train worker loop, and the driver.

The names below import lazily (as in :mod:`rayft`): light modules of this package (``rayft.train.handoff``,
``rayft.train.steps``) are imported by the store and the config checks, which must not pull in Ray Train.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "TrainOutcome": "rayft.train.run",
    "deepspeed_config": "rayft.train.ds_config",
    "make_trainer": "rayft.train.run",
    "run_training": "rayft.train.run",
}

__all__ = ["TrainOutcome", "deepspeed_config", "make_trainer", "run_training"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rayft.train' has no attribute {name!r}")
