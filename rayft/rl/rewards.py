"""Reward functions named in the YAML as ``module:function`` and combined with weights.

A reward function follows TRL's convention: ``f(prompts: list[str], completions: list[str], **columns) -> list[float]``,
one float per completion; ``columns`` are the data's other columns, one value per completion. Modules resolve from
the working directory first (``rayft submit`` ships it to the cluster). :func:`load_rewards` resolves and checks
them on one sample before any training starts, so a missing module, a function that raises or one that returns the
wrong shape is a config error naming the field, not a failure in a worker.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from rayft.errors import ConfigError, FieldError

RewardFn = Callable[..., Sequence[float]]


class RewardSpec(BaseModel):
    """One reward function and its weight in the total reward."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    function: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="module:function")
    weight: float = 1.0


@dataclass(frozen=True)
class Rewards:
    """Resolved reward functions; :meth:`score` is their weighted sum per completion."""

    functions: tuple[tuple[str, RewardFn, float], ...]

    def score(self, prompts: list[str], completions: list[str], columns: dict[str, list[Any]]) -> list[float]:
        total = [0.0] * len(completions)
        for name, fn, weight in self.functions:
            for i, value in enumerate(_checked(name, fn(prompts, completions, **columns), len(completions))):
                total[i] += weight * value
        return total


def resolve(spec: str) -> RewardFn:
    """The function ``module:function`` names, importable from the working directory.

    Raises:
        ValueError: naming what could not be found.
    """
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"module {module_name!r} cannot be imported ({exc}); put {module_name}.py in the working "
                         "directory or install it") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"module {module_name!r} has no function {attr!r}")
    return fn


def load_rewards(specs: list[RewardSpec], sample: tuple[str, str, dict[str, Any]] | None = None,
                 field: str = "task.rewards") -> Rewards:
    """Resolve ``specs`` and call each on ``sample`` (one prompt, one completion, its columns) to check it.

    Raises:
        ConfigError: every function that cannot be imported, raises on the sample or returns the wrong shape.
    """
    errors, functions = [], []
    for i, spec in enumerate(specs):
        where = f"{field}[{i}].function"
        try:
            fn = resolve(spec.function)
        except ValueError as exc:
            errors.append(FieldError(where, spec.function, f"an importable module:function ({exc})"))
            continue
        if sample is not None:
            prompt, completion, columns = sample
            try:
                _checked(spec.function, fn([prompt], [completion], **{k: [v] for k, v in columns.items()}), 1)
            except Exception as exc:  # noqa: BLE001 - any failure of user code on the sample is reported
                errors.append(FieldError(where, spec.function, "a function that takes (prompts, completions, "
                                         f"**columns) and returns one float per completion; on one sample it "
                                         f"failed: {type(exc).__name__}: {exc}"))
                continue
        functions.append((spec.function, fn, spec.weight))
    if errors:
        raise ConfigError(errors)
    return Rewards(tuple(functions))


def _checked(name: str, values: Any, n: int) -> list[float]:
    """``values`` as ``n`` finite floats.

    Raises:
        ValueError: for another length, a non-number or a NaN.
    """
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{name} returned {type(values).__name__}, not a list of {n} floats")
    if len(values) != n:
        raise ValueError(f"{name} returned {len(values)} values for {n} completions")
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} returned {v!r}, not a number") from None
        if not math.isfinite(f):
            raise ValueError(f"{name} returned {f}, not a finite number")
        out.append(f)
    return out
