"""Soft prompt tuning through peft: learned virtual-token embeddings prepended to the input.

Also home of what the three prompt-learning methods (``prompt``, ``ptuning``, ``prefix``) share.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from rayft.methods.base import Method, MethodContext, MethodParams, register_method

SHIFTING_TASK_TYPES = ("TOKEN_CLS", "QUESTION_ANS")  # heads that label token positions


class PromptLearningParams(MethodParams):
    num_virtual_tokens: int = Field(20, ge=1, le=512)


def reject_position_heads(method: str, ctx: MethodContext) -> list[tuple[str, Any, str]]:
    """Prepending virtual tokens shifts every position a token-level head labels: refuse those tasks."""
    if ctx.peft_task_type not in SHIFTING_TASK_TYPES:
        return []
    return [("method.name", method,
             f"a method that keeps token positions for task {ctx.task!r}: {method!r} prepends virtual tokens to the "
             "input, so the head's per-token outputs no longer line up with the labels; use 'prefix' (it adds "
             "keys/values instead of tokens), 'lora', 'dora', 'ia3' or 'adapter'")]


class PromptParams(PromptLearningParams):
    init: Literal["random", "text"] = "random"
    init_text: str | None = Field(None, description="with init=text: the words whose embeddings start the prompt")


class Prompt(Method):
    name = "prompt"
    params = PromptParams
    is_peft = True
    hot_swappable = False  # prompt-learning adapters cannot share a base with LoRA adapters
    artifact = "adapter"
    zero3 = True

    def apply(self, model: torch.nn.Module, params: PromptParams, task_type: str) -> torch.nn.Module:
        from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

        extra: dict[str, Any] = {}
        if params.init == "text":
            extra = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": params.init_text,
                     "tokenizer_name_or_path": model.config._name_or_path}
        config = PromptTuningConfig(task_type=TaskType[task_type], num_virtual_tokens=params.num_virtual_tokens,
                                    **extra)
        return get_peft_model(model, config)

    def check(self, params: PromptParams, ctx: MethodContext) -> list[tuple[str, Any, str]]:
        problems = reject_position_heads(self.name, ctx)
        if params.init == "text" and not params.init_text:
            problems.append(("method.init_text", None, "the text whose embeddings start the prompt (init: text)"))
        return problems


METHOD = register_method(Prompt())
