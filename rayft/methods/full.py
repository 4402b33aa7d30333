"""Full fine-tuning: every parameter trains; the result is a complete HF model folder."""

from __future__ import annotations

import torch

from rayft.methods.base import MethodParams, register_method


class FullParams(MethodParams):
    pass


class Full:
    name = "full"
    params = FullParams
    is_peft = False
    hot_swappable = False

    def apply(self, model: torch.nn.Module, params: FullParams, task_type: str) -> torch.nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model


METHOD = register_method(Full())
