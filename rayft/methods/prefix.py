"""Prefix tuning through peft: learned key/value prefixes in every attention layer (token positions unchanged)."""

from __future__ import annotations

import torch
from pydantic import Field

from rayft.methods.base import Method, register_method
from rayft.methods.prompt import PromptLearningParams


class PrefixParams(PromptLearningParams):
    projection: bool = Field(False, description="reparameterize the prefix through a 2-layer MLP (more stable)")
    encoder_hidden_size: int | None = Field(None, ge=1, description="with projection: MLP width; default hidden size")


class Prefix(Method):
    name = "prefix"
    params = PrefixParams
    is_peft = True
    hot_swappable = False
    artifact = "adapter"
    zero3 = True

    def apply(self, model: torch.nn.Module, params: PrefixParams, task_type: str) -> torch.nn.Module:
        from peft import PrefixTuningConfig, TaskType, get_peft_model

        config = PrefixTuningConfig(
            task_type=TaskType[task_type], num_virtual_tokens=params.num_virtual_tokens,
            prefix_projection=params.projection,
            encoder_hidden_size=params.encoder_hidden_size or model.config.hidden_size,
        )
        return get_peft_model(model, config)


METHOD = register_method(Prefix())
