"""Multi-task batches (``tasks:``): every batch from one task, the task drawn by the mixing weights.

torch and datasets sample rows, not tasks, so this sampler is written here. It yields row indices in runs of
exactly ``batch_size`` rows of one task, so the loader's batches never mix tasks (a task's last batch wraps around
to its first rows). Each task's rows are shuffled per epoch and split over the ranks as ``DistributedSampler`` does
(padded to an equal share); every rank draws the same sequence of tasks (one seeded generator), so under ZeRO-3
every rank runs the same head at the same step. A training epoch is as many batches as one pass over every task
takes; a task drawn more often than its share starts its next pass (reshuffled) within the epoch. Evaluation goes
through each task's rows in order, once.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch


def mix_probabilities(sizes: list[int], temperature: float = 1.0, weights: list[float] | None = None) -> list[float]:
    """Per task: ∝ ``weights`` when given, else ∝ ``size^(1/temperature)`` (1: proportional, large: uniform)."""
    raw = list(weights) if weights is not None else [n ** (1.0 / temperature) if n else 0.0 for n in sizes]
    total = sum(raw)
    if total <= 0:
        raise ValueError(f"no task can be drawn: sizes {sizes}, weights {weights}")
    return [w / total for w in raw]


class TaskMixSampler(torch.utils.data.Sampler[int]):
    """Row indices for one rank, in single-task runs of ``batch_size``.

    Args:
        groups: each task's row indices in the split.
        probs: each task's drawing probability (training; ignored for evaluation).
        batch_size: rows per batch.
        rank, world: this rank and the number of ranks.
        seed: shuffles and task draws (the same on every rank).
        train: draw tasks by ``probs`` from shuffled rows; else every task's rows in order, once.
    """

    def __init__(self, groups: list[list[int]], probs: list[float], batch_size: int, rank: int, world: int,
                 seed: int, *, train: bool) -> None:
        self.groups, self.probs, self.batch_size = groups, probs, batch_size
        self.rank, self.world, self.seed, self.train = rank, world, seed, train
        self.epoch = 0
        self.shares = [math.ceil(len(g) / world) if g else 0 for g in groups]  # rows per rank, per task
        self.batches = [math.ceil(s / batch_size) for s in self.shares]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.batches) * self.batch_size

    def _share(self, task: int, cycle: int) -> list[int]:
        """This rank's rows of ``task`` for one pass over it, padded to whole batches by wrapping around."""
        rows = self.groups[task]
        if self.train:
            g = torch.Generator().manual_seed(_seed(self.seed, self.epoch, task + 1, cycle))
            rows = [rows[i] for i in torch.randperm(len(rows), generator=g).tolist()]
        padded = rows + rows * math.ceil((self.shares[task] * self.world - len(rows)) / max(len(rows), 1))
        mine = padded[: self.shares[task] * self.world][self.rank::self.world]
        want = self.batches[task] * self.batch_size
        return (mine * math.ceil(want / max(len(mine), 1)))[:want]

    def order(self) -> list[int]:
        """The task of each batch of this epoch."""
        if not self.train:
            return [t for t, n in enumerate(self.batches) for _ in range(n)]
        g = torch.Generator().manual_seed(_seed(self.seed, self.epoch, 0, 0))
        usable = torch.tensor([p if n else 0.0 for p, n in zip(self.probs, self.batches)], dtype=torch.double)
        return torch.multinomial(usable, sum(self.batches), replacement=True, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        cycles = [0] * len(self.groups)
        pending: list[list[int]] = [[] for _ in self.groups]
        for task in self.order():
            if not pending[task]:
                pending[task] = self._share(task, cycles[task])
                cycles[task] += 1
            batch, pending[task] = pending[task][: self.batch_size], pending[task][self.batch_size:]
            yield from batch


def _seed(*parts: int) -> int:
    """One generator seed from several numbers, the same in every process (``hash`` of a str is not)."""
    out = 0
    for part in parts:
        out = (out * 1_000_003 + part) % (2**61 - 1)
    return out
