"""The sweep's live view on the terminal: one line per trial, from Ray Tune's own callback hooks on the driver.

Each line shows the trial's status, its sampled parameters, the latest and best value of the sweep's objective,
its progress in optimizer steps and its time. On a terminal the lines are redrawn in place as results come
(:meth:`rayft.console.Console.live`); elsewhere a trial's line is printed whenever something happens to it — it
starts, reports, finishes, is stopped or fails — so a log or CI shows the same story line by line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ray.tune import Callback

from rayft.console import Console, duration, fmt
from rayft.sweep.space import flat_params

REDRAW_S = 0.5  # a terminal's view is redrawn at most this often between events
BAR = 10  # characters of a trial's progress bar


@dataclass
class TrialLine:
    """What the view knows of one trial."""

    trial_id: str
    params: dict[str, Any]
    status: str = "PENDING"
    latest: float | None = None
    best: float | None = None
    step: int = 0
    steps: int | None = None
    final: bool = False
    started: float | None = None
    ended: float | None = None
    evaluations: int = 0
    names: dict[str, str] = field(default_factory=dict)  # parameter -> the short name shown

    def seconds(self, now: float) -> float:
        return ((self.ended or now) - self.started) if self.started else 0.0


class SweepView(Callback):
    """A Ray Tune callback that keeps the sweep's view on a :class:`~rayft.console.Console`.

    Args:
        console: where the view goes.
        metric, mode: the sweep's objective (``max``/``min``).
        steps_of: a trial's total optimizer steps from its sampled config (None: progress shows steps only).
    """

    def __init__(self, console: Console, metric: str, mode: str,
                 steps_of: Callable[[dict[str, Any]], int] | None = None) -> None:
        self.console, self.metric, self.mode, self.steps_of = console, metric, mode, steps_of
        self.trials: dict[str, TrialLine] = {}
        self.started_at = time.time()
        self._drawn_at = 0.0

    def __getstate__(self) -> dict[str, Any]:
        # Tune saves its callbacks with the sweep (tuner.pkl); a resumed sweep's view shows on that driver's console.
        return {**self.__dict__, "console": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        from rayft.console import active

        self.__dict__.update(state)
        self.console = active() or Console(live=False)

    # -- Tune's hooks -------------------------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._started(trial, "started")

    def on_trial_restore(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._started(trial, "restored")

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        line = self._line(trial)
        line.status, line.evaluations = "RUNNING", line.evaluations + 1
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            line.latest = float(value)
            better = max if self.mode == "max" else min
            line.best = line.latest if line.best is None else better(line.best, line.latest)
        line.step = int(result.get("step") or line.step)
        line.final = bool(result.get("final"))
        self._changed(line)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        line = self._line(trial)
        line.status, line.ended = ("DONE" if line.final else "STOPPED"), time.time()
        self._changed(line)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        line = self._line(trial)
        line.status, line.ended = "ERROR", time.time()
        self._changed(line)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        for trial in trials:  # statuses no other hook reports (paused by PBT or ASHA, waiting for resources)
            if trial.status in ("PAUSED", "PENDING") and trial.trial_id in self.trials:
                self.trials[trial.trial_id].status = trial.status
        if time.time() - self._drawn_at >= REDRAW_S:
            self._draw()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._draw()
        self.console.end_live()

    # -- rendering ----------------------------------------------------------------------------------------------
    def _started(self, trial: Any, what: str) -> None:
        line = self._line(trial)
        line.status, line.ended = "RUNNING", None
        line.started = line.started or time.time()
        self._changed(line)

    def _line(self, trial: Any) -> TrialLine:
        trial_id = str(trial.trial_id)
        if trial_id not in self.trials:
            params = flat_params(dict(trial.config or {}))
            steps = None
            if self.steps_of is not None:
                try:
                    steps = self.steps_of(dict(trial.config or {}))
                except Exception:  # noqa: BLE001 - the view then shows steps without a total
                    steps = None
            self.trials[trial_id] = TrialLine(trial_id, params, steps=steps, names=short_names(params))
        return self.trials[trial_id]

    def _changed(self, line: TrialLine) -> None:
        if self.console.live_view:
            self._draw()
        else:
            self.console.line(self.render(line, time.time()))

    def _draw(self) -> None:
        self._drawn_at = now = time.time()
        self.console.live([self.header(now), *(self.render(t, now) for t in self.trials.values())])

    def header(self, now: float) -> str:
        """The view's first line: trials by status, the best so far, the sweep's time."""
        counts: dict[str, int] = {}
        for t in self.trials.values():
            counts[t.status] = counts.get(t.status, 0) + 1
        best = self.best()
        shown = f"; best {self.metric} {fmt(best.best)} ({best.trial_id})" if best else ""
        return (f"trials: {', '.join(f'{n} {s.lower()}' for s, n in counts.items()) or 'none yet'}{shown}; "
                f"{duration(now - self.started_at)}")

    def best(self) -> TrialLine | None:
        scored = [t for t in self.trials.values() if t.best is not None]
        if not scored:
            return None
        return (max if self.mode == "max" else min)(scored, key=lambda t: t.best)  # type: ignore[arg-type, return-value]

    def render(self, t: TrialLine, now: float) -> str:
        """One trial's line: id, status, parameters, latest (best) objective, progress, time."""
        params = " ".join(f"{t.names[k]}={fmt(v)}" for k, v in t.params.items())
        metric = (f"{self.metric} {fmt(t.latest)}" + (f" (best {fmt(t.best)})" if t.best != t.latest else "")
                  if t.latest is not None else f"{self.metric} -")
        if t.steps:
            done = min(1.0, t.step / t.steps)
            filled = round(done * BAR)
            progress = f"{'#' * filled}{'.' * (BAR - filled)} {t.step}/{t.steps}"
        else:
            progress = f"step {t.step}"
        return f"{t.trial_id:<10} {t.status:<8} {params} | {metric} | {progress} | {duration(t.seconds(now))}"


def short_names(params: dict[str, Any]) -> dict[str, str]:
    """Each parameter's last path component (``train.lr`` -> ``lr``), or its full path where two share one."""
    last = [k.rsplit(".", 1)[-1] for k in params]
    return {k: (n if last.count(n) == 1 else k) for k, n in zip(params, last)}


__all__ = ["SweepView", "TrialLine", "short_names"]
