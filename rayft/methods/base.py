"""The Method protocol and its registry: one module per fine-tuning method registers itself here."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from pydantic import BaseModel, ConfigDict

from rayft.registry import Registry


class MethodParams(BaseModel):
    """Base of each method's own parameter schema (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")


class Method(Protocol):
    """A fine-tuning method: which parameters train and how the result is saved and served."""

    name: str
    params: type[MethodParams]
    is_peft: bool  # result is a peft adapter (saved with save_pretrained, loaded by PeftModel)
    hot_swappable: bool  # the server can swap it per request on a shared base model

    def apply(self, model: torch.nn.Module, params: Any, task_type: str) -> torch.nn.Module:
        """Return the model prepared for training (frozen/wrapped as the method requires)."""


METHODS: Registry[Method] = Registry("method")


def register_method(method: Method) -> Method:
    """Register a method instance under its ``name``."""
    return METHODS.register(method.name, method)


def get_method(name: str) -> Method:
    """Look up a method by name.

    Raises:
        UnknownNameError: listing the registered methods.
    """
    return METHODS.get(name)


def trainable_summary(model: torch.nn.Module) -> dict[str, float]:
    """Trainable and total parameter counts and the trainable percentage."""
    total = trainable = 0
    for p in model.parameters():
        n = p.ds_numel if hasattr(p, "ds_numel") else p.numel()  # ZeRO-3 partitions report 0 locally
        total += n
        trainable += n if p.requires_grad else 0
    return {"trainable_params": trainable, "total_params": total,
            "trainable_pct": round(100.0 * trainable / max(total, 1), 4)}
