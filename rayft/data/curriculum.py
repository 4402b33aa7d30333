"""Curriculum learning (``train.curriculum``): easy examples first.

Difficulty is computed once per run — tokens per example (``by: length``), a numeric data column (``by: column``,
carried through tokenizing by :func:`attach_column`), or the base model's loss on each example (``by: loss``,
computed in every worker by :func:`loss_difficulty` before the engine starts; every rank computes the same numbers).

Pacing follows competence-based curricula (Platanios et al., 2019): at training progress ``t`` (0 at the first
batch, 1 once ``until`` of the run has passed) each global batch is drawn from the easiest ``c(t)`` of the split:

- ``linear``: ``c = s + (1 - s) t``
- ``root``:   ``c = sqrt(s² + (1 - s²) t)`` (the pool grows fast at first, then slowly)
- ``step``:   ``c = s + (1 - s) floor(t · steps) / steps`` (capped at 1)

with ``s = start_fraction``. Within an epoch a row is not drawn twice while its pool still holds undrawn rows, so an
epoch after ``until`` is a plain seeded permutation. :class:`CurriculumSampler` replaces torch's
``DistributedSampler`` for the training split: the same number of rows per rank and epoch (so the step count does
not change), the global order a pure function of (seed, epoch), every rank taking its slice of each global batch —
hence identical on every worker, in every epoch and after a resume, where the loop skips the batches its
``LoopState`` says were trained (:mod:`rayft.train.handoff`).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
from torch.utils.data import Sampler

from rayft.config.schema import CurriculumConfig, ExperimentConfig
from rayft.errors import DataError

DIFFICULTY = "difficulty"  # the split column that carries ``by: column`` values through tokenizing


def competence(pacing: str, start: float, t: float, steps: int = 4) -> float:
    """The fraction of the split (easiest first) batches are drawn from at progress ``t`` in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    if pacing == "linear":
        c = start + (1 - start) * t
    elif pacing == "root":
        c = math.sqrt(start**2 + (1 - start**2) * t)
    elif pacing == "step":
        c = start + (1 - start) * math.floor(t * steps) / steps
    else:
        raise ValueError(f"unknown pacing {pacing!r}: expected linear, root or step")
    return min(1.0, c)


def attach_column(cfg: ExperimentConfig, frames: dict[str, Any], tokenized: dict[str, dict[str, list[Any]]]) -> None:
    """Copy ``train.curriculum.column`` of each split's frame into its tokenized columns (``by: column`` only).

    Raises:
        DataError: if the column is missing, not numeric, or the task dropped rows while tokenizing.
    """
    spec = cfg.train.curriculum
    if spec is None or spec.by != "column":
        return
    for name, part in tokenized.items():
        frame = frames[name]
        field = "train.curriculum.column"
        if spec.column not in frame.columns:
            raise DataError(f"{field} {spec.column!r}: no such column; the data has: {', '.join(map(str, frame.columns))}",
                            field=field, value=spec.column)
        values = frame[spec.column]
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError):
            raise DataError(f"{field} {spec.column!r}: expected numbers (difficulty), got e.g. {values.iloc[0]!r}",
                            field=field, value=spec.column) from None
        if len(numbers) != len(part["input_ids"]):
            raise DataError(f"{field}: task {cfg.task.name!r} dropped rows while tokenizing; use by: length or loss",
                            field=field, value=spec.column)
        part[DIFFICULTY] = numbers


def length_difficulty(columns: dict[str, list[Any]]) -> np.ndarray:
    """Tokens per example."""
    return np.asarray([len(ids) for ids in columns["input_ids"]], dtype=np.float64)


def loss_difficulty(model: Any, columns: dict[str, list[Any]], collate: Any, pad_id: int,
                    batch_size: int = 32) -> np.ndarray:
    """The model's loss on each example (eval mode, no gradients), from the model's own per-batch loss on batches
    of one, so any task with labels works."""
    import torch

    from rayft.data.collate import Columnar

    rows = Columnar(columns)
    out = np.zeros(len(rows), dtype=np.float64)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(len(rows)):
            batch = collate([rows[i]], pad_id)
            out[i] = float(model(**{k: v for k, v in batch.items() if k != "index"}).loss)
    model.train(was_training)
    return out


def difficulty(spec: CurriculumConfig, columns: dict[str, list[Any]], loss: Any = None) -> np.ndarray:
    """One number per training row, larger = harder (``loss``: a callable giving the per-example losses)."""
    if spec.by == "length":
        return length_difficulty(columns)
    if spec.by == "column":
        return np.asarray(columns[DIFFICULTY], dtype=np.float64)
    if loss is None:
        raise ValueError("curriculum by loss needs the model's per-example losses")
    return np.asarray(loss(), dtype=np.float64)


class CurriculumSampler(Sampler[int]):
    """This rank's training rows for an epoch, easiest first by the pacing (see the module's docstring).

    ``planned_epochs``: the run's length in epochs (fractional), which the pacing spans (times ``until``).
    """

    def __init__(self, scores: np.ndarray, spec: CurriculumConfig, *, rank: int, world: int, batch_size: int,
                 seed: int, planned_epochs: float) -> None:
        self.n, self.spec, self.rank, self.world, self.batch_size = len(scores), spec, rank, world, batch_size
        self.seed, self.planned = seed, max(planned_epochs, 1e-9)
        tie = np.random.default_rng(seed).permutation(self.n)  # seeded order among equally difficult rows
        self.order = np.lexsort((tie, np.asarray(scores)))  # easiest first
        self.per_rank = math.ceil(self.n / world)
        self.batches = math.ceil(self.per_rank / batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def pool_size(self, epoch: int, batch: int) -> int:
        """How many of the easiest rows global batch ``batch`` of ``epoch`` is drawn from."""
        t = (epoch + batch / self.batches) / (self.planned * self.spec.until)
        c = competence(self.spec.pacing, self.spec.start_fraction, t, self.spec.steps)
        return min(self.n, max(math.ceil(c * self.n), self.world * self.batch_size))

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """Every global batch of ``epoch`` (rank r takes the r-th slice of each): a function of (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        drawn = np.zeros(self.n, dtype=bool)
        out = []
        for b in range(self.batches):
            size = min(self.batch_size, self.per_rank - b * self.batch_size) * self.world
            pool = self.order[: self.pool_size(epoch, b)]
            fresh = pool[~drawn[pool]]
            if len(fresh) >= size:
                pick = rng.choice(fresh, size=size, replace=False)
            else:  # the pool is used up this epoch: its rows come again, the undrawn ones first
                again = rng.choice(pool, size=size - len(fresh), replace=len(pool) < size - len(fresh))
                pick = np.concatenate([rng.permutation(fresh), again])
            drawn[pick] = True
            out.append(pick)
        return out

    def __iter__(self) -> Iterator[int]:
        for pick in self.global_batches(self.epoch):
            share = len(pick) // self.world
            yield from (int(i) for i in pick[self.rank * share:(self.rank + 1) * share])


def planned_epochs(cfg: ExperimentConfig, batches: int, updates: int = 1) -> float:
    """The run's length in epochs of ``batches`` batches (``train.max_steps`` or ``train.epochs``)."""
    from rayft.train.steps import steps_per_epoch

    if cfg.train.max_steps:
        return cfg.train.max_steps / steps_per_epoch(cfg, batches, updates)
    return cfg.train.epochs


def curriculum_sampler(cfg: ExperimentConfig, columns: dict[str, list[Any]], rank: int, world: int,
                       loss: Any = None, updates: int = 1) -> CurriculumSampler:
    """The training sampler of ``cfg``'s curriculum over ``columns`` (``loss``: see :func:`difficulty`)."""
    from rayft.train.steps import batches_per_epoch

    spec = cfg.train.curriculum
    scores = difficulty(spec, columns, loss)
    epochs = planned_epochs(cfg, batches_per_epoch(cfg, len(scores)), updates)
    return CurriculumSampler(scores, spec, rank=rank, world=world, batch_size=cfg.train.batch_size,
                             seed=cfg.train.seed, planned_epochs=epochs)
