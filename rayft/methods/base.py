"""The Method base class and its registry: one module per fine-tuning method registers itself here."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict

from rayft.registry import Registry

Artifact = Literal["adapter", "full", "modules"]  # the manifest ``kind`` a method's result is stored as


class MethodParams(BaseModel):
    """Base of each method's own parameter schema (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class MethodContext:
    """What a method needs to know to accept or reject a configuration before any work starts."""

    task: str
    peft_task_type: str | None  # the task's peft.TaskType name; None when the task is unknown
    zero_stage: int
    num_workers: int
    dtype: str


class Method(ABC):
    """A fine-tuning method: which parameters train and how the result is saved and served.

    Every method subclasses this and sets the class attributes below; the optional hooks are real methods whose
    defaults say what a method without them does (as peft's ``BaseTuner`` does for its tuners).

    ``artifact`` says how the result is stored: ``"adapter"`` (a peft folder that plain
    ``PeftModel.from_pretrained`` loads), ``"full"`` (a complete transformers model folder) or ``"modules"``
    (rayft's own small add-on modules plus the trained head, saved with ``save`` and loaded onto the base with
    ``load``). ``hot_swappable`` is true when the server can attach it per request to a shared, unmodified base
    model.
    """

    name: str
    params: type[MethodParams] = MethodParams
    is_peft: bool = False  # result is a peft adapter (saved with save_pretrained, loaded by PeftModel)
    hot_swappable: bool = False  # the server can swap it per request on a shared base model
    artifact: Artifact = "full"
    zero3: bool = True  # trains under ZeRO stage 3
    zero3_note: str = "it cannot train with partitioned parameters"  # why not, when ``zero3`` is False
    quantized: bool = False  # its workers import bitsandbytes (see rayft.train.entry.QUANTIZED_METHODS)

    @abstractmethod
    def apply(self, model: torch.nn.Module, params: Any, task_type: str) -> torch.nn.Module:
        """Return the model prepared for training (frozen/wrapped as the method requires)."""

    def check(self, params: Any, ctx: MethodContext) -> list[tuple[str, Any, str]]:
        """Problems with this method in this context: ``(field under method/scaling/task, value, expected)``.

        Default: none beyond the checks every method shares (see :func:`method_problems`).
        """
        return []

    def trainable_at_start(self, model: torch.nn.Module, params: Any) -> set[str] | None:
        """Names of the parameters that train from the first step, when that is not ``requires_grad``.

        Default: None, every parameter with ``requires_grad`` trains from the start.
        """
        return None

    def lr_gate(self, params: Any, blocks: int, steps_per_epoch: int) -> Callable[[int, int], float] | None:
        """``gate(depth, step)`` → a factor on the learning rate of the parameter group at ``depth`` (0 embeddings,
        ``i + 1`` block ``i``, ``blocks + 1`` top and head) at optimizer step ``step``.

        Default: None, no gate (every group trains at its scheduled learning rate).
        """
        return None

    def prepare_base(self, model: torch.nn.Module, params: Any) -> torch.nn.Module:
        """The freshly loaded base as it was during training, before a stored adapter is attached to it.

        Default: the base unchanged.
        """
        return model


METHODS: Registry[Method] = Registry("method")


def register_method(method: Method) -> Method:
    """Register a method instance under its ``name``."""
    return METHODS.register(method.name, method)


def get_method(name: str) -> Method:
    """Look up a method by name.

    Raises:
        UnknownNameError: listing the registered methods.
    """
    return METHODS.get(name)


def trainable_summary(model: torch.nn.Module, trainable_names: set[str] | None = None) -> dict[str, float]:
    """Trainable and total parameter counts and the trainable percentage.

    Args:
        model: the prepared model.
        trainable_names: the parameters that train from the start, when that is not ``requires_grad``
            (gradual unfreezing keeps every parameter in the optimizer but starts with most at learning rate 0).
    """
    total = trainable = 0
    for name, p in model.named_parameters():
        n = _numel(p)
        total += n
        trains = name in trainable_names if trainable_names is not None else p.requires_grad
        trainable += n if trains else 0
    return {"trainable_params": trainable, "total_params": total,
            "trainable_pct": round(100.0 * trainable / max(total, 1), 4)}


def _numel(p: torch.Tensor) -> int:
    """Logical size: ZeRO-3 partitions report 0 locally, packed 4-bit weights half their element count."""
    if hasattr(p, "ds_numel"):
        return p.ds_numel
    quant = getattr(p, "quant_state", None)
    return quant.shape.numel() if quant is not None and hasattr(quant, "shape") else p.numel()


def method_summary(method: Method, model: torch.nn.Module, params: Any) -> dict[str, float]:
    """The trainable-parameter summary a method reports at start (methods may name what trains first)."""
    return trainable_summary(model, method.trainable_at_start(model, params))


def method_problems(method: Method, params: Any, ctx: MethodContext) -> list[tuple[str, Any, str]]:
    """Combination checks shared by every method, then the method's own."""
    problems: list[tuple[str, Any, str]] = []
    if ctx.zero_stage == 3 and not method.zero3:
        working = ", ".join(n for n in METHODS if METHODS.get(n).zero3)
        problems.append(("scaling.zero_stage", 3, f"ZeRO stage 0-2 for method {method.name!r} "
                                                   f"({method.zero3_note}); methods that run at stage 3: {working}"))
    return problems + method.check(params, ctx)
