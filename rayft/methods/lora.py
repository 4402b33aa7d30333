"""LoRA through peft: low-rank updates on chosen linear layers; the task head trains in full."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from rayft.methods.base import Method, MethodParams, register_method


class LoraParams(MethodParams):
    r: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = None  # None: peft's default per architecture
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False


def lora_config(params: LoraParams, task_type: str, **extra):
    """The peft ``LoraConfig`` for these parameters (``extra`` lets variants such as DoRA add flags)."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType[task_type], r=params.r, lora_alpha=params.alpha, lora_dropout=params.dropout,
        target_modules=params.target_modules, bias=params.bias, use_rslora=params.use_rslora, **extra,
    )


class Lora(Method):
    name = "lora"
    params = LoraParams
    is_peft = True
    hot_swappable = True
    artifact = "adapter"
    zero3 = True

    def apply(self, model: torch.nn.Module, params: LoraParams, task_type: str) -> torch.nn.Module:
        from peft import get_peft_model

        return get_peft_model(model, lora_config(params, task_type))


METHOD = register_method(Lora())
