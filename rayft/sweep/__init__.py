"""Sweep stage: search space (incl. conditional), searcher/scheduler factories, the Tuner and its results.

The names below import lazily (as in :mod:`rayft`): light modules of this package (``rayft.sweep.checks``,
``rayft.sweep.handoff``) are imported by config validation and the store, which must not pull in Ray Tune.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "SweepOutcome": "rayft.sweep.run",
    "TrialRow": "rayft.sweep.run",
    "apply_sample": "rayft.sweep.space",
    "define_by_run": "rayft.sweep.space",
    "evaluations_per_trial": "rayft.sweep.run",
    "fit_trials": "rayft.sweep.run",
    "flat_params": "rayft.sweep.space",
    "grid_points": "rayft.sweep.space",
    "latest_sweep_name": "rayft.sweep.run",
    "metric_and_mode": "rayft.sweep.run",
    "pareto_front": "rayft.sweep.pareto",
    "read_summary": "rayft.sweep.results",
    "run_sweep": "rayft.sweep.run",
    "tune_space": "rayft.sweep.space",
}

__all__ = ["SweepOutcome", "TrialRow", "apply_sample", "define_by_run", "evaluations_per_trial", "fit_trials",
           "flat_params", "grid_points", "latest_sweep_name", "metric_and_mode", "pareto_front", "read_summary",
           "run_sweep", "tune_space"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rayft.sweep' has no attribute {name!r}")
