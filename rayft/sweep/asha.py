"""ASHA whose decisions wait for peers (``sweep.asha_promotion: deferred``), as in the ASHA paper.

Ray's ``ASHAScheduler`` decides a trial the moment it reaches a rung, against the results the rung holds by then.
With none there (the first trial at every rung) the trial continues, and with one it continues whenever it beats
that one. In a sweep of a few dozen trials, two at a time, that runs the sweep's first trials, which the searcher
drew before it had learnt anything, to their full length.

Here a trial that reaches a rung holding fewer than ``reduction_factor`` (η) results pauses there (Tune keeps its
checkpoint) and waits. Once the rung holds η results, the trials waiting there are decided together with the one
that arrived; later arrivals are decided as they come. A trial continues when its result is among the best
⌊n/η⌋ of the n results at the rung (at least the best one; a tie with the last of them continues too); the
others stop, and the searcher learns each one's result at the rung, as it does for trials Ray's ASHA stops. When
nothing can bring a rung more results (the searcher is done and no running or promoted trial is below the rung),
the trials waiting there are decided with the results it holds.

Waiting trials do not count against the sweep's concurrency (:class:`ParkingLimiter`), so new trials start
meanwhile; a promoted trial resumes from its checkpoint as soon as fewer than ``concurrent`` trials run, before the
searcher is asked for a new one. The trials hand Tune a checkpoint with every evaluation
(:mod:`rayft.sweep.trial`), so a paused trial loses nothing but its restart.

The scheduler's state lives in the driver. A sweep resumed after the driver died starts with empty rungs: trials
that were paused (waiting or promoted) resume from their checkpoint and are decided again at the rung they had
reached, among the results that arrive there after the restart.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from rayft.ray_internals import declare_scheduler


class Parking:
    """Trials waiting at a rung, with the result they reached it with: shared by the scheduler and the limiter."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}


def rung_milestones(grace_period: int, max_t: int, reduction_factor: float) -> list[int]:
    """The rungs (evaluations), lowest first: ``grace * η**k`` below ``max_t``, as Ray's ASHA places them."""
    rungs = []
    t = float(grace_period)
    while t < max_t:
        rungs.append(int(t))
        t *= reduction_factor
    return rungs


class DeferredASHA(FIFOScheduler):
    """Asynchronous successive halving that pauses a trial at a rung until the rung has η results to compare."""

    def __init__(self, *, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: float,
                 concurrent: int, parking: Parking, time_attr: str = "training_iteration") -> None:
        super().__init__()
        declare_scheduler(self, metric, buffered_results=False)  # a trial must stop at its rung, not a few later
        self._mode, self._time_attr = mode, time_attr
        self.max_t, self.eta, self.concurrent = max_t, reduction_factor, max(1, concurrent)
        self.rungs: dict[int, dict[str, float]] = {m: {} for m in rung_milestones(grace_period, max_t,
                                                                                   reduction_factor)}
        self.waiting: dict[str, int] = {}  # trial id -> the rung it waits at
        self.promoted: set[str] = set()  # waited, may continue: resumes when a slot is free
        self.parking = parking

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        if self._time_attr not in result or self.metric not in result:
            return TrialScheduler.CONTINUE
        self.promoted.discard(trial.trial_id)  # it runs again
        t = result[self._time_attr]
        if t >= self.max_t:
            return TrialScheduler.STOP
        rung = max((m for m in self.rungs if m <= t), default=None)
        if rung is None or trial.trial_id in self.rungs[rung]:
            return TrialScheduler.CONTINUE
        self.rungs[rung][trial.trial_id] = self._score(result)
        if len(self.rungs[rung]) < self.eta and self._more_may_come(tune_controller, rung, trial.trial_id):
            self.waiting[trial.trial_id] = rung
            self.parking.results[trial.trial_id] = dict(result)
            return TrialScheduler.PAUSE
        self._settle(tune_controller, rung)
        return TrialScheduler.CONTINUE if self._keeps(rung, trial.trial_id) else TrialScheduler.STOP

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        for rung in sorted(set(self.waiting.values())):
            if not self._more_may_come(tune_controller, rung, None):
                self._settle(tune_controller, rung)
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        if sum(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials) < self.concurrent:
            for trial in trials:  # promoted (a resumed driver gets the old one's paused trials back as PENDING)
                if trial.status == Trial.PAUSED and trial.trial_id not in self.waiting:
                    return trial
        return None

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        self._forget(trial.trial_id)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._forget(trial.trial_id)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        # Tune calls this before it completes the trial with the searcher, which reads the parked result.
        self._forget(trial.trial_id, parked_result=False)

    def debug_string(self) -> str:
        counts = ", ".join(f"{m}: {len(r)}" for m, r in self.rungs.items())
        return (f"DeferredASHA: results per rung {{{counts}}}, {len(self.waiting)} waiting, "
                f"{len(self.promoted)} promoted")

    def _score(self, result: dict[str, Any]) -> float:
        value = float(result[self.metric])
        if math.isnan(value):
            return -math.inf
        return value if self._mode == "max" else -value

    def _keeps(self, rung: int, trial_id: str) -> bool:
        """Among the best ⌊n/η⌋ (at least one) of the rung's n results; ties with the last of them too."""
        scores = sorted(self.rungs[rung].values(), reverse=True)
        top = max(1, int(len(scores) // self.eta))
        return self.rungs[rung][trial_id] >= scores[top - 1]

    def _more_may_come(self, tune_controller: Any, rung: int, arriving: str | None) -> bool:
        """Whether another result can still reach ``rung``: a trial yet to be suggested, or one running, pending or
        promoted that has not passed it."""
        if not tune_controller.search_alg.is_finished():
            return True
        for trial in tune_controller.get_trials():
            if trial.trial_id == arriving or trial.trial_id in self.waiting:
                continue
            active = trial.status in (Trial.RUNNING, Trial.PENDING) or trial.trial_id in self.promoted
            if active and (trial.last_result or {}).get(self._time_attr, 0) < rung:
                return True
        return False

    def _settle(self, tune_controller: Any, rung: int) -> None:
        """Decide every trial waiting at ``rung``: promote it (it resumes when a slot is free) or stop it."""
        by_id = {t.trial_id: t for t in tune_controller.get_trials()}
        for trial_id in [tid for tid, m in self.waiting.items() if m == rung]:
            del self.waiting[trial_id]
            if self._keeps(rung, trial_id):
                self.promoted.add(trial_id)
            elif trial_id in by_id:
                tune_controller.stop_trial(by_id[trial_id])  # the limiter completes it with its parked result
            self.parking.results.pop(trial_id, None)

    def _forget(self, trial_id: str, parked_result: bool = True) -> None:
        self.waiting.pop(trial_id, None)
        self.promoted.discard(trial_id)
        if parked_result:
            self.parking.results.pop(trial_id, None)


class ParkingLimiter(ConcurrencyLimiter):
    """``ConcurrencyLimiter`` that does not count trials waiting at a rung, and completes a waiting trial that is
    stopped (Tune reports it without a result) with the result it reached the rung with."""

    def __init__(self, searcher: Searcher, max_concurrent: int, parking: Parking) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.parking = parking

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if len(self.live_trials - self.parking.results.keys()) >= self.max_concurrent:
            return None
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.live_trials.add(trial_id)
            self.num_unfinished_live_trials += 1
        return suggestion

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if result is None and not error:
            result = self.parking.results.get(trial_id)
        super().on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state.pop("parking", None)  # shared with the scheduler; restoring must not replace it with a copy
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        state = {k: v for k, v in state.items() if k != "parking"}
        super().set_state(state)
