"""Sweep stage: search space (incl. conditional), searcher/scheduler factories, the Tuner and its results."""

from rayft.sweep.pareto import pareto_front
from rayft.sweep.results import read_summary
from rayft.sweep.run import (SweepOutcome, TrialRow, evaluations_per_trial, fit_trials, latest_sweep_name,
                             metric_and_mode, run_sweep)
from rayft.sweep.space import apply_sample, define_by_run, flat_params, grid_points, tune_space

__all__ = ["SweepOutcome", "TrialRow", "apply_sample", "define_by_run", "evaluations_per_trial", "fit_trials",
           "flat_params", "grid_points", "latest_sweep_name", "metric_and_mode", "pareto_front", "read_summary",
           "run_sweep", "tune_space"]
