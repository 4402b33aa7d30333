"""One actor per sweep, shared by its trials: relays each Train run's reports to its Tune trial, and frees the
placement groups of Train runs whose trial is gone.

Ray offers both per trial, at the price of two more processes for every trial: ``TuneReportCallback`` starts a
queue actor per trial, which the trial then polls five times a second for as long as it trains, and Ray Train
starts a detached ``PlacementGroupCleaner`` per run that asks the dashboard's state API every second whether
the run's controller still lives. On a small machine those processes cost seconds of every trial's start-up
(processes start a couple at a time) and CPU while trials train. The hub does both jobs for the whole sweep
without polling anyone:

- **Reports.** :class:`HubReporter`, a Ray Train callback on the run's controller, hands each report (rank 0's
  metrics and the persisted checkpoint) to the hub and waits until the trial has registered it with Tune; the
  trial function (:func:`relay_reports`), with ``trainer.fit()`` in a thread, blocks on the hub for the next
  report. Every report reaches Tune before the run goes on, so the scheduler decides on current results.
- **Placement groups.** :class:`HubPlacementGroups`, on the controller too, registers the worker group's
  placement group with the controller's handle. A trial that Tune stops (ASHA) is killed with its controller,
  but the placement group belongs to the job and would hold its CPUs until the sweep ends; the hub waits on
  each registered controller and removes its placement group as soon as the controller is gone.

The hub lives as long as the sweep's driver. A driver killed mid-sweep takes it along with every trial, and
``rayft sweep --resume`` starts a new one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import ray
from ray.train import UserCallback

from rayft.ray_internals import WorkerGroupCallback, worker_group_placement_group
from rayft.sweep.handoff import TrialReport

WAIT_S = 5.0  # how long one blocking get waits on the hub before the trial checks that its run still lives


@ray.remote(num_cpus=0, max_concurrency=1000)
class TrialHub:
    """The sweep's relay and placement-group keeper (an asyncio actor: every call waits without a thread)."""

    def __init__(self, warm_trials: int = 0) -> None:
        self._reports: dict[str, asyncio.Queue] = {}
        self._acks: dict[str, asyncio.Queue] = {}
        self._watched: set[asyncio.Task] = set()
        self._warm_left = warm_trials  # later trials to prestart processes for (see rayft.sweep.warm)
        self._warm_queue: asyncio.Queue = asyncio.Queue()
        self._warm_task: asyncio.Task | None = None
        self._warm_asked = 0

    def _queues(self, key: str) -> tuple[asyncio.Queue, asyncio.Queue]:
        if key not in self._reports:
            self._reports[key], self._acks[key] = asyncio.Queue(maxsize=1), asyncio.Queue(maxsize=1)
        return self._reports[key], self._acks[key]

    async def put(self, key: str, report: TrialReport) -> None:
        """Hand a report to the trial; returns once the trial acknowledged it."""
        reports, acks = self._queues(key)
        await reports.put(report)
        await acks.get()

    async def get(self, key: str, timeout_s: float = WAIT_S) -> TrialReport | None:
        """The trial's next report, or None when none came within ``timeout_s``."""
        reports, _ = self._queues(key)
        try:
            return await asyncio.wait_for(reports.get(), timeout_s)
        except asyncio.TimeoutError:
            return None

    async def ack(self, key: str) -> None:
        await self._queues(key)[1].put(True)

    def release(self, key: str) -> None:
        """Forget a finished run's queues."""
        self._reports.pop(key, None)
        self._acks.pop(key, None)

    async def watch(self, placement_group: Any, controller: Any) -> None:
        """Remove ``placement_group`` once ``controller`` (the Ray Train controller that owns it) is gone."""
        task = asyncio.get_running_loop().create_task(self._remove_after(placement_group, controller))
        self._watched.add(task)
        task.add_done_callback(self._watched.discard)

    async def _remove_after(self, placement_group: Any, controller: Any) -> None:
        from ray.exceptions import RayActorError

        while True:
            try:
                await controller.__ray_ready__.remote()
            except RayActorError:
                break  # the controller died (its trial was stopped, or failed): its placement group is ours to free
            await asyncio.sleep(1.0)
        try:
            ray.util.remove_placement_group(placement_group)
        except Exception:  # noqa: BLE001 - already removed by the controller's own shutdown
            pass

    def watching(self) -> int:
        return len(self._watched)

    async def prestart(self, job_id: str, wanted: list[tuple[str, str, int]]) -> None:
        """Prestart one later trial's processes: ``count`` of each (node, runtime environment) in ``wanted``,
        the first entries first."""
        if self._warm_left <= 0:
            return
        self._warm_left -= 1
        for node, env, count in wanted:
            for _ in range(count):
                self._warm_queue.put_nowait((node, job_id, env))
        if self._warm_task is None:
            self._warm_task = asyncio.get_running_loop().create_task(self._prestart_queued())

    async def _prestart_queued(self) -> None:
        """Ask for one process at a time: a raylet starts only as many processes at once as it has CPUs, and
        drops prestart requests beyond that."""
        from rayft.sweep.warm import PRESTART_SPACING_S, prestart

        while True:
            node, job_id, env = await self._warm_queue.get()
            try:
                await asyncio.to_thread(prestart, node, job_id, env, 1)
                self._warm_asked += 1
            except Exception as exc:  # noqa: BLE001 - trials then start cold, as without prestarting
                self._warm_left = 0
                print(f"rayft: could not prestart processes for the next trials ({exc}); they start cold",
                      flush=True)
                return
            await asyncio.sleep(PRESTART_SPACING_S)

    def prestarted(self) -> int:
        """How many processes the hub had Ray prestart."""
        return self._warm_asked


def start_hub(sweep_name: str, warm_trials: int = 0) -> Any:
    """The hub of this driver's sweep (on the driver's node, no CPU of its own); it prestarts processes for up to
    ``warm_trials`` later trials."""
    node = ray.get_runtime_context().get_node_id()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return TrialHub.options(name=f"rayft-hub-{sweep_name}-{time.time_ns()}",
                            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True)).remote(warm_trials)


class HubReporter(UserCallback):
    """On the Train controller: each report (rank 0's metrics, the checkpoint) goes to the trial through the hub."""

    def __init__(self, hub: Any, key: str) -> None:
        self.hub, self.key = hub, key

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        from ray.exceptions import RayActorError

        try:
            ray.get(self.hub.put.remote(self.key, TrialReport(dict(metrics[0]), checkpoint)))
        except RayActorError:
            pass  # the driver (and with it the hub) is gone: this run goes down with the sweep


class HubPlacementGroups(WorkerGroupCallback):
    """On the Train controller: the worker group's placement group is freed by the hub if the controller dies."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub

    def after_worker_group_start(self, worker_group: Any) -> None:
        controller = ray.get_runtime_context().current_actor
        self.hub.watch.remote(worker_group_placement_group(worker_group), controller)


def hub_callbacks(hub: Any, key: str, warm: bool = False) -> list[Any]:
    """The Ray Train callbacks of a trial's run: reports through the hub, placement group watched by it, and with
    ``warm`` the next trial's processes prestarted by it."""
    from rayft.sweep.warm import WarmProcesses

    return [HubReporter(hub, key), HubPlacementGroups(hub), *([WarmProcesses(hub)] if warm else [])]


def run_key(trial_id: str) -> str:
    """The hub's key for one attempt of a trial: a trial that Tune restarts gets fresh queues, so nothing an
    earlier, killed attempt left on the hub can reach the new one."""
    return f"{trial_id}@{time.time_ns()}"


def relay_reports(hub: Any, key: str, trainer: Any, register: Any) -> None:
    """Run ``trainer.fit()`` in a thread and pass each of its reports to ``register(metrics, checkpoint)`` (which
    calls ``tune.report``) in this, the trial's, thread, until the run ends. ``key`` is the attempt's
    :func:`run_key`, also handed to the run's :class:`HubReporter`.

    Raises:
        Exception: whatever ended the Train run (Tune retries the trial up to ``sweep.max_failures`` times).
    """
    outcome: dict[str, Any] = {}
    run = threading.Thread(target=_fit, args=(trainer, outcome), name="train-run", daemon=True)
    run.start()
    while True:
        item = ray.get(hub.get.remote(key, WAIT_S if run.is_alive() else 0.01))
        if item is None:
            if not run.is_alive():  # every report is acknowledged before the run goes on: none is pending
                break
            continue
        register(item.metrics, item.checkpoint)
        ray.get(hub.ack.remote(key))
    run.join()
    hub.release.remote(key)
    if "error" in outcome:
        raise outcome["error"]


def _fit(trainer: Any, outcome: dict[str, Any]) -> None:
    try:
        trainer.fit()
    except BaseException as exc:  # handed to the trial thread, which raises it to Tune
        outcome["error"] = exc
