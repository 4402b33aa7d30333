"""Ending cleanly: a local Ray ends with the command that started it, and Ray's processes stop without a crash dump.

- :func:`shutdown_ray` (the CLI calls it as ``rayft train``, ``sweep`` and ``serve`` end, Ctrl-C included): shut
  down the Ray this process started, then end whatever of it is still running among this process's descendants
  after a grace period — Ray's workers and controllers can hang in Python's exit handlers, long after the command
  returned (about 200 MB each).
- :func:`exit_without_finalizing` (the training workers, the Ray Train controller and the sweep's trial actors call
  it as they start): when Ray ends such a process on purpose — a trial stopped by ASHA, exploited by PBT, or
  cancelled — the process leaves at once instead of finalizing Python around threads that still run. Finalizing
  ends those threads with ``pthread_exit`` as they wait for the GIL; one inside a C++ call (a torch op on the
  training thread) then unwinds through a ``noexcept`` frame, and ``std::terminate`` aborts the process with a
  ``Fatal Python error: Aborted`` dump of every stack, which Ray forwards to the driver. Nothing is lost: the run's
  reports and checkpoints are already with Ray when it asks the process to leave.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

GRACE_S = 5.0  # how long Ray's processes get to end by themselves after ray.shutdown()


def ray_running() -> bool:
    """Whether this process is connected to a Ray (without importing Ray)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def shutdown_ray(grace_s: float = GRACE_S) -> list[int]:
    """Shut down this process's Ray, then kill its descendants that are still running ``grace_s`` later.

    Only processes this one started (directly or through the processes it started) are touched: on a local Ray
    that is every process of it; connected to a cluster elsewhere, there are none. Returns the pids killed.
    """
    if not ray_running():
        return []
    import psutil
    import ray

    procs = _descendants()
    ray.shutdown()
    procs += [p for p in _descendants() if p not in procs]  # started while shutting down
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue  # ended meanwhile
    psutil.wait_procs(alive, timeout=2)
    return [p.pid for p in alive]


def _descendants() -> list[Any]:
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:  # pragma: no cover - this process always exists
        return []


def exit_without_finalizing() -> None:
    """Have this (Ray worker) process leave with ``os._exit`` as soon as Python starts to exit.

    The hook runs first thing when the interpreter shuts down (before it waits for other threads and runs the
    other exit handlers): the standard streams are flushed, then the process ends with status 0 — Ray only asks
    its processes to exit once it has recorded why. Idempotent.
    """
    global _hooked
    if _hooked:
        return
    _hooked = True
    register = getattr(threading, "_register_atexit", None)  # runs before non-daemon threads are joined
    try:
        if register is None:
            raise RuntimeError
        register(_leave)
    except RuntimeError:  # no such hook, or the interpreter is already shutting down
        import atexit

        atexit.register(_leave)


_hooked = False


def _leave() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - closed already; nothing more to write
            pass
    os._exit(0)


__all__ = ["GRACE_S", "exit_without_finalizing", "ray_running", "shutdown_ray"]
