"""BitFit: only the bias terms (and the task head) train; the result is stored as a full model folder."""

from __future__ import annotations

import torch
from pydantic import Field

from rayft.methods.base import Method, MethodParams, register_method
from rayft.methods.layers import is_head


class BitFitParams(MethodParams):
    norms: bool = Field(False, description="also train the LayerNorm/RMSNorm weights")


class BitFit(Method):
    name = "bitfit"
    params = BitFitParams
    is_peft = False
    hot_swappable = False
    artifact = "full"
    zero3 = True

    def apply(self, model: torch.nn.Module, params: BitFitParams, task_type: str) -> torch.nn.Module:
        norm_types = (torch.nn.LayerNorm,) + tuple(
            type(m) for m in model.modules() if type(m).__name__.endswith(("RMSNorm", "LayerNorm")))
        norm_params = {id(p) for m in model.modules() if isinstance(m, norm_types) for p in m.parameters(False)}
        for name, p in model.named_parameters():
            trains = name.endswith(".bias") or is_head(model, name) or (params.norms and id(p) in norm_params)
            p.requires_grad_(trains)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"{type(model).__name__} has no bias terms or head to train with BitFit")
        return model


METHOD = register_method(BitFit())
