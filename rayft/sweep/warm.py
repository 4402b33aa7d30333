"""Warm processes for a sweep's next trials: started, with the training stack imported, while earlier trials train.

Every trial of a sweep runs its Ray Train controller, synchronisation actor and workers in processes of its own
(process isolation between trials). Ray starts a process when an actor needs one, and starting Python and Ray,
then a worker's imports (torch, transformers, peft, DeepSpeed, the model's module) all come before the trial's
first step (docs/benchmarks.md has the figures). Ray's raylet can start idle processes of a given runtime
environment ahead of time (its ``PrestartWorkers`` call) and hands them to the next actor with that runtime
environment. So when a trial's worker group is up, :class:`WarmProcesses` (a Ray Train callback on its controller)
asks the sweep's hub to prestart the processes one more trial will need, with the runtime environments this
trial's processes got; the workers' environment names :mod:`rayft.train.preload` as setup hook, so theirs import
the training stack as they start. A prestarted process has run nothing of any trial.

The hub prestarts for at most ``num_trials - concurrent`` later trials (the first ones start cold), and
:func:`release_unused` ends the warm worker processes no trial took once the sweep is over. With
``StartupOptions(warm_pool=False)`` (:mod:`rayft.options`; ``rayft sweep --no-warm-pool``, ``RAYFT_WARM=0``) it is
all off. Where the raylet refuses (another Ray version, a cluster that forbids it), trials start cold.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import ray

from rayft.ray_internals import WorkerGroupCallback, current_runtime_env, prestart_workers, run_on_workers

logger = logging.getLogger(__name__)

KEEP_ALIVE_S = 3600  # Ray keeps an unused prestarted process at least this long
PRESTART_SPACING_S = 1.0  # between two prestarts: a raylet starts as many processes at once as it has CPUs
CONTROLLER_PROCESSES = 2  # the Train controller and its synchronisation actor share the controller's environment


def warm_env(cfg: Any, model_type: str, tag: str) -> dict[str, str]:
    """The runtime environment variables of a trial's Train workers: import the training stack on start."""
    from rayft.train.entry import QUANTIZED_METHODS
    from rayft.train.preload import preload_env

    return preload_env(model_type, cfg.method.name in QUANTIZED_METHODS, tag)


def _process_env() -> tuple[str, str]:
    """(node id, serialized runtime environment) of the calling Ray process."""
    return ray.get_runtime_context().get_node_id(), current_runtime_env()


class WarmProcesses(WorkerGroupCallback):
    """On a trial's Train controller: once its workers are up, have the hub prestart the next trial's processes."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.trial = _process_env()  # made in the trial's process, whose environment the next trial's gets

    def after_worker_group_start(self, worker_group: Any) -> None:
        wanted: Counter[tuple[str, str]] = Counter(run_on_workers(worker_group, _process_env))  # the workers' first
        wanted[_process_env()] += CONTROLLER_PROCESSES
        wanted[self.trial] += 1
        self.hub.prestart.remote(ray.get_runtime_context().get_job_id(),
                                 [(node, env, count) for (node, env), count in wanted.items()])


def prestart(node_id: str, job_id: str, runtime_env: str, count: int, keep_alive_s: int = KEEP_ALIVE_S) -> None:
    """Ask node ``node_id``'s raylet to start ``count`` idle worker processes of ``runtime_env`` for job ``job_id``.

    Raises:
        LookupError: no live node has that id.
        grpc.RpcError: the raylet refused or could not be reached.
    """
    node = next((n for n in ray.nodes() if n["Alive"] and n["NodeID"] == node_id), None)
    if node is None:
        raise LookupError(f"no live Ray node {node_id}")
    prestart_workers(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}", job_id, runtime_env, count,
                     keep_alive_s)


def idle_warm(tag: str) -> list[int]:
    """Pids of this machine's idle worker processes prestarted with the training stack for sweep ``tag``.

    An idle Ray worker's title is ``ray::IDLE``; the tag is in its environment (see :mod:`rayft.train.preload`).
    """
    import psutil

    from rayft.options import worker_preload

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            idle = (proc.info.get("cmdline") or [""])[0].startswith("ray::IDLE")
            if idle and worker_preload(proc.environ()).tag == tag:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue  # gone meanwhile, or not ours to read
    return found


def release_unused(tag: str) -> int:
    """End this machine's idle warm worker processes started for sweep ``tag``; returns how many.

    Processes on other nodes are left to Ray, which ends them when their keep-alive ran out or the job ends.
    """
    import psutil

    ended = 0
    for pid in idle_warm(tag):
        try:
            psutil.Process(pid).terminate()  # an idle Ray worker exits cleanly on SIGTERM
            ended += 1
        except psutil.Error:
            continue
    return ended
