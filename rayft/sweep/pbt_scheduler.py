"""Tune's population based training with seeded, self-contained random streams (see :mod:`rayft.sweep.pbt`)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

from rayft.ray_internals import pbt_is_synchronous


class SeededPBT(PopulationBasedTraining):
    """``PopulationBasedTraining`` drawing from its own streams seeded by ``seed``.

    Tune's PBT picks donors and perturbation factors with Python's ``random`` and resamples domains with NumPy's
    global generator. Here both are swapped for the scheduler's own states around each decision, so a sweep's
    mutations repeat for the same seed and nothing else in the driver shifts them. A trial's last evaluation is
    never a perturbation step: there is nothing left for a clone to train.

    Tune's asynchronous PBT pauses a trial whenever another one is pending or paused, to share the cluster
    when the population does not fit. A trial that was just exploited is briefly paused too, so its donor would
    be stopped and restarted (a whole Train start-up) for nothing; with ``time_share=False`` (the population
    runs at once) a running trial is never paused for that.
    """

    def __init__(self, *args: Any, seed: int = 0, time_share: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._time_share = time_share
        self._py_state = random.Random(seed).getstate()
        self._np_state = np.random.RandomState(seed).get_state()

    def _seeded(self, fn: Any, *args: Any) -> Any:
        outer_py, outer_np = random.getstate(), np.random.get_state()
        random.setstate(self._py_state)
        np.random.set_state(self._np_state)
        try:
            return fn(*args)
        finally:
            self._py_state, self._np_state = random.getstate(), np.random.get_state()
            random.setstate(outer_py)
            np.random.set_state(outer_np)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._seeded(super().on_trial_add, tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get("final"):
            return TrialScheduler.CONTINUE
        decision = self._seeded(super().on_trial_result, tune_controller, trial, result)
        if decision == TrialScheduler.PAUSE and not self._time_share and not pbt_is_synchronous(self) \
                and trial.status == Trial.RUNNING:
            return TrialScheduler.CONTINUE
        return decision
