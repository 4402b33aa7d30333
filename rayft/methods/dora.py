"""DoRA through peft (``use_dora``): LoRA with a learned magnitude per output feature. Hot-swappable like LoRA."""

from __future__ import annotations

import torch

from rayft.methods.base import Method, register_method
from rayft.methods.lora import LoraParams, lora_config


class DoraParams(LoraParams):
    pass


class Dora(Method):
    name = "dora"
    params = DoraParams
    is_peft = True
    hot_swappable = True
    artifact = "adapter"
    zero3 = True

    def apply(self, model: torch.nn.Module, params: DoraParams, task_type: str) -> torch.nn.Module:
        from peft import get_peft_model

        return get_peft_model(model, lora_config(params, task_type, use_dora=True))


METHOD = register_method(Dora())
