"""The function Ray Train ships to its controller and workers, kept free of heavy imports.

Ray pickles the training function by reference, so every process that unpickles it imports its module:
the Tune trial actor, the Ray Train controller and each worker. Only the workers train, so only they
import the training stack (transformers, peft, DeepSpeed) — the other two stay light and start faster.
"""

from __future__ import annotations

from typing import Any


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; see :func:`rayft.train.worker.train_loop_per_worker`."""
    import time

    entered_at = time.time()  # start-up timing: what follows is importing the training stack
    from rayft.train.worker import train_loop_per_worker as train

    train({**config, "entered_at": entered_at})
