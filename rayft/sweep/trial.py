"""The sweep's trial function: one Tune trial is one Ray Train run with the trial's sampled values applied.

The run reports through the sweep's hub (:mod:`rayft.sweep.hub`): the run's controller hands each report with its
checkpoint to the hub and waits until the trial function, with ``trainer.fit()`` running in a thread, has
registered it with Tune; only then does the Train run continue. The run is named after the trial, so a restarted
trial (driver resumed, or retried after a failure) finds its own latest checkpoint and continues from it.

Schedulers that pause trials — population based training and ASHA with deferred promotion
(:mod:`rayft.sweep.asha`) — need Tune to hold real checkpoints: Ray's ``TuneReportCallback`` forwards a Train run's
metrics and a checkpoint *path* only, so PBT could not clone a trial, nor ASHA resume one it paused at a rung. Under
them (a pausable :class:`~rayft.sweep.handoff.TrialPlan`) the trial registers each report with ``tune.report(...,
checkpoint=...)``, and Tune copies the checkpoint into the trial's own folder, out of reach of the Train run's
retention. When Tune restarts the trial from a checkpoint — a clone of a better trial after an exploit step, or
its own after a pause (at a PBT step or an ASHA rung) or a resumed sweep — ``tune.get_checkpoint()`` is that
checkpoint: the trial starts a Train run under a new name (so it cannot pick up an older checkpoint of its own)
and its workers load the model and the optimizer state from it, continuing the step count with this trial's
(mutated) learning rate and schedule.
"""

from __future__ import annotations

import time
from typing import Any

from rayft.sweep.handoff import TrialSetup


def rayft_trial(sample: dict[str, Any], setup: TrialSetup) -> None:
    """One trial: apply the sampled values and run a Ray Train job whose reports reach Tune through the hub.

    Raises:
        Exception: whatever ended the Train run (Tune retries the trial up to ``sweep.max_failures`` times).
    """
    started_at = time.time()
    from ray import tune

    from rayft.exits import exit_without_finalizing

    exit_without_finalizing()  # a stopped trial's process leaves at once, its Train run's thread still waiting

    from rayft.sweep.hub import hub_callbacks, relay_reports, run_key

    plan = setup.plan
    key = run_key(tune.get_context().get_trial_id())
    trainer = trial_trainer(sample, setup, callbacks=hub_callbacks(setup.hub, key, warm=bool(setup.warm)),
                            started_at=started_at, start=plan.restart_checkpoint())  # None: a first start
    relay_reports(setup.hub, key, trainer, plan.register)


def trial_trainer(sample: dict[str, Any], setup: TrialSetup, *, callbacks: list[Any], started_at: float,
                  start: Any = None) -> Any:
    """The Ray Train run of the current Tune trial, with the sampled values applied.

    It is named after the trial; with ``start`` (a checkpoint Tune restarts the trial from) it is a run of its
    own under a new name, so it cannot pick up an older checkpoint of the trial, and its workers begin there.
    The sweep's hub frees the run's placement group should the trial be stopped (see
    :mod:`rayft.sweep.hub`), so Ray Train's cleaner actor is left out; so is its autoscaling coordinator on a Ray
    the sweep started (``setup.private``). With ``setup.warm`` (the sweep's tag) the workers' processes import
    the training stack as they start (see :mod:`rayft.sweep.warm`).
    """
    from ray import tune

    from rayft.sweep.space import apply_sample
    from rayft.train.run import make_trainer

    cfg = apply_sample(setup.base, sample)
    worker_env = None
    if setup.warm:
        from rayft.sweep.warm import warm_env

        worker_env = warm_env(cfg, setup.model_type, setup.warm)
    trial_id = tune.get_context().get_trial_id()
    run_name = trial_id if start is None else f"{trial_id}-{time.time_ns() // 1_000_000}"
    return make_trainer(cfg, setup.data, run_name=run_name, storage_path=setup.storage, callbacks=callbacks,
                        label=trial_id, worker_cpus=setup.worker_cpus, trial_started_at=started_at,
                        start_checkpoint=start, storage_filesystem=setup.storage_filesystem,
                        clean_up_placement_groups=False, autoscaling=not setup.private,
                        worker_env=worker_env)
