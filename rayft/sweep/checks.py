"""Config checks for conditional spaces, searchers, schedulers and objectives.

Importing this module registers them with the config validator (:func:`rayft.config.checks.register_check`),
which runs them with the other semantic checks. They work on the raw YAML mapping so that every problem is
reported at once with its YAML path. Methods are looked up in the :data:`rayft.methods.METHODS` registry and
each method's pydantic params model decides which parameters exist and which values are valid — nothing here
names a method.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from rayft.config.checks import register_check
from rayft.config.schema import SearchParam, default
from rayft.config.validate import check_values, section_name, task_metrics
from rayft.errors import FieldError

METHOD_KEY = "method.name"
DIST_KEYS = ("loguniform", "uniform", "int", "choice")
# Metrics every trial reports besides the task's eval_/test_ ones (cost objectives).
COST_METRICS = ("trainable_params", "total_params", "trainable_pct", "latency_ms", "samples_per_s", "train_loss")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _chosen_methods(raw: dict[str, Any]) -> tuple[list[str], bool]:
    """The methods a sweep may pick and whether ``method.name`` is searched."""
    space = _dict(_dict(raw.get("sweep")).get("space"))
    dist = space.get(METHOD_KEY)
    if METHOD_KEY in space:
        choices = _dict(dist).get("choice")
        return ([m for m in choices if isinstance(m, str)] if isinstance(choices, list) else []), True
    return [section_name(raw, "method")], False


def check_conditional_space(raw: dict[str, Any]) -> list[FieldError]:
    """``method.name`` choices, ``sweep.methods`` branches and their parameters, and grid-ability."""
    from rayft.methods import METHODS

    sweep = _dict(raw.get("sweep"))
    space = _dict(sweep.get("space"))
    errors: list[FieldError] = []
    methods, searched = _chosen_methods(raw)
    if searched:
        dist = space[METHOD_KEY]
        if not isinstance(dist, dict) or list(dist) != ["choice"]:
            errors.append(FieldError("sweep.space.method.name", dist, "{choice: [method, ...]}"))
        for m in _dict(dist).get("choice") or []:
            if m not in METHODS:
                errors.append(FieldError("sweep.space.method.name", m,
                                         f"a registered method: one of {', '.join(METHODS.names())}"))
        for key in space:
            if key.startswith("method.") and key != METHOD_KEY:
                errors.append(FieldError(f"sweep.space.{key}", space[key], "per-method parameters under "
                                         f"sweep.methods.<method>.{key.split('.', 1)[1]} when method.name is searched"))
    branches = sweep.get("methods")
    for name, params in _dict(branches).items():
        path = f"sweep.methods.{name}"
        if name not in METHODS:
            errors.append(FieldError(path, name, f"a registered method: one of {', '.join(METHODS.names())}"))
        elif name not in methods:
            errors.append(FieldError(path, name, f"a method this sweep can choose: {', '.join(methods) or 'none'}"))
        elif not isinstance(params, dict) and params is not None:
            errors.append(FieldError(path, params, "a mapping of parameter → distribution or fixed value"))
        else:
            errors += _check_branch(path, METHODS.get(name).params, name, params or {})
    if sweep.get("searcher") == "grid":
        errors += _check_grid(space, _dict(branches))
    return errors


def _check_branch(path: str, model: type[BaseModel], method: str, params: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    for field, value in params.items():
        if field not in model.model_fields:
            errors.append(FieldError(f"{path}.{field}", value, f"a parameter of method {method!r}: one of "
                                     f"{', '.join(model.model_fields) or 'none (it takes no parameters)'}"))
            continue
        if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DIST_KEYS:
            try:
                SearchParam.model_validate(value)
            except ValidationError as exc:
                errors.append(FieldError(f"{path}.{field}", value, exc.errors()[0]["msg"]))
                continue
            kind, bounds = next(iter(value.items()))
            candidates = list(bounds) if isinstance(bounds, (list, tuple)) else []
        else:
            candidates = [value]
        errors += check_values(f"{path}.{field}", model, field, candidates)
    return errors


def _check_grid(space: dict[str, Any], branches: dict[str, Any]) -> list[FieldError]:
    errors = []
    dims = [(f"sweep.space.{k}", v) for k, v in space.items()]
    dims += [(f"sweep.methods.{m}.{k}", v) for m, ps in branches.items() for k, v in _dict(ps).items()]
    for path, dist in dims:
        if isinstance(dist, dict) and len(dist) == 1 and next(iter(dist)) in ("loguniform", "uniform"):
            errors.append(FieldError(path, dist, "choice or int dimensions for searcher: grid"))
    return errors


def check_objectives(raw: dict[str, Any]) -> list[FieldError]:
    """Objective metrics are ones the trials report; the scheduler's metric is one of them."""
    from rayft.tasks import TASKS

    sweep = _dict(raw.get("sweep"))
    objectives = sweep.get("objectives")
    task = section_name(raw, "task")
    if not isinstance(objectives, list) or task not in TASKS:
        return []
    valid = task_metrics(task) + list(COST_METRICS)
    errors = []
    seen = set()
    for i, obj in enumerate(objectives):
        metric = _dict(obj).get("metric")
        if isinstance(metric, str) and metric not in valid:
            errors.append(FieldError(f"sweep.objectives.{i}.metric", metric, f"a reported metric: {', '.join(valid)}"))
        if metric in seen:
            errors.append(FieldError(f"sweep.objectives.{i}.metric", metric, "each metric once"))
        seen.add(metric)
    metric = sweep.get("metric")
    if objectives and metric is not None and metric not in seen:
        errors.append(FieldError("sweep.metric", metric, f"one of the objectives ({', '.join(map(str, seen))}): "
                                 "the scheduler stops trials on it"))
    return errors


def checkpoint_every_evaluation(raw: dict[str, Any], why: str) -> list[FieldError]:
    """``train.checkpoint_every`` is 1 or unset, for a scheduler that may restart a trial at any evaluation."""
    every = _dict(raw.get("train")).get("checkpoint_every")
    return [] if every in (None, 1) else [FieldError("train.checkpoint_every", every, f"1 (or unset) {why}")]


def check_asha_promotion(raw: dict[str, Any]) -> list[FieldError]:
    """``asha_promotion: deferred`` goes with ASHA, a searcher it can limit, and a checkpoint at every evaluation."""
    sweep = _dict(raw.get("sweep"))
    if sweep.get("asha_promotion") != "deferred":
        return []
    errors = []
    scheduler = sweep.get("scheduler", default("sweep.scheduler"))
    if scheduler != "asha":
        errors.append(FieldError("sweep.asha_promotion", "deferred", f"eager (or unset) with scheduler: {scheduler} "
                                 "(deferred promotion is a rule of the asha scheduler)"))
    if sweep.get("searcher") == "grid":
        errors.append(FieldError("sweep.searcher", "grid", "optuna, tpe or random with asha_promotion: deferred "
                                 "(trials waiting at a rung must not hold back new ones, and a grid's "
                                 "concurrency cannot tell them apart)"))
    return errors + checkpoint_every_evaluation(raw, "with asha_promotion: deferred (a trial waits at a rung "
                                                     "and resumes from the checkpoint of that evaluation)")


def check_startup_trials(raw: dict[str, Any]) -> list[FieldError]:
    """``startup_trials`` sets TPE's random start, so it goes with the ``tpe`` (or ``optuna``) searcher."""
    sweep = _dict(raw.get("sweep"))
    value = sweep.get("startup_trials")
    searcher = sweep.get("searcher", default("sweep.searcher"))
    if value is None or searcher in ("tpe", "optuna"):
        return []
    return [FieldError("sweep.startup_trials", value, f"unset with searcher: {searcher} (it is the number of finished "
                       "trials before TPE models their results; only the tpe searcher has them)")]


def _check_pbt(raw: dict[str, Any]) -> list[FieldError]:
    from rayft.sweep.pbt import check_pbt  # imported here: rayft.sweep.pbt imports this module

    return check_pbt(raw)


for _check in (check_conditional_space, check_objectives, _check_pbt, check_asha_promotion, check_startup_trials):
    register_check(_check)
