"""Config checks of the training stage: the precision against the hardware, and where packing applies.

Registered with :mod:`rayft.config.checks` so ``rayft validate`` reports them with every other error. Torch (and
DeepSpeed, for the GPU's answer) are imported only when a config asks for something other than float32 or packing.
"""

from __future__ import annotations

from typing import Any

from rayft.config import schema
from rayft.config.checks import register_check
from rayft.errors import FieldError

# Tasks whose rows can share a packed row (causal LM, per-token labels); the online RL tasks pack the prompt +
# completion rows of their update forwards.
PACKING_TASKS = ("sft", "dpo", "grpo", "ppo")
# peft's prompt learning prepends virtual tokens to each row: packed examples would share one prefix.
NO_PACKING_METHODS = {"prefix": "prefix tuning", "prompt": "prompt tuning", "ptuning": "p-tuning"}


def supported_precisions(gpu: bool) -> tuple[list[str], str]:
    """(the training precisions this machine supports, what was looked at) for CPU or GPU workers.

    On a GPU: float32 and float16 always, bfloat16 where CUDA says the card has it. On a CPU: bfloat16 where oneDNN
    finds bf16 instructions (AVX512-BF16, AMX), float16 where it finds fp16 ones (AVX512-FP16, AMX-FP16).
    """
    import torch

    if gpu:
        name = torch.cuda.get_device_name(0)
        return ["float32", "float16"] + (["bfloat16"] if torch.cuda.is_bf16_supported() else []), f"GPU {name}"
    out = ["float32"]
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        out.append("bfloat16")
    if torch.ops.mkldnn._is_mkldnn_fp16_supported():
        out.append("float16")
    return out, f"CPU ({torch.backends.cpu.get_cpu_capability()}, no GPU per worker)"


def precision_problem(dtype: str, gpu: bool) -> str | None:
    """Why ``dtype`` cannot train on this machine's CPU or GPU, or None when it can (or the GPU is elsewhere)."""
    if dtype == "float32":
        return None
    import torch

    if gpu and not torch.cuda.is_available():
        return None  # GPU workers on other nodes: the worker checks again (require_precision) where it runs
    have, where = supported_precisions(gpu)
    if dtype in have:
        return None
    return f"a precision this {where} supports: {', '.join(have)} ({dtype} is missing in its hardware)"


def require_precision(dtype: str, gpu: bool) -> None:
    """Refuse to train in ``dtype`` where this worker's hardware lacks it.

    Raises:
        ConfigError: naming model.dtype and the precisions this machine has.
    """
    from rayft.errors import ConfigError

    problem = precision_problem(dtype, gpu)
    if problem:
        raise ConfigError([FieldError("model.dtype", dtype, problem)])


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name)
    return value if isinstance(value, dict) else {}


@register_check
def check_training(raw: dict[str, Any]) -> list[FieldError]:
    """model.dtype against the hardware; train.packing against the task and method; max_length against the model's
    context length."""
    errors: list[FieldError] = _context_problems(raw)
    dtype = _section(raw, "model").get("dtype", schema.default("model.dtype"))
    gpus = _section(raw, "scaling").get("gpus_per_worker", schema.default("scaling.gpus_per_worker"))
    if dtype in ("bfloat16", "float16") and isinstance(gpus, (int, float)):
        problem = precision_problem(dtype, gpus > 0)
        if problem:
            errors.append(FieldError("model.dtype", dtype, problem))
    if _section(raw, "train").get("packing") is True:
        task = _section(raw, "task").get("name", schema.default("task.name"))
        method = _section(raw, "method").get("name", schema.default("method.name"))
        if task not in PACKING_TASKS:
            errors.append(FieldError("train.packing", True, f"false for task {task!r}: packing applies to "
                                                            f"{', '.join(PACKING_TASKS)}"))
        elif method in NO_PACKING_METHODS:
            errors.append(FieldError("train.packing", True, f"false with {NO_PACKING_METHODS[method]}: its virtual "
                                                            "tokens would be shared by every example of a row"))
    return errors


def _context_problems(raw: dict[str, Any]) -> list[FieldError]:
    """``model.max_length`` (and each ``tasks.<i>.max_length``) at most the model's context length: longer rows
    would index past its position embeddings in the workers."""
    name = _section(raw, "model").get("name")
    if not isinstance(name, str):
        return []
    from rayft.models.catalog import context_length

    limit = context_length(name)
    if not limit:
        return []
    lengths = [("model.max_length", _section(raw, "model").get("max_length", schema.default("model.max_length")))]
    tasks = raw.get("tasks")
    if isinstance(tasks, list):
        lengths += [(f"tasks.{i}.max_length", t.get("max_length")) for i, t in enumerate(tasks) if isinstance(t, dict)]
    return [FieldError(path, value, f"at most {limit}, the context length of model {name!r}")
            for path, value in lengths if isinstance(value, int) and value > limit]
