"""Rows of different LoRA adapters in one forward, with two batched matmuls per layer (Punica's BGMV, in torch).

peft's mixed batch (``adapter_names``) loops over the adapters present in every LoRA layer: a sub-batch per adapter,
two small matmuls each, then an index-add, so a decode step slows down with every adapter in the batch. Here each
LoRA layer instead gets one (A, B) pair per row, gathered from the stacked weights of the adapters in the batch
(zeros for rows of the bare base, or of an adapter without this layer; ranks padded with zeros), and adds
``(x @ A[row]) @ B[row]`` to the base layer's output: two ``bmm`` whatever the number of adapters. On one decode
step of smollm2-135m with 16 rows over 8 rank-8 adapters this is 1.6x faster than peft's mixed batch and within 3% of
all rows on one adapter (``benchmarks/lora_batching.py``, docs/benchmarks.md). No library does this for peft models
on CPU or without custom kernels, hence this module.

Only plain LoRA on ``nn.Linear`` layers qualifies (no DoRA, no LoRA bias, no ``fan_in_fan_out``, no embedding or
convolution LoRA); anything else runs through peft's ``adapter_names`` (see :meth:`GatheredLora.supports`).
Each layer's adapters are stacked once; a new batch composition (a sequence joined or left) costs one
``index_select`` per layer, and the result is kept for the next steps. :meth:`GatheredLora.invalidate` drops both
when adapters are loaded, refilled or deleted.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

CACHED_COMPOSITIONS = 4  # a decode batch changes composition only when a sequence joins or leaves


class GatheredLora:
    """The LoRA layers of one ``PeftModel`` and their per-row weights for recent batch compositions."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.invalidate()

    def invalidate(self) -> None:
        """Forget the stacked and gathered weights and the layer list (adapters were loaded, refilled or deleted)."""
        self._layers = None
        self._stacks: list[_Stack] | None = None
        self._weights = {}

    @property
    def layers(self) -> list[Any]:
        if self._layers is None:
            from peft.tuners.lora import LoraLayer

            self._layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        return self._layers

    def supports(self, adapters: set[str]) -> bool:
        """Whether every LoRA layer can run ``adapters`` gathered (else peft's mixed batch must)."""
        from peft.tuners.lora import Linear

        configs = self.model.peft_config
        if any(configs[a].use_dora or getattr(configs[a], "lora_bias", False) for a in adapters):
            return False
        return all(type(layer) is Linear and not layer.fan_in_fan_out for layer in self.layers)

    @contextmanager
    def rows(self, names: list[str | None]) -> Iterator[None]:
        """Within the block, every LoRA layer adds row ``i``'s adapter ``names[i]`` (None: none) to its output."""
        key = tuple(names)
        weights = self._weights.get(key)
        if weights is None:  # a new composition: one index_select per layer from the stacks
            if getattr(self, "_stacks", None) is None:
                self._stacks = [_Stack(layer) for layer in self.layers]
            weights = [stack.gather(names) for stack in self._stacks]
            if len(self._weights) >= CACHED_COMPOSITIONS:
                self._weights.pop(next(iter(self._weights)))
            self._weights[key] = weights
        patched = []
        try:
            for layer, pair in zip(self.layers, weights):
                layer.forward = _forward(layer, pair)
                patched.append(layer)
            yield
        finally:
            for layer in patched:
                del layer.forward  # back to the class's forward


class _Stack:
    """Every adapter's A and B of one layer, stacked once: ``[adapters + 1, in, r]`` and ``[adapters + 1, r, out]``
    (slot 0 is zeros: no adapter; ranks padded with zeros; scaling folded into B)."""

    def __init__(self, layer: Any) -> None:
        self.slots = {name: i for i, name in enumerate(layer.lora_A, start=1)}
        self.a = self.b = None
        if not self.slots:
            return
        rank = max(layer.lora_A[n].weight.shape[0] for n in self.slots)
        first = next(iter(layer.lora_A.values())).weight
        self.a = first.new_zeros(len(self.slots) + 1, layer.in_features, rank)
        self.b = first.new_zeros(len(self.slots) + 1, rank, layer.out_features)
        for name, slot in self.slots.items():
            r = layer.lora_A[name].weight.shape[0]
            self.a[slot, :, :r] = layer.lora_A[name].weight.T
            self.b[slot, :r, :] = layer.lora_B[name].weight.T * layer.scaling[name]

    def gather(self, names: list[str | None]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per row ``(A, B)``, or None when no row's adapter has this layer."""
        index = [self.slots.get(n, 0) if n is not None else 0 for n in names]
        if not any(index):
            return None
        at = torch.tensor(index, device=self.a.device)
        return self.a.index_select(0, at), self.b.index_select(0, at)


def _forward(layer: Any, pair: tuple[torch.Tensor, torch.Tensor] | None):
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = layer.base_layer(x, *args, **kwargs)
        if pair is None:
            return out
        a, b = pair
        return out + torch.bmm(torch.bmm(x.to(a.dtype), a), b).to(out.dtype)
    return forward
