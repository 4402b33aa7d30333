"""(IA)^3 through peft: learned rescaling vectors on keys, values and the feed-forward; the head trains in full."""

from __future__ import annotations

from typing import Literal

import torch

from rayft.methods.base import Method, MethodParams, register_method


class Ia3Params(MethodParams):
    target_modules: list[str] | Literal["all-linear"] | None = None  # None: peft's default per architecture
    feedforward_modules: list[str] | None = None  # must be a subset of target_modules when given


class Ia3(Method):
    name = "ia3"
    params = Ia3Params
    is_peft = True
    hot_swappable = False  # a different tuner type than LoRA: served on its own copy of the base
    artifact = "adapter"
    zero3 = True

    def apply(self, model: torch.nn.Module, params: Ia3Params, task_type: str) -> torch.nn.Module:
        from peft import IA3Config, TaskType, get_peft_model

        config = IA3Config(task_type=TaskType[task_type], target_modules=params.target_modules,
                           feedforward_modules=params.feedforward_modules)
        return get_peft_model(model, config)

    def check(self, params: Ia3Params, ctx) -> list[tuple[str, object, str]]:
        ff, targets = params.feedforward_modules, params.target_modules
        if ff is not None and isinstance(targets, list) and not set(ff) <= set(targets):
            return [("method.feedforward_modules", ff, f"a subset of method.target_modules {targets}")]
        if ff is not None and targets is None:
            return [("method.feedforward_modules", ff, "method.target_modules set as well (peft needs both)")]
        return []


METHOD = register_method(Ia3())
