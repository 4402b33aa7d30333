"""The sweep's hub on a real local Ray: reports reach the trial in order, each acknowledged before the run goes
on, and a placement group whose controller dies is freed (what ASHA's stopped trials rely on)."""

from __future__ import annotations

import threading
import time

import pytest


class FakeTrainer:
    """Stands in for ``trainer.fit()``: reports like a Ray Train controller would, through the hub callback."""

    def __init__(self, reporter, reports: int, fail: bool = False) -> None:
        self.reporter, self.reports, self.fail = reporter, reports, fail
        self.returned: list[float] = []  # when each report's put came back (after the trial's ack)

    def fit(self) -> None:
        for i in range(self.reports):
            self.reporter.after_report(None, [{"step": i + 1}], None)
            self.returned.append(time.monotonic())
        if self.fail:
            raise RuntimeError("worker group failed")


def test_reports_arrive_in_order_and_each_waits_for_the_trial(ray_local):
    from rayft.sweep.hub import HubReporter, relay_reports, run_key, start_hub

    hub = start_hub("test-order")
    key = run_key("trial_a")
    trainer = FakeTrainer(HubReporter(hub, key), reports=3)
    registered: list[tuple[int, float]] = []

    def register(metrics, checkpoint):
        time.sleep(0.3)  # Tune taking its time: the run must not go on meanwhile
        registered.append((metrics["step"], time.monotonic()))

    relay_reports(hub, key, trainer, register)
    assert [step for step, _ in registered] == [1, 2, 3]
    assert all(back >= done for back, (_, done) in zip(trainer.returned, registered))


def test_a_failed_run_raises_in_the_trial_after_its_reports(ray_local):
    from rayft.sweep.hub import HubReporter, relay_reports, run_key, start_hub

    hub = start_hub("test-fail")
    key = run_key("trial_b")
    seen: list[int] = []
    with pytest.raises(RuntimeError, match="worker group failed"):
        relay_reports(hub, key, FakeTrainer(HubReporter(hub, key), reports=2, fail=True),
                      lambda metrics, checkpoint: seen.append(metrics["step"]))
    assert seen == [1, 2]


def test_a_new_attempt_of_a_trial_never_sees_what_a_killed_one_left(ray_local):
    import ray

    from rayft.sweep.hub import run_key, start_hub

    hub = start_hub("test-attempts")
    old, new = run_key("trial_c"), run_key("trial_c")
    assert old != new
    from rayft.sweep.handoff import TrialReport

    hub.put.remote(old, TrialReport({"step": 7}))  # the killed attempt's last report, never taken
    assert ray.get(hub.get.remote(new, 0.5)) is None


def test_placement_group_of_a_dead_controller_is_freed(ray_local):
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    from rayft.sweep.hub import start_hub

    @ray.remote(num_cpus=0)
    class Controller:  # creates its workers' placement group, as Ray Train's controller does
        def start(self, hub):
            pg = placement_group([{"CPU": 1}])
            ray.get(pg.ready())
            hub.watch.remote(pg, ray.get_runtime_context().current_actor)
            return pg

    hub = start_hub("test-pg")
    controller = Controller.remote()
    pg = ray.get(controller.start.remote(hub))
    time.sleep(2.5)  # watched while the controller lives: kept
    assert placement_group_table(pg)["state"] == "CREATED"
    before = ray.available_resources().get("CPU", 0)
    ray.kill(controller)  # what Tune does to a trial that ASHA stops (the controller goes with it)
    deadline = time.monotonic() + 20
    while placement_group_table(pg)["state"] != "REMOVED" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert placement_group_table(pg)["state"] == "REMOVED"
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) >= before + 1
    assert ray.get(hub.watching.remote()) == 0


def test_relay_keeps_the_trial_thread_for_tune(ray_local):
    """``register`` (which calls ``tune.report``) runs in the caller's thread, not in the Train run's."""
    from rayft.sweep.hub import HubReporter, relay_reports, run_key, start_hub

    hub = start_hub("test-thread")
    key = run_key("trial_d")
    threads: list[str] = []
    relay_reports(hub, key, FakeTrainer(HubReporter(hub, key), reports=2),
                  lambda metrics, checkpoint: threads.append(threading.current_thread().name))
    assert threads == [threading.current_thread().name] * 2


def test_prestarted_worker_is_taken_by_the_next_actor_and_unused_ones_end(ray_local):
    """The hub has Ray prestart a process of a Train worker's runtime environment; it imports the training stack
    before any work, the next actor of that environment starts in it, and ``release_unused`` ends idle ones."""
    import os
    import sys

    import ray

    from rayft.sweep.hub import start_hub
    from rayft.sweep.warm import _process_env, idle_warm, release_unused
    from rayft.train.preload import preload_env

    env = {"env_vars": preload_env("bert", False, "test-warm")}

    @ray.remote(num_cpus=0, runtime_env=env)
    class Worker:  # stands in for a Ray Train worker with a sweep's preload environment
        def where(self):
            from rayft.train import preload

            return os.getpid(), _process_env(), preload.warm_since, "deepspeed.runtime.engine" in sys.modules

    first = Worker.remote()
    pid, (node, serialized), _, imported = ray.get(first.where.remote(), timeout=300)
    assert imported  # the setup hook ran in this (cold) process before it took the actor
    hub = start_hub("test-warm", warm_trials=2)
    job = ray.get_runtime_context().get_job_id()
    ray.get(hub.prestart.remote(job, [(node, serialized, 1)]))
    idle = _wait_for(lambda: idle_warm("test-warm"))
    assert len(idle) == 1 and ray.get(hub.prestarted.remote()) == 1
    _wait_for(lambda: _warm(idle[0]), timeout_s=300)  # it imports the training stack while idle

    asked_at = time.time()
    second = Worker.remote()
    pid2, _, warm_since, _ = ray.get(second.where.remote(), timeout=60)
    assert pid2 == idle[0] and warm_since < asked_at  # the prestarted, already warm process took it

    ray.get(hub.prestart.remote(job, [(node, serialized, 1)]))  # the last of the hub's 2 later trials
    ray.get(hub.prestart.remote(job, [(node, serialized, 1)]))  # beyond them: nothing
    left = _wait_for(lambda: idle_warm("test-warm"))
    assert len(left) == 1 and ray.get(hub.prestarted.remote()) == 2
    assert release_unused("test-warm") == 1
    _wait_for(lambda: not idle_warm("test-warm"))
    for actor in (first, second):
        ray.kill(actor)


def _warm(pid: int) -> bool:
    """Whether process ``pid`` has finished its imports (its CPU time stopped growing for a second)."""
    import psutil

    proc = psutil.Process(pid)
    before = sum(proc.cpu_times()[:2])
    time.sleep(1.0)
    return sum(proc.cpu_times()[:2]) - before < 0.05


def _wait_for(condition, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {condition}")
