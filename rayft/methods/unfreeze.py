"""Gradual unfreezing (ULMFiT style): the head trains from the start, then one more block from the top every
``every`` epochs or steps, down to the embeddings.

Every parameter is handed to the optimizer at the start (DeepSpeed partitions optimizer state once); a block that is
still frozen has learning rate 0 in its parameter group, so it neither moves nor decays. The schedule is a pure
function of the step, so a resumed run unfreezes exactly as an uninterrupted one. Combines with layer-wise
learning-rate decay and a separate head learning rate.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from pydantic import Field

from rayft.methods.base import Method, register_method
from rayft.methods.layers import LayerLrParams, depth, is_head, num_blocks


class UnfreezeParams(LayerLrParams):
    every: int = Field(1, ge=1, description="epochs (or steps) between unfreezing one more block")
    unit: Literal["epoch", "step"] = "epoch"
    start_blocks: int = Field(0, ge=0, description="blocks below the head that train from the start")


def unfrozen_blocks(params: UnfreezeParams, step: int, steps_per_epoch: int) -> int:
    """How many blocks (counted from the top) train at optimizer step ``step`` (0-based)."""
    elapsed = step if params.unit == "step" else step // max(1, steps_per_epoch)
    return params.start_blocks + elapsed // params.every


def gate(params: UnfreezeParams, blocks: int, steps_per_epoch: int) -> Callable[[int, int], float]:
    """``gate(depth, step)`` → 1.0 where a parameter group at ``depth`` trains at ``step``, else 0.0.

    Depths: 0 embeddings, ``i + 1`` block ``i``, ``blocks + 1`` the top (final norm, pooler) and the head.
    """
    def fn(group_depth: int, step: int) -> float:
        return 1.0 if group_depth >= blocks + 1 - unfrozen_blocks(params, step, steps_per_epoch) else 0.0

    return fn


class Unfreeze(Method):
    name = "unfreeze"
    params = UnfreezeParams
    is_peft = False
    hot_swappable = False
    artifact = "full"
    zero3 = True

    def apply(self, model: torch.nn.Module, params: UnfreezeParams, task_type: str) -> torch.nn.Module:
        if num_blocks(model) == 0:
            raise ValueError(f"{type(model).__name__}: no transformer blocks found to unfreeze")
        for p in model.parameters():
            p.requires_grad_(True)  # all in the optimizer; the lr gate decides what moves
        return model

    def lr_gate(self, params: UnfreezeParams, blocks: int, steps_per_epoch: int) -> Callable[[int, int], float]:
        return gate(params, blocks, steps_per_epoch)

    def trainable_at_start(self, model: torch.nn.Module, params: UnfreezeParams) -> set[str]:
        blocks = num_blocks(model)
        live = gate(params, blocks, 1)
        return {n for n, _ in model.named_parameters() if is_head(model, n) or live(depth(model, n, blocks), 0)}


METHOD = register_method(Unfreeze())
