"""A sweep trial under population based training: a Ray Train run that hands Tune real checkpoints.

``TuneReportCallback`` forwards a Train run's metrics (and a checkpoint *path*) to Tune, so Tune never holds a
checkpoint and PBT could not clone a trial. Here the trial owns two small queues: a :class:`CheckpointRelay` on
the Ray Train controller puts each report with its checkpoint on the first and waits on the second; the trial
function, with ``trainer.fit()`` running in a thread, takes each report, registers it with ``tune.report(...,
checkpoint=...)`` (Tune copies the checkpoint into the trial's own folder, out of reach of the Train run's
retention) and then lets the Train run continue.

When Tune restarts the trial from a checkpoint — a clone of a better trial after an exploit step, or its own
after a pause or a resumed sweep — ``tune.get_checkpoint()`` is that checkpoint: the trial starts a Train run
under a new name (so it cannot pick up an older checkpoint of its own) and its workers load the model and the
optimizer state from it, continuing the step count with this trial's (mutated) learning rate and schedule.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ray.train import UserCallback

POLL_S = 1.0


class CheckpointRelay(UserCallback):
    """Runs on the Ray Train controller: hands each report (rank 0's metrics, the persisted checkpoint) to the
    trial through ``reports`` and waits on ``acks`` until the trial has registered it with Tune."""

    def __init__(self, reports: Any, acks: Any) -> None:
        self.reports, self.acks = reports, acks

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        from ray.exceptions import RayActorError

        try:
            self.reports.put((dict(metrics[0]), checkpoint))
            self.acks.get()  # the Train run may delete this checkpoint later; Tune must have its copy first
        except RayActorError:
            pass  # the trial was stopped (e.g. exploited): its queues are gone and this run goes down with them


def rayft_pbt_trial(sample: dict[str, Any], base: dict[str, Any], data: dict[str, Any], storage: str,
                    worker_cpus: float, lean_start: bool = True, storage_filesystem: Any = None) -> None:
    """One PBT trial (same arguments as :func:`rayft.sweep.run.rayft_trial`).

    Raises:
        Exception: whatever ended the Train run (Tune retries the trial up to ``sweep.max_failures`` times).
    """
    started_at = time.time()
    from ray import tune
    from ray.util.queue import Queue

    from rayft.sweep.run import trial_trainer

    reports, acks = (Queue(maxsize=1, actor_options={"num_cpus": 0}) for _ in range(2))
    trainer = trial_trainer(sample, base, data, storage, worker_cpus, lean_start, storage_filesystem,
                            callbacks=[CheckpointRelay(reports, acks)], started_at=started_at,
                            start=tune.get_checkpoint())  # None on a first start
    outcome: dict[str, Any] = {}
    run = threading.Thread(target=_fit, args=(trainer, outcome), name="train-run", daemon=True)
    run.start()
    _relay(reports, acks, run)
    run.join()
    if "error" in outcome:
        raise outcome["error"]


def _fit(trainer: Any, outcome: dict[str, Any]) -> None:
    try:
        trainer.fit()
    except BaseException as exc:  # handed to the trial thread, which raises it to Tune
        outcome["error"] = exc


def _relay(reports: Any, acks: Any, run: threading.Thread) -> None:
    """Register every report of the Train run with Tune until the run ends."""
    from ray import tune
    from ray.util.queue import Empty

    while True:
        try:
            metrics, checkpoint = reports.get(timeout=POLL_S)
        except Empty:
            if not run.is_alive():  # every report is acknowledged before the run goes on, so none is pending
                return
            continue
        metrics["checkpoint_path"] = checkpoint.path if checkpoint else None
        tune.report(metrics, checkpoint=tune.Checkpoint(checkpoint.path, checkpoint.filesystem) if checkpoint else None)
        acks.put(True)
