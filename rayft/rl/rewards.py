"""Reward functions named in the YAML as ``module:function`` and combined with weights.

A stored ``reward_model`` (``task.reward_model``) scores completions as one more weighted reward.
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

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rayft.errors import ConfigError, FieldError

RewardFn = Callable[..., Sequence[float]]


class RewardModelSpec(BaseModel):
    """A trained rayft ``reward_model`` from a store: its score of (prompt, completion) is one more reward."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    store: str = Field("store", description="the adapter store (a local folder is made absolute where the config "
                                            "is built, so workers find it)")
    weight: float = 1.0

    @field_validator("store")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return value if "://" in value else os.path.abspath(value)


def check_reward_model(spec: RewardModelSpec, field: str = "task.reward_model") -> None:
    """Before training: the id names a ``reward_model`` result in the store, trained on the base found here.

    Raises:
        ConfigError: naming the field, with the store's reward models when the id is wrong.
    """
    from rayft.errors import StoreError
    from rayft.models import fingerprint, resolve_model
    from rayft.store import AdapterStore

    try:
        store = AdapterStore(spec.store)
        scorers = sorted(m.adapter_id for m in store.list() if m.task == "reward_model")
        manifest = store.manifest(spec.id) if store.exists(spec.id) else None
    except StoreError as exc:
        raise ConfigError([FieldError(f"{field}.store", spec.store, f"a readable adapter store ({exc})")]) from None
    known = f"reward models in {spec.store}: {', '.join(scorers) or 'none (train one with task reward_model)'}"
    if manifest is None:
        raise ConfigError([FieldError(f"{field}.id", spec.id, f"the id of a stored result; {known}")])
    if manifest.task != "reward_model":
        raise ConfigError([FieldError(f"{field}.id", spec.id, f"a result of task 'reward_model', not "
                                                              f"{manifest.task!r}; {known}")])
    found = fingerprint(resolve_model(manifest.base_model))
    if manifest.base_fingerprint and manifest.base_fingerprint != found:
        raise ConfigError([FieldError(f"{field}.id", spec.id, f"a reward model whose base is the local "
                                      f"{manifest.base_model!r}: it was trained on weights {manifest.base_fingerprint}, "
                                      f"the local base has {found}")])


def reward_model_function(spec: RewardModelSpec) -> RewardFn:
    """The stored reward model as a reward function (TRL's signature): its score of each prompt + completion."""
    from rayft.store import AdapterStore, load_for_inference
    from rayft.tasks.reward_model import score

    model, tokenizer, manifest = load_for_inference(AdapterStore(spec.store), spec.id)

    def reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return score(model, tokenizer, completions, prompts, manifest.max_length)
    return reward


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
                 field: str = "task.rewards", reward_model: RewardModelSpec | None = None) -> Rewards:
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
    if reward_model is not None:
        functions.append((f"reward_model:{reward_model.id}", reward_model_function(reward_model), reward_model.weight))
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
