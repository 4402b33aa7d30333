"""The function Ray Train ships to its controller and workers, kept free of heavy imports.

Ray pickles the training function by reference, so every process that unpickles it imports its module:
the Tune trial actor, the Ray Train controller and each worker. Only the workers train, so only they
import the training stack (transformers, peft, DeepSpeed) — the other two stay light and start faster.
"""

from __future__ import annotations

import sys
from typing import Any

# Methods whose workers use bitsandbytes (those with ``quantized = True``; a unit test keeps the two in step).
# This module cannot ask the method registry: importing it imports peft.
QUANTIZED_METHODS = frozenset({"qlora"})


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (``config``: a :class:`~rayft.train.handoff.LoopConfig`'s dict); see
    :func:`rayft.train.worker.train_loop_per_worker`."""
    import time
    from dataclasses import replace

    from rayft.train.handoff import LoopConfig

    entered_at = time.time()  # start-up timing: what follows is importing the training stack
    from rayft.exits import exit_without_finalizing

    exit_without_finalizing()  # a worker stopped mid-step (ASHA, PBT, cancel) leaves without a crash dump
    loop = LoopConfig.parse(config)
    skip_unused_imports(loop.method)
    from rayft.train.worker import train_loop_per_worker as train

    train(replace(loop, entered_at=entered_at))


def skip_unused_imports(method: str) -> None:
    """Keep bitsandbytes out of workers whose method does not quantize.

    peft and transformers import it whenever it is installed (time in every worker's start-up, and a warning
    about missing kernels). A ``None`` entry in ``sys.modules`` makes both treat it as
    not installed: ``import`` raises ImportError and ``importlib.util.find_spec`` returns None.
    """
    if method not in QUANTIZED_METHODS:
        keep_out_bitsandbytes()


def keep_out_bitsandbytes() -> None:
    """Make this process treat bitsandbytes as not installed (unless it was imported already)."""
    if "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]
