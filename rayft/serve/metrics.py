"""``GET /metrics`` across replicas: each model replica pushes its figures to one board actor the gateway reads.

A Serve handle reaches one replica per call, so the gateway cannot ask every replica itself; instead every model
replica sends a :class:`~rayft.generate.metrics.MetricsSnapshot` each :data:`PUSH_S` to the board (a named actor
the gateway creates and owns, so it goes away with the app), and ``/metrics`` renders the snapshots of the replicas
heard from within :data:`MAX_AGE_S`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import ray

from rayft.generate.metrics import MetricsSnapshot, render_prometheus

logger = logging.getLogger("ray.serve")
NAMESPACE = "rayft"
PUSH_S = 1.0  # how often a replica sends its figures
MAX_AGE_S = 15.0  # a replica not heard from for this long is gone (scaled down, restarted)


@ray.remote(num_cpus=0)
class MetricsBoard:
    """The latest snapshot of every model replica of one app."""

    def __init__(self) -> None:
        self.snapshots: dict[str, tuple[float, MetricsSnapshot]] = {}

    def put(self, replica: str, snapshot: MetricsSnapshot) -> None:
        self.snapshots[replica] = (time.monotonic(), snapshot)

    def render(self) -> bytes:
        now = time.monotonic()
        self.snapshots = {k: v for k, v in self.snapshots.items() if now - v[0] <= MAX_AGE_S}
        return render_prometheus({k: v[1] for k, v in sorted(self.snapshots.items())})


def board_name(app: str) -> str:
    return f"{app}-metrics"


def open_board(app: str) -> Any:
    """The app's board, created on first use (by the gateway: it then owns it)."""
    return MetricsBoard.options(name=board_name(app), namespace=NAMESPACE, get_if_exists=True).remote()


class Pusher:
    """A daemon thread that sends ``snapshot()`` to the app's board every :data:`PUSH_S` seconds."""

    def __init__(self, app: str, replica: str, snapshot: Callable[[], MetricsSnapshot]) -> None:
        self.app, self.replica, self.snapshot = app, replica, snapshot
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="rayft-metrics", daemon=True).start()

    def _run(self) -> None:
        board = None
        while not self._stop.wait(PUSH_S):
            try:
                if board is None:
                    board = ray.get_actor(board_name(self.app), namespace=NAMESPACE)
                board.put.remote(self.replica, self.snapshot())
            except Exception as exc:  # noqa: BLE001 - no board yet, or it went away with its gateway: look again
                logger.debug("metrics push skipped: %s", exc)
                board = None

    def stop(self) -> None:
        self._stop.set()
