"""A sweep trial that Tune can pause and restart: a Ray Train run that hands Tune real checkpoints.

Used under population based training and under ASHA with deferred promotion (:mod:`rayft.sweep.asha`), the
schedulers that pause trials. Ray's ``TuneReportCallback`` forwards a Train run's metrics (and a checkpoint *path*)
to Tune, so Tune never holds a checkpoint: PBT could not clone a trial, nor ASHA resume one it paused at a rung. Here, as in every rayft trial, the run reports through the
sweep's hub (:mod:`rayft.sweep.hub`): the controller hands each report with its checkpoint to the hub and waits
until the trial function, with ``trainer.fit()`` running in a thread, has registered it with ``tune.report(...,
checkpoint=...)`` (Tune copies the checkpoint into the trial's own folder, out of reach of the Train run's
retention); only then does the Train run continue.

When Tune restarts the trial from a checkpoint — a clone of a better trial after an exploit step, or its own
after a pause (at a PBT step or an ASHA rung) or a resumed sweep — ``tune.get_checkpoint()`` is that checkpoint: the trial starts a Train run
under a new name (so it cannot pick up an older checkpoint of its own) and its workers load the model and the
optimizer state from it, continuing the step count with this trial's (mutated) learning rate and schedule.
"""

from __future__ import annotations

import time
from typing import Any


def rayft_pbt_trial(sample: dict[str, Any], base: dict[str, Any], data: dict[str, Any], storage: str,
                    worker_cpus: float, lean_start: bool = True, storage_filesystem: Any = None) -> None:
    """One PBT trial (same arguments as :func:`rayft.sweep.run.rayft_trial`).

    Raises:
        Exception: whatever ended the Train run (Tune retries the trial up to ``sweep.max_failures`` times).
    """
    started_at = time.time()
    from ray import tune

    from rayft.sweep.hub import hub_callbacks, relay_reports, run_key
    from rayft.sweep.run import trial_trainer

    def register(metrics: dict[str, Any], checkpoint: Any) -> None:
        metrics["checkpoint_path"] = checkpoint.path if checkpoint else None
        tune.report(metrics, checkpoint=tune.Checkpoint(checkpoint.path, checkpoint.filesystem) if checkpoint else None)

    key = run_key(tune.get_context().get_trial_id())
    callbacks = hub_callbacks(data["hub"], key, warm=bool(data.get("warm")))
    trainer = trial_trainer(sample, base, data, storage, worker_cpus, lean_start, storage_filesystem,
                            callbacks=callbacks, started_at=started_at, start=tune.get_checkpoint())  # None: first start
    relay_reports(data["hub"], key, trainer, register)
