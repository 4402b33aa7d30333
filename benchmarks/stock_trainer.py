"""Ray's stock Train and Train-in-Tune path, the baseline that rayft's lean start-up is measured against.

:func:`stock_trainer` turns the trainer :func:`rayft.train.run.make_trainer` builds into Ray's ``TorchTrainer``
with the same loop config, scaling and run config: torch imported by the trial and the controller too
(``TorchConfig``), the training function itself shipped to the controller (so it imports the whole training
stack), Ray Train's default callbacks (dataset machinery, placement-group cleaner) and no quieted threads.
:func:`stock_sweep` runs a sweep whose trials train that way and report through Ray's ``TuneReportCallback`` (a
queue actor per trial) instead of the sweep's hub, with no warm worker pool.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any


def stock_trainer(lean: Any) -> Any:
    """Ray's ``TorchTrainer`` running what the rayft trainer ``lean`` runs."""
    from dataclasses import replace

    from ray.train.torch import TorchConfig, TorchTrainer

    from rayft.train.quiet import QuietRun
    from rayft.train.worker import train_loop_per_worker

    run_config = replace(lean.run_config, callbacks=[cb for cb in lean.run_config.callbacks or []
                                                     if not isinstance(cb, QuietRun)])
    backend = lean.backend_config
    return TorchTrainer(train_loop_per_worker, train_loop_config=lean.train_loop_config,
                        torch_config=TorchConfig(backend=backend.backend, timeout_s=backend.timeout_s),
                        scaling_config=lean.scaling_config, run_config=run_config)


def stock_trial(sample: dict[str, Any], setup: Any) -> None:
    """A sweep trial on Ray's stock path: the trial's Train run reports through ``TuneReportCallback``."""
    started_at = time.time()
    from ray.tune.integration.ray_train import TuneReportCallback

    from rayft.sweep.trial import trial_trainer

    lean = trial_trainer(sample, setup, callbacks=[TuneReportCallback()], started_at=started_at)
    stock_trainer(lean).fit()


@contextlib.contextmanager
def stock_sweep():
    """Inside the block, :func:`rayft.sweep.run_sweep` runs its trials with :func:`stock_trial` (pass it
    ``options=StartupOptions(warm_pool=False)``: stock trials start cold)."""
    import ray.cloudpickle

    from rayft.sweep import run as sweep_run

    if __name__ in sys.modules:  # Ray's processes cannot import this script's folder: the trial travels by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    lean_trial = sweep_run.rayft_trial
    sweep_run.rayft_trial = stock_trial
    try:
        yield
    finally:
        sweep_run.rayft_trial = lean_trial
