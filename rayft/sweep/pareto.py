"""Pareto front of a multi-objective sweep."""

from __future__ import annotations

from typing import Any, Sequence


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and strictly better in one."""
    better = False
    for x, y, mode in zip(a, b, modes):
        if (x < y if mode == "max" else x > y):
            return False
        better = better or x != y
    return better


def pareto_front(trials: Sequence[Any], objectives: Sequence[tuple[str, str]]) -> list[str]:
    """Ids of the trials no other trial dominates, among those that reported every objective.

    ``trials`` have ``trial_id`` and ``metrics`` (the last values each trial reported); ties on every
    objective are all kept, as Optuna's ``study.best_trials`` does.
    """
    names = [m for m, _ in objectives]
    modes = [m for _, m in objectives]
    scored = [(t.trial_id, [t.metrics[n] for n in names]) for t in trials
              if all(_number(t.metrics.get(n)) for n in names)]
    return [tid for tid, values in scored
            if not any(dominates(other, values, modes) for oid, other in scored if oid != tid)]
