"""Row surgery on transformers' ``DynamicCache``: the padded batch cache of one group of running sequences.

A group's cache holds one row per running sequence, left-padded to the longest row; a 0/1 mask of the same width
says which positions are real. A sequence joins by padding the shorter side on the left and concatenating rows;
finished rows are dropped with ``index_select`` and the columns that became padding in every row are cut off.
Only full-attention layers are supported: a sliding-window layer keeps the last N positions, padding included.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class BatchCache:
    """A ``DynamicCache`` plus its ``[rows, width]`` mask of real (1) and padding (0) positions."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        for layer in cache.layers:
            if type(layer) is not DynamicLayer:
                raise ValueError(f"the decode engine needs full-attention cache layers, not {type(layer).__name__}")
        self.cache, self.mask = cache, mask

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def step_mask(self, new: int) -> torch.Tensor:
        """The attention mask of a forward that appends ``new`` real positions to every row (and keeps it)."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, new)], dim=1)
        return self.mask

    def repeat(self, times: int) -> BatchCache:
        """A copy with every row repeated ``times`` (the choices of one prompt)."""
        return BatchCache(_map(self.cache, lambda t: t.repeat_interleave(times, dim=0)),
                          self.mask.repeat_interleave(times, dim=0))

    def extend(self, other: BatchCache) -> None:
        """Appends ``other``'s rows, left-padding whichever side is narrower."""
        width = max(self.width, other.width)
        mine, theirs = _pad_left(self.cache, width - self.width), _pad_left(other.cache, width - other.width)
        for a, b in zip(mine.layers, theirs.layers):
            a.keys, a.values = torch.cat([a.keys, b.keys]), torch.cat([a.values, b.values])
        self.cache = mine
        self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(other.mask, width)])

    def keep(self, rows: list[int]) -> None:
        """Keeps only ``rows`` (in that order) and cuts the leading columns that are padding in all of them."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        real = mask.any(dim=0).nonzero()
        start = int(real[0]) if len(real) else mask.shape[1]
        self.mask = mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]


def _map(cache: DynamicCache, fn) -> DynamicCache:
    return DynamicCache(ddp_cache_data=[(fn(layer.keys), fn(layer.values)) for layer in cache.layers])


def _pad_left(cache: DynamicCache, n: int) -> DynamicCache:
    if n == 0:
        return cache
    return _map(cache, lambda t: torch.nn.functional.pad(t, (0, 0, n, 0)))


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (width - mask.shape[1], 0))
