"""Full fine-tuning: every parameter trains; the result is a complete HF model folder.

Options: layer-wise learning-rate decay (``layer_decay``) and a separate head learning rate (``head_lr``).
"""

from __future__ import annotations

import torch

from rayft.methods.base import Method, register_method
from rayft.methods.layers import LayerLrParams


class FullParams(LayerLrParams):
    pass


class Full(Method):
    name = "full"
    params = FullParams
    is_peft = False
    hot_swappable = False
    artifact = "full"
    zero3 = True

    def apply(self, model: torch.nn.Module, params: FullParams, task_type: str) -> torch.nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model


METHOD = register_method(Full())
