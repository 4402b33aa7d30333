"""A worker's Ray Data shard as the worker loop's data loader (``data.engine: ray``).

The loop reads a loader's length (batches per epoch), ``sampler.set_epoch``, ``len(sampler)`` (this rank's
rows) and ``dataset.columns``; :class:`ShardLoader` offers the same over ``ray.train.get_dataset_shard``, so the
loop is the same for both engines (:func:`rayft.train.engine.make_loader` picks one).

Ray Train splits each dataset with ``streaming_split(equal=True)``: every rank gets the same number of rows
(up to ``world - 1`` rows of a split are left out), so every rank runs the same number of steps. The length
before the first pass is planned from the split's row count; tasks that drop rows while tokenizing (a prompt that
fills ``model.max_length``) yield fewer, and after each full pass the length is what that pass yielded, so the
loop's epoch ends where the stream did.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterator

import numpy as np

from rayft.data.streaming import StreamedSplit
from rayft.train.recipe import Recipe

SHUFFLE_BATCHES = 16  # the local shuffle buffer of a training shard, in batches
INDEX_STRIDE = 1 << 40  # rank r numbers its rows from r * INDEX_STRIDE: unique over ranks for evaluation


class _Rows:
    """The loader's ``sampler``: this rank's rows, and the epoch (which seeds the local shuffle)."""

    def __init__(self, rows: int) -> None:
        self.rows, self.epoch = rows, 0

    def __len__(self) -> int:
        return self.rows

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class _NoColumns:
    columns: dict[str, list[Any]] = {}  # the split's raw columns stay in the stream (tasks needing them don't stream)


class ShardLoader:
    """This rank's shard of a streamed split, in batches collated by the task's collator.

    Raises:
        RuntimeError: if the trainer was given no Ray Dataset of that name.
    """

    def __init__(self, split: StreamedSplit, recipe: Recipe, pad_id: int, rank: int, world: int,
                 *, train: bool) -> None:
        import ray.train

        self.shard = ray.train.get_dataset_shard(split.name)
        if self.shard is None:
            raise RuntimeError(f"data.engine ray: no Ray Dataset {split.name!r} was given to this run's trainer")
        cfg = recipe.cfg
        self.train, self.seed, self.rank = train, cfg.train.seed, rank
        self.batch_size = cfg.train.batch_size if train else cfg.train.eval_batch_size
        self.sampler, self.dataset = _Rows(split.rows // world), _NoColumns()
        self._batches = max(1, math.ceil(self.sampler.rows / self.batch_size))
        self._collate, self._pad_id = recipe.task.collate, pad_id

    def __len__(self) -> int:
        return self._batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        numbers = itertools.count(self.rank * INDEX_STRIDE)  # next() on a count is atomic: safe in Ray's threads

        def collate(batch: dict[str, np.ndarray]) -> dict[str, Any]:
            names = list(batch)
            rows = [{name: _plain(batch[name][i]) for name in names} for i in range(len(batch[names[0]]))]
            for row in rows:
                row["index"] = next(numbers)
            return self._collate(rows, self._pad_id)

        shuffle = {"local_shuffle_buffer_size": SHUFFLE_BATCHES * self.batch_size,
                   "local_shuffle_seed": self.seed + self.sampler.epoch} if self.train else {}
        done = 0
        for batch in self.shard.iter_torch_batches(batch_size=self.batch_size, collate_fn=collate, device="cpu",
                                                   **shuffle):
            done += 1
            yield batch
        self._batches = max(1, done)


def _plain(value: Any) -> Any:
    """A value of a numpy batch as the collators take it: sequences as lists, scalars as Python numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if isinstance(value, np.generic) else value
