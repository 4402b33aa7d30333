"""``rayft train``'s progress on the terminal: a bar with the loss and the throughput, and a line per evaluation.

Rank 0 of the run tells a :class:`ProgressBoard` (a small actor with no CPU of its own, started by the driver only
when it shows progress) where training stands, as typed :class:`StepProgress`, :class:`Evaluation` and
:class:`Note` records; the driver (:class:`TrainView`) collects them twice a second and draws them on its
:class:`~rayft.console.Console`. Without a board (a sweep's trials, Python callers) rank 0 prints the same lines,
as it always did, when the run is verbose.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rayft.console import Console, duration, fmt

POLL_S = 0.5
BAR = 24  # characters of the progress bar
PLAIN_EVERY = 0.1  # without a terminal, a progress line whenever another tenth of the run is done


@dataclass(frozen=True)
class StepProgress:
    """Where training stands after an optimizer step."""

    step: int
    steps: int
    loss: float
    lr: float
    samples_per_s: float
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Evaluation:
    """An evaluation's metrics (``eval_*``, and ``test_*`` at the end)."""

    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class Note:
    """A line the worker wants the user to see (trainable parameters, a resumed step, unfreezing)."""

    text: str


def board_actor() -> Any:
    """The :class:`ProgressBoard` actor class (Ray is imported only when a board is made)."""
    import ray

    return ray.remote(num_cpus=0)(ProgressBoard)


class ProgressBoard:
    """Holds rank 0's progress records until the driver takes them."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def put(self, item: Any) -> None:
        self.items.append(item)

    def take(self) -> list[Any]:
        items, self.items = self.items, []
        return items


class WorkerProgress:
    """What the worker loop calls to report progress: ``say(text)``, ``say.step(...)``, ``say.evaluated(...)``.

    With a board (rank 0 of a run whose driver shows progress) the records go there; otherwise, when ``verbose``,
    rank 0 prints ``[label] ...`` lines.
    """

    def __init__(self, board: Any, enabled: bool, label: str, print_lines: bool) -> None:
        self.board, self.enabled, self.label, self.print_lines = board, enabled, label, print_lines

    def _send(self, item: Any, text: str) -> None:
        if not self.enabled:
            return
        if self.board is not None:
            self.board.put.remote(item)  # fire and forget: the loop never waits on the driver
        elif self.print_lines:
            print(f"[{self.label}] {text}", flush=True)

    def __call__(self, text: str) -> None:
        self._send(Note(text), text)

    def step(self, step: int, steps: int, loss: float, lr: float, samples_per_s: float) -> None:
        self._send(StepProgress(step, steps, float(loss), float(lr), float(samples_per_s)),
                   f"step {step}/{steps} loss {loss:.4f} lr {lr:.2e} {samples_per_s:.1f} samples/s")

    def evaluated(self, metrics: dict[str, Any]) -> None:
        shown = {k: float(v) for k, v in metrics.items() if k.startswith(("eval_", "test_"))}
        self._send(Evaluation(int(metrics["step"]), shown), evaluation_line(metrics["step"], shown))


def worker_progress(loop: Any, rank: int) -> WorkerProgress:
    """The progress reporter of a worker of the run ``loop`` (its :class:`~rayft.train.handoff.LoopConfig`)."""
    return WorkerProgress(loop.progress, rank == 0 and (loop.verbose or loop.progress is not None), loop.label,
                          loop.verbose)


def evaluation_line(step: int, metrics: dict[str, float]) -> str:
    return f"eval @ step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


class TrainView:
    """On the driver: take the board's records while the run trains and draw them on ``console``."""

    def __init__(self, board: Any, console: Console) -> None:
        self.board, self.console = board, console
        self.started = time.time()
        self.last: StepProgress | None = None
        self.first: StepProgress | None = None  # the first step seen: the rate is measured from there
        self._plain_at = 0.0  # fraction of the run at the last plain progress line
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="rayft-train-view", daemon=True)

    def __enter__(self) -> TrainView:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._take()  # what came after the last poll
        self.console.end_live()

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            self._take()

    def _take(self) -> None:
        import ray

        try:
            items = ray.get(self.board.take.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - the board is gone (Ray shutting down): nothing more to show
            return
        for item in items:
            self.show(item)
        if self.last is not None:
            self.console.live([self.bar(self.last, time.time())])

    def show(self, item: Any) -> None:
        """Put one record on the console."""
        if isinstance(item, StepProgress):
            self.last, self.first = item, self.first or item
            done = item.step / max(item.steps, 1)
            if not self.console.live_view and (done - self._plain_at >= PLAIN_EVERY - 1e-9 or item.step >= item.steps):
                self._plain_at = done
                self.console.line(self.bar(item, item.at))
        elif isinstance(item, Evaluation):
            self.console.line(evaluation_line(item.step, item.metrics))
        elif isinstance(item, Note):
            self.console.line(item.text)

    def bar(self, p: StepProgress, now: float) -> str:
        """``[#####.....] 120/250 48% loss 0.512 | 31.2 samples/s | lr 3e-04 | 1m02s, ~1m10s left``"""
        done = min(1.0, p.step / max(p.steps, 1))
        filled = round(done * BAR)
        elapsed, first = now - self.started, self.first or p
        rate = (p.step - first.step) / max(p.at - first.at, 1e-9)  # steps/s since the first step (evaluations too)
        left = f", ~{duration((p.steps - p.step) / rate)} left" if rate > 0 and p.step < p.steps else ""
        return (f"[{'#' * filled}{'.' * (BAR - filled)}] {p.step}/{p.steps} {done:4.0%} loss {fmt(p.loss)} | "
                f"{p.samples_per_s:.1f} samples/s | lr {p.lr:.1e} | {duration(elapsed)}{left}")


__all__ = ["Evaluation", "Note", "ProgressBoard", "StepProgress", "TrainView", "WorkerProgress", "board_actor",
           "evaluation_line", "worker_progress"]
