"""The YAML search space → trial samples, and sampled values → a trial's config.

A space may be *conditional*: ``sweep.space["method.name"] = {choice: [lora, full]}`` searches over the
method itself, and ``sweep.methods.<name>`` holds the parameters that exist only when that method is
chosen. Samples are flat: ``{"train.lr": 3e-4, "method.name": "lora", "method.lora.r": 8}`` — a
per-method parameter is named after its method so that each Optuna distribution keeps one meaning.
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any, Callable

from rayft.config.schema import ExperimentConfig, SearchParam, default

METHOD_KEY = "method.name"
DIST_KEYS = ("loguniform", "uniform", "int", "choice")


def tune_space(space: dict[str, SearchParam]) -> dict[str, Any]:
    """Nested Tune param space (``{"train": {"lr": tune.loguniform(...)}}``) for a non-conditional space."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, param in space.items():
        section, field = key.split(".", 1)
        kind = param.kind
        if kind == "loguniform":
            dist = tune.loguniform(*param.loguniform)
        elif kind == "uniform":
            dist = tune.uniform(*param.uniform)
        elif kind == "int":
            low, high = param.int
            dist = tune.randint(low, high + 1)  # YAML bounds are inclusive
        else:
            dist = tune.choice(list(param.choice))
        out.setdefault(section, {})[field] = dist
    return out


def is_distribution(value: Any) -> bool:
    """A ``sweep.methods`` entry is searched when it is a mapping with one distribution key."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DIST_KEYS


def method_choices(cfg: ExperimentConfig) -> list[str]:
    """The methods a sweep may pick: the searched ``method.name`` choices, else the configured method."""
    param = cfg.sweep.space.get(METHOD_KEY)
    return [str(m) for m in param.choice] if param is not None and param.choice else [cfg.method.name]


def method_space(cfg: ExperimentConfig, method: str) -> dict[str, SearchParam]:
    """Searched parameters of one method, as ``method.<method>.<param>`` → distribution."""
    entries = cfg.sweep.methods.get(method) or {}
    return {f"method.{method}.{k}": SearchParam.model_validate(v) for k, v in entries.items() if is_distribution(v)}


def global_space(cfg: ExperimentConfig) -> dict[str, SearchParam]:
    """Dimensions sampled in every trial (``method.name`` excluded: it selects the branch)."""
    return {k: v for k, v in cfg.sweep.space.items() if k != METHOD_KEY}


def _primitive(values: list[Any]) -> bool:
    return all(v is None or isinstance(v, (bool, int, float, str)) for v in values)


def _suggest(trial: Any, name: str, param: SearchParam) -> None:
    kind = param.kind
    if kind == "loguniform":
        trial.suggest_float(name, *param.loguniform, log=True)
    elif kind == "uniform":
        trial.suggest_float(name, *param.uniform)
    elif kind == "int":
        trial.suggest_int(name, *param.int)
    else:  # Optuna's categorical takes primitives only: lists (e.g. target modules) travel as JSON
        choices = list(param.choice)
        trial.suggest_categorical(name, choices if _primitive(choices) else [json.dumps(c) for c in choices])


class ConditionalSpace:
    """An Optuna define-by-run space for ``OptunaSearch(space=...)``: the method first, then its own parameters.

    A plain class (not a closure) so that Tune can checkpoint the searcher with it and restore it on resume.
    """

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.common = global_space(cfg)
        self.methods = method_choices(cfg)
        self.branches = {m: method_space(cfg, m) for m in self.methods}
        self.searched = METHOD_KEY in cfg.sweep.space

    def __call__(self, trial: Any) -> None:
        method = trial.suggest_categorical(METHOD_KEY, self.methods) if self.searched else self.methods[0]
        for name, param in self.common.items():
            _suggest(trial, name, param)
        for name, param in self.branches[method].items():
            _suggest(trial, name, param)


def define_by_run(cfg: ExperimentConfig) -> Callable[[Any], None]:
    """The sweep's define-by-run function (see :class:`ConditionalSpace`)."""
    return ConditionalSpace(cfg)


def _grid_values(param: SearchParam) -> list[Any]:
    if param.kind == "int":
        low, high = param.int
        return list(range(low, high + 1))
    if param.kind != "choice":
        raise ValueError(f"grid search needs choice or int dimensions, not {param.kind}")
    choices = list(param.choice)
    return choices if _primitive(choices) else [json.dumps(c) for c in choices]


def _product(space: dict[str, SearchParam]) -> list[dict[str, Any]]:
    names = list(space)
    return [dict(zip(names, combo)) for combo in itertools.product(*(_grid_values(space[n]) for n in names))]


def grid_points(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Every combination of the space, branch by branch (each method with its own parameters)."""
    searched = METHOD_KEY in cfg.sweep.space
    points = []
    for method in method_choices(cfg):
        head = {METHOD_KEY: method} if searched else {}
        for common in _product(global_space(cfg)):
            for own in _product(method_space(cfg, method)):
                points.append({**head, **common, **own})
    return points


def _decode(raw_sweep: dict[str, Any], method: str, key: str, value: Any) -> Any:
    """Undo the JSON encoding of non-primitive choices (see :func:`_suggest`)."""
    if not isinstance(value, str):
        return value
    if key.startswith(f"method.{method}."):
        dist = (raw_sweep.get("methods", {}).get(method) or {}).get(key.split(".", 2)[2])
    else:
        dist = raw_sweep.get("space", {}).get(key)
    choices = dist.get("choice") if isinstance(dist, dict) else None
    return json.loads(value) if choices and not _primitive(list(choices)) else value


def apply_sample(base: dict[str, Any], sample: dict[str, Any]) -> ExperimentConfig:
    """The trial's config: ``base`` (a dumped config) with the sampled values set.

    ``sample`` is flat (``{"train.lr": x, "method.name": "lora", "method.lora.r": 8}``) or nested
    (``{"train": {"lr": x}}``). A method other than the configured one starts from its defaults plus
    the fixed values of ``sweep.methods.<method>``.
    """
    from rayft.config.loader import build_config

    raw = copy.deepcopy(base)
    sweep = raw.get("sweep") or {}
    flat = {k: v for k, v in sample.items() if not isinstance(v, dict) and v is not None}  # None: not sampled
    for section, values in sample.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
    method = flat.get(METHOD_KEY, raw.get("method", {}).get("name", default("method.name")))
    if method != raw.get("method", {}).get("name"):
        raw["method"] = {"name": method}
    fixed = {k: v for k, v in (sweep.get("methods", {}).get(method) or {}).items() if not is_distribution(v)}
    raw["method"].update(fixed)
    for key, value in flat.items():
        if key == METHOD_KEY:
            continue
        value = _decode(sweep, method, key, value)
        if key.startswith(f"method.{method}."):
            raw["method"][key.split(".", 2)[2]] = value
        elif key.startswith("method.") and key.count(".") >= 2:
            continue  # another branch's parameter (not sampled for this method)
        else:
            section, *inner, field = key.split(".")
            target = raw.setdefault(section, {})
            for step in inner:  # a field of a sub-section (train.ewc.lambda); an unset one starts from its defaults
                if not isinstance(target.get(step), dict):
                    target[step] = {}
                target = target[step]
            target[field] = value
    return build_config(raw, check=False)


def flat_params(sample: dict[str, Any]) -> dict[str, Any]:
    """``{"train": {"lr": x}}`` → ``{"train.lr": x}`` for tables and reports (flat samples pass through)."""
    out = {k: v for k, v in sample.items() if not isinstance(v, dict) and v is not None}
    out.update({f"{s}.{k}": v for s, values in sample.items() if isinstance(values, dict) for k, v in values.items()})
    return out
