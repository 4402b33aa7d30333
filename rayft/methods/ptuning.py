"""P-tuning through peft: virtual tokens produced by a small trainable encoder (MLP or LSTM) over embeddings."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from rayft.methods.base import Method, MethodContext, register_method
from rayft.methods.prompt import PromptLearningParams, reject_position_heads


class PTuningParams(PromptLearningParams):
    encoder: Literal["MLP", "LSTM"] = "MLP"
    encoder_hidden_size: int | None = Field(None, ge=1, description="default: the model's hidden size")
    encoder_num_layers: int = Field(2, ge=1, le=8)
    encoder_dropout: float = Field(0.0, ge=0, lt=1)


class PTuning(Method):
    name = "ptuning"
    params = PTuningParams
    is_peft = True
    hot_swappable = False
    artifact = "adapter"
    zero3 = True

    def apply(self, model: torch.nn.Module, params: PTuningParams, task_type: str) -> torch.nn.Module:
        from peft import PromptEncoderConfig, TaskType, get_peft_model

        config = PromptEncoderConfig(
            task_type=TaskType[task_type], num_virtual_tokens=params.num_virtual_tokens,
            encoder_reparameterization_type=params.encoder,
            encoder_hidden_size=params.encoder_hidden_size or model.config.hidden_size,
            encoder_num_layers=params.encoder_num_layers, encoder_dropout=params.encoder_dropout,
        )
        return get_peft_model(model, config)

    def check(self, params: PTuningParams, ctx: MethodContext) -> list[tuple[str, Any, str]]:
        return reject_position_heads(self.name, ctx)


METHOD = register_method(PTuning())
