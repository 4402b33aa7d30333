"""Ray Tune's W&B callback, quiet when the interpreter exits.

Ray's ``WandbLoggerCallback.__del__`` asks ``ray.is_initialized()``; when the callback is collected while the
interpreter shuts down, the ``ray`` module global is already ``None`` and Python prints an "Exception ignored
in ... __del__" traceback after a sweep that finished cleanly. By then ``on_experiment_end`` has finished every
trial's run and stopped the logging actors, so there is nothing left to clean up.

Each trial's logging actor finishes its run and is then killed. W&B leaves the shutdown of its service process
to an ``atexit`` hook, which then sometimes finds the service already gone and prints a ``ConnectionResetError``
traceback among the sweep's output; the actor here shuts W&B down itself once the run is finished.
"""

from __future__ import annotations

import sys

from ray.air.integrations.wandb import WandbLoggerCallback

from rayft.ray_internals import RayWandbLoggingActor, use_wandb_logging_actor, wandb_module


class WandbLoggingActor(RayWandbLoggingActor):
    """Ray's per-trial logging actor that also shuts W&B's service down when the trial's run is finished."""

    def run(self) -> None:
        try:
            super().run()
        finally:
            wandb_module(self).teardown()  # waits for the service to exit; unregisters W&B's own atexit hook


class WandbCallback(WandbLoggerCallback):
    """``WandbLoggerCallback`` whose clean-up is skipped during interpreter shutdown, logging each trial with
    :class:`WandbLoggingActor`."""

    def __del__(self, _finalizing=sys.is_finalizing) -> None:  # bound now: module globals may be gone by then
        if _finalizing():
            return
        super().__del__()


use_wandb_logging_actor(WandbCallback, WandbLoggingActor)
