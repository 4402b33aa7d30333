"""ASHA with deferred promotion: who waits at a rung, who is promoted or stopped, and what the searcher learns.

The scheduler's decisions against a stand-in for Tune's controller (trials, their status, the searcher's
progress); a real sweep under it is in tests/integration/test_sweep.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from rayft.config import build_config
from rayft.errors import ConfigError
from rayft.sweep.asha import DeferredASHA, Parking, ParkingLimiter, rung_milestones
from rayft.sweep.search import limit_concurrency, make_scheduler

CONTINUE, PAUSE, STOP = TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP


@dataclass
class FakeTrial:
    trial_id: str
    status: str = Trial.RUNNING
    last_result: dict = field(default_factory=dict)


class FakeSearch:
    def __init__(self) -> None:
        self.finished = False

    def is_finished(self) -> bool:
        return self.finished


class FakeController:
    def __init__(self, *ids: str) -> None:
        self.trials = [FakeTrial(i) for i in ids]
        self.search_alg = FakeSearch()
        self.stopped: list[str] = []

    def get_trials(self) -> list[FakeTrial]:
        return self.trials

    def stop_trial(self, trial: FakeTrial) -> None:
        self.stopped.append(trial.trial_id)
        trial.status = Trial.TERMINATED

    def trial(self, trial_id: str) -> FakeTrial:
        return next(t for t in self.trials if t.trial_id == trial_id)


def report(sched: DeferredASHA, ctl: FakeController, trial_id: str, it: int, loss: float) -> str:
    trial = ctl.trial(trial_id)
    result = {"training_iteration": it, "eval_loss": loss}
    trial.last_result = result
    decision = sched.on_trial_result(ctl, trial, result)
    if decision == PAUSE:
        trial.status = Trial.PAUSED
    elif decision == STOP:
        trial.status = Trial.TERMINATED
    return decision


def make(concurrent: int = 2) -> DeferredASHA:
    return DeferredASHA(metric="eval_loss", mode="min", max_t=8, grace_period=2, reduction_factor=3,
                        concurrent=concurrent, parking=Parking())


def test_rungs_are_placed_like_rays_asha():
    assert rung_milestones(2, 8, 3) == [2, 6]
    assert rung_milestones(1, 9, 3) == [1, 3]  # a rung at max_t would decide nothing
    assert rung_milestones(1, 12, 2) == [1, 2, 4, 8]


def test_the_first_trials_wait_until_the_rung_has_eta_results():
    sched, ctl = make(), FakeController("a", "b", "c")
    assert report(sched, ctl, "a", 1, 0.7) == CONTINUE  # below the first rung
    assert report(sched, ctl, "a", 2, 0.60) == PAUSE  # alone at the rung: Ray's ASHA would let it run on
    assert report(sched, ctl, "b", 2, 0.50) == PAUSE
    assert sched.waiting == {"a": 2, "b": 2} and set(sched.parking.results) == {"a", "b"}
    # The third result decides all three: only the best of 3 continues (b, which waited); a and c stop.
    assert report(sched, ctl, "c", 2, 0.65) == STOP
    assert ctl.stopped == ["a"] and sched.promoted == {"b"} and not sched.waiting
    # b resumes before anything new, as soon as a slot is free.
    assert sched.choose_trial_to_run(ctl) is ctl.trial("b")
    assert report(sched, ctl, "b", 3, 0.45) == CONTINUE and not sched.promoted


def test_later_arrivals_are_decided_at_once_by_rank():
    sched, ctl = make(), FakeController(*"abcdef")
    for tid, loss in zip("abc", (0.6, 0.5, 0.7)):
        report(sched, ctl, tid, 2, loss)
    # n = 4: the best floor(4/3) = 1 continue; d (0.55) is second: stopped; e (0.40) is the best: continues.
    assert report(sched, ctl, "d", 2, 0.55) == STOP
    assert report(sched, ctl, "e", 2, 0.40) == CONTINUE
    # n = 6: the best 2 continue; f ties the second best (0.5) and continues too.
    assert report(sched, ctl, "f", 2, 0.50) == CONTINUE


def test_a_rung_nothing_more_can_reach_is_settled_with_what_it_holds():
    sched, ctl = make(), FakeController("a", "b", "c", "d")
    for tid, loss in zip("abc", (0.6, 0.5, 0.7)):
        report(sched, ctl, tid, 2, loss)
    assert report(sched, ctl, "b", 6, 0.45) == PAUSE  # first at the second rung; c and d may still come
    ctl.search_alg.finished = True
    assert report(sched, ctl, "d", 2, 0.8) == STOP  # n = 4 at the first rung: only b's 0.5 is in the top 1
    # Nothing running or promoted is below the second rung any more: b is decided alone there and resumes.
    assert sched.choose_trial_to_run(ctl) is ctl.trial("b")
    assert sched.promoted == {"b"} and not sched.waiting
    assert report(sched, ctl, "b", 8, 0.4) == STOP  # max_t: done


def test_a_promoted_trial_waits_for_a_free_slot():
    sched, ctl = make(concurrent=2), FakeController("a", "b", "c", "d")
    report(sched, ctl, "a", 2, 0.4)
    report(sched, ctl, "b", 2, 0.5)
    ctl.trial("d").status = Trial.RUNNING
    assert report(sched, ctl, "c", 2, 0.6) == STOP  # a is promoted; c stops; d runs
    ctl.trials.append(FakeTrial("e"))  # a new trial already running beside d: no free slot
    assert sched.choose_trial_to_run(ctl) is None
    ctl.trial("e").status = Trial.TERMINATED
    assert sched.choose_trial_to_run(ctl) is ctl.trial("a")


def test_after_a_driver_restart_trials_paused_at_a_rung_resume_and_are_decided_there_again():
    """A resumed sweep builds a new scheduler with empty rungs, and Tune requeues the trials the old driver had
    paused (waiting or promoted) as PENDING, to be restored from their checkpoints."""
    sched, ctl = make(concurrent=2), FakeController("a", "b", "c")
    for tid in "ab":
        ctl.trial(tid).status = Trial.PENDING
        ctl.trial(tid).last_result = {"training_iteration": 2, "eval_loss": 0.5}
    assert sched.choose_trial_to_run(ctl) is ctl.trial("a")
    ctl.trial("a").status = ctl.trial("b").status = Trial.RUNNING
    # Back from its checkpoint at evaluation 2, a's next result is its first the new rungs see: it waits at the
    # rung it had reached, now among the results that come there after the restart.
    assert report(sched, ctl, "a", 3, 0.45) == PAUSE and sched.waiting == {"a": 2}
    assert report(sched, ctl, "b", 3, 0.50) == PAUSE
    assert report(sched, ctl, "c", 2, 0.60) == STOP and sched.promoted == {"a"} and ctl.stopped == ["b"]
    assert sched.choose_trial_to_run(ctl) is ctl.trial("a")


class RecordingSearcher(Searcher):
    def __init__(self) -> None:
        super().__init__(metric="eval_loss", mode="min")
        self.completed: dict[str, dict | None] = {}

    def suggest(self, trial_id: str) -> dict:
        return {"x": 1}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.completed[trial_id] = result


def test_the_limiter_does_not_count_waiting_trials_and_completes_them_with_their_rung_result():
    parking = Parking()
    limiter = ParkingLimiter(RecordingSearcher(), max_concurrent=2, parking=parking)
    assert limiter.suggest("a") and limiter.suggest("b")
    assert limiter.suggest("c") is None  # two live, none waiting
    parking.results["a"] = {"training_iteration": 2, "eval_loss": 0.6}
    assert limiter.suggest("c")  # a waits at a rung: it does not hold a slot
    limiter.on_trial_complete("a")  # stopped while waiting: Tune passes no result
    assert limiter.searcher.completed["a"] == {"training_iteration": 2, "eval_loss": 0.6}
    state = limiter.get_state()
    assert "parking" not in state
    limiter.set_state(state)
    assert limiter.parking is parking  # still the scheduler's


def test_the_config_selects_it_and_checks_what_it_needs(tiny_bert, sentiment_csv, tmp_path):
    from tests.support import cls_config

    cfg = build_config(cls_config(tiny_bert, sentiment_csv, tmp_path,
                                  sweep={"num_trials": 4, "asha_promotion": "deferred", "grace_period": 1}))
    sched = make_scheduler(cfg, "eval_accuracy", "max", max_t=4, concurrent=2)
    assert isinstance(sched, DeferredASHA) and sched.concurrent == 2
    searcher, max_concurrent = limit_concurrency(RecordingSearcher(), sched, 2)
    assert isinstance(searcher, ParkingLimiter) and max_concurrent is None and searcher.parking is sched.parking
    with pytest.raises(ConfigError) as err:
        build_config(cls_config(tiny_bert, sentiment_csv, tmp_path, train={"checkpoint_every": 2},
                                sweep={"scheduler": "median", "searcher": "grid", "asha_promotion": "deferred",
                                       "space": {"train.lr": {"choice": [1e-3, 1e-2]}}}))
    text = str(err.value)
    for path in ("sweep.asha_promotion", "sweep.searcher", "train.checkpoint_every"):
        assert path in text, text
