"""Where a parameter sits in a transformer: embeddings, which block, or the task head.

Layer-wise learning-rate decay, gradual unfreezing and BitFit need this for any HF architecture; the
blocks are found by the ``<prefix>.<layers>.<index>.`` pattern every HF model uses for its block list.
"""

from __future__ import annotations

import re
import torch
from pydantic import Field

from rayft.methods.base import MethodParams

BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
EMBEDDING = re.compile(r"(?:^|\.)(?:embeddings|embed_tokens|wte|wpe|word_embeddings|embed_positions)(?:\.|$)")


class LayerLrParams(MethodParams):
    """Learning-rate options for methods that train the backbone's own weights."""

    layer_decay: float = Field(1.0, gt=0, le=1.0, description="lr of block i = lr * decay^(blocks - i); 1 = off")
    head_lr: float | None = Field(None, gt=0, le=1.0, description="learning rate of the task head; default train.lr")


def num_blocks(model: torch.nn.Module) -> int:
    """How many transformer blocks the model has (0 when none are found)."""
    found = {int(m.group(1)) for n, _ in model.named_parameters() if (m := BLOCK.search(n))}
    return max(found) + 1 if found else 0


def is_head(model: torch.nn.Module, name: str) -> bool:
    """True for task-head parameters of a transformers model (not a peft wrapper): those outside its backbone
    (``base_model_prefix``).

    A bare backbone (no head) has none.
    """
    prefix = getattr(model, "base_model_prefix", "") or ""
    if not prefix or not hasattr(model, prefix):
        return False
    return not name.startswith((prefix + ".", "bottleneck_adapters."))


def depth(model: torch.nn.Module, name: str, blocks: int) -> int:
    """0 for embeddings, ``i + 1`` for block ``i``, ``blocks + 1`` for the rest (final norm, pooler, head)."""
    match = BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    return 0 if EMBEDDING.search(name) else blocks + 1
