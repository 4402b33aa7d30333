"""How many optimizer steps a run takes: one definition for the workers, the engine's schedule and the sweep.

Plain arithmetic on the config (no torch), so the sweep's driver can size ASHA's rungs with it.
"""

from __future__ import annotations

import math

from rayft.config.schema import ExperimentConfig


def batches_per_epoch(cfg: ExperimentConfig, train_rows: int) -> int:
    """Batches one worker trains on per epoch: its share of the rows (padded to equal shares, as torch's
    ``DistributedSampler`` does), in batches of ``train.batch_size`` (the last one may be short)."""
    per_rank = math.ceil(train_rows / cfg.scaling.num_workers)
    return math.ceil(per_rank / cfg.train.batch_size)


def steps_per_epoch(cfg: ExperimentConfig, batches: int, updates: int = 1) -> int:
    """Optimizer steps in an epoch of ``batches`` batches, each giving ``updates`` losses (PPO's epochs ×
    minibatches, else 1): one per ``train.grad_accum`` losses, a partial accumulation at the end of the epoch
    included (at least 1)."""
    return max(1, math.ceil(batches * updates / cfg.train.grad_accum))


def total_steps(cfg: ExperimentConfig, batches: int, updates: int = 1) -> int:
    """Optimizer steps of the whole run with ``batches`` batches per epoch of ``updates`` losses each:
    ``train.max_steps`` if set, else ``train.epochs`` (possibly fractional) epochs, at least 1."""
    return cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch(cfg, batches, updates)))


def updates_per_batch(cfg: ExperimentConfig) -> int:
    """The losses each training batch gives under ``cfg``'s task (:meth:`rayft.tasks.Task.updates_per_batch`)."""
    from rayft.tasks import get_task, task_params

    task = get_task(cfg.task.name)
    return task.updates_per_batch(task_params(task, cfg))
