"""Keep Ray's own threads out of the training threads' way on a local Ray (small machines).

Every Ray process runs threads of its own — gRPC pollers, event loops, a task-event reporter — that wake up
periodically and, on a small machine, take their CPU time from the intra-op training threads. On a local instance
rayft lowers those threads to the lowest priority (niceness 19), so that they get the smallest share of a busy
CPU (on an EEVDF kernel a waking nice-19 thread still preempts a training thread briefly; docs/benchmarks.md
says why nothing more is done about that). Lowered are:

- the bookkeeping processes (GCS, agents, the raylet's helper threads), when the instance starts
  (:func:`rayft.cluster.lower_bookkeeping_priority`);
- the driver's Ray threads, right after ``ray.init`` (:func:`quiet_ray_threads`);
- in each training worker, every thread but the training thread and (with peers) gloo's communication
  threads;
- the Ray Train controller and the run's synchronisation actor (:class:`QuietRun`).

Only local instances do this (:func:`rayft.cluster.init_ray` hands the niceness to their processes, read back by
:func:`rayft.options.thread_niceness`): on a shared cluster rayft leaves other processes' priorities alone.
Linux only; elsewhere it does nothing.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from rayft.options import thread_niceness
from rayft.ray_internals import ControllerCallback, WorkerGroupCallback

# Ray Train's helper actors of a run, by process title: they coordinate, they never compute.
HELPERS = ("ray::SynchronizationActor", "ray::_AutoscalingCoordinatorActor")


def enabled() -> bool:
    return thread_niceness() > 0 and hasattr(os, "setpriority")


def quiet_ray_threads(keep_names: tuple[str, ...] = (), only_names: tuple[str, ...] = ()) -> int:
    """Lower every thread of this process but the calling one (and threads named ``keep_names*``; of those
    named ``only_names*`` alone, if given).

    Call it from the thread that will do the work: threads it starts later inherit its priority.
    """
    from rayft.cluster import renice_threads, thread_ids

    if not enabled():
        return 0
    pid = os.getpid()
    keep = {threading.get_native_id()}
    for tid in thread_ids(pid):
        name = _thread_name(pid, tid) if keep_names or only_names else ""
        if (keep_names and name.startswith(keep_names)) or (only_names and not name.startswith(only_names)):
            keep.add(tid)
    return renice_threads(pid, thread_niceness(), frozenset(keep))


def quiet_worker_threads(world_size: int) -> int:
    """In a training worker, from its training thread: lower Ray's threads, and gloo's unless the worker has peers.

    gloo's event-loop threads carry the collectives between workers, so with peers they keep the training
    thread's priority; a lone worker has nobody to talk to, and its two loops only wake up a hundred times a
    second each.
    """
    return quiet_ray_threads(keep_names=("gloo",) if world_size > 1 else ())


def quiet_late_gloo_threads(world_size: int) -> int:
    """In a lone training worker, lower gloo's loop threads started since :func:`quiet_worker_threads` ran.

    DeepSpeed starts process groups of its own while its engine is built, each with its loop thread; those
    start at the training thread's priority. Only threads named ``gloo*`` are touched, so the intra-op
    threads the training thread has started meanwhile keep theirs.
    """
    return 0 if world_size > 1 else quiet_ray_threads(only_names=("gloo",))


def quiet_processes(titles: tuple[str, ...]) -> list[int]:
    """Lower every thread of this machine's processes whose title starts with one of ``titles``."""
    from rayft.cluster import renice_threads

    if not enabled():
        return []
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or [""]
        if cmdline and cmdline[0].startswith(titles) and renice_threads(proc.info["pid"], thread_niceness()):
            found.append(proc.info["pid"])
    return found


class QuietRun(ControllerCallback, WorkerGroupCallback):
    """On the Ray Train controller: quiet the controller itself, then the run's helper actors once they exist."""

    def after_controller_start(self, train_run_context: Any) -> None:
        from rayft.exits import exit_without_finalizing

        exit_without_finalizing()  # a controller killed with its trial must not hang in Python's exit handlers
        if enabled():
            from rayft.cluster import renice_threads

            renice_threads(os.getpid(), thread_niceness())

    def after_worker_group_start(self, worker_group: Any) -> None:
        quiet_processes(HELPERS)


def _thread_name(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""
