"""Ray Tune's W&B callback, quiet when the interpreter exits.

Ray's ``WandbLoggerCallback.__del__`` asks ``ray.is_initialized()``; when the callback is collected while the
interpreter shuts down, the ``ray`` module global is already ``None`` and Python prints an "Exception ignored
in ... __del__" traceback after a sweep that finished cleanly. By then ``on_experiment_end`` has finished every
trial's run and stopped the logging actors, so there is nothing left to clean up.
"""

from __future__ import annotations

import sys

from ray.air.integrations.wandb import WandbLoggerCallback


class WandbCallback(WandbLoggerCallback):
    """``WandbLoggerCallback`` whose clean-up is skipped during interpreter shutdown."""

    def __del__(self, _finalizing=sys.is_finalizing) -> None:  # bound now: module globals may be gone by then
        if _finalizing():
            return
        super().__del__()
