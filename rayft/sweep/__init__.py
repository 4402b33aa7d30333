"""Sweep stage: search space, searcher/scheduler factories, the Tuner and its results."""

from rayft.sweep.run import SweepOutcome, TrialRow, fit_trials, metric_and_mode, run_sweep
from rayft.sweep.space import apply_sample, flat_params, tune_space

__all__ = ["SweepOutcome", "TrialRow", "apply_sample", "fit_trials", "flat_params", "metric_and_mode", "run_sweep",
           "tune_space"]
