"""Semantic checks that need registries or files; they run on raw data so that they can be reported
together with schema errors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from rayft.config import schema
from rayft.errors import FieldError, RayftError

SEARCHABLE: dict[str, type[BaseModel]] = {
    "train": schema.TrainConfig, "model": schema.ModelConfig, "scaling": schema.ScalingConfig,
}  # plus the configured method's own parameters as method.<name>


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name)
    return value if isinstance(value, dict) else {}


def check_names(raw: dict[str, Any]) -> list[FieldError]:
    """Model, task and method names; the method's own parameters; model/task compatibility."""
    from rayft.methods import METHODS
    from rayft.models.catalog import MODELS, describe_valid_models, model_kind
    from rayft.tasks import TASKS

    errors: list[FieldError] = []
    model = _section(raw, "model").get("name")
    task = _section(raw, "task").get("name", "sequence_classification")
    if isinstance(model, str) and model and model_kind(model) is None:
        errors.append(FieldError("model.name", model, f"one of {describe_valid_models()}"))
    if isinstance(task, str) and task not in TASKS:
        errors.append(FieldError("task.name", task, f"a registered task: one of {', '.join(TASKS.names())}"))
    elif isinstance(model, str) and model in MODELS and MODELS.get(model).tasks and task not in MODELS.get(model).tasks:
        errors.append(FieldError("task.name", task, f"a task model {model!r} supports: "
                                 f"{', '.join(MODELS.get(model).tasks)}"))
    errors += check_method(_section(raw, "method"))
    return errors


def check_method(method: dict[str, Any]) -> list[FieldError]:
    from rayft.methods import METHODS

    name = method.get("name", "lora")
    if not isinstance(name, str) or name not in METHODS:
        return [FieldError("method.name", name, f"a registered method: one of {', '.join(METHODS.names())}")]
    params = {k: v for k, v in method.items() if k != "name"}
    try:
        METHODS.get(name).params.model_validate(params)
    except ValidationError as exc:
        return [FieldError("method." + ".".join(map(str, e["loc"])), e.get("input"),
                           f"unknown parameter for method {name!r}; it takes: "
                           f"{', '.join(METHODS.get(name).params.model_fields) or 'no parameters'}"
                           if e["type"] == "extra_forbidden" else e["msg"])
                for e in exc.errors()]
    return []


def check_data(raw: dict[str, Any]) -> list[FieldError]:
    """The data source exists, is readable, and has the columns the task needs."""
    from rayft.data.prepare import catalog_columns
    from rayft.data.sources import is_catalog, source_columns
    from rayft.tasks import TASKS

    data = _section(raw, "data")
    source = data.get("source")
    task_name = _section(raw, "task").get("name", "sequence_classification")
    if not isinstance(source, str) or not source:
        return []
    try:
        present = source_columns(source, data.get("format", "auto"))
    except RayftError as exc:
        return [FieldError("data.source", source, str(exc).split(": ", 1)[-1] if not is_catalog(source) else str(exc))]
    if task_name not in TASKS:
        return []
    task = TASKS.get(task_name)
    defaults = catalog_columns(source)
    errors = []
    for role, key in {**task.roles, **task.optional_roles}.items():
        col = data.get(key) or defaults.get(key) or (task.default_columns.get(role) if role in task.roles else None)
        if col is not None and col not in present:
            errors.append(FieldError(f"data.{key}", col, f"a column of {source!r}; it has: {', '.join(map(str, present))}"))
    return errors


def check_sweep(raw: dict[str, Any]) -> list[FieldError]:
    """Every sweep dimension names a real, settable parameter and its values are valid for it."""
    from rayft.methods import METHODS
    from rayft.tasks import TASKS

    sweep = _section(raw, "sweep")
    errors: list[FieldError] = []
    method = _section(raw, "method").get("name", "lora")
    for key, dist in (sweep.get("space") or {}).items() if isinstance(sweep.get("space"), dict) else []:
        section, _, field = str(key).partition(".")
        if section == "method" and method not in METHODS:
            continue  # the unknown method is reported on its own
        target = METHODS.get(method).params if section == "method" else SEARCHABLE.get(section)
        if target is None or not field or field not in target.model_fields:
            known = [f"{s}.{f}" for s, m in SEARCHABLE.items() for f in m.model_fields]
            known += [f"method.{f}" for f in METHODS.get(method).params.model_fields] if method in METHODS else []
            errors.append(FieldError(f"sweep.space.{key}", dist, f"a searchable parameter: one of {', '.join(known)}"))
            continue
        errors += _check_values(f"sweep.space.{key}", target, field, dist)
    task = _section(raw, "task").get("name", "sequence_classification")
    metric = sweep.get("metric")
    if metric is not None and task in TASKS:
        valid = [f"{p}_{m}" for p in ("eval", "test") for m in TASKS.get(task).metrics]
        if metric not in valid:
            errors.append(FieldError("sweep.metric", metric, f"a metric task {task!r} reports: {', '.join(valid)}"))
    return errors


def _check_values(path: str, model: type[BaseModel], field: str, dist: Any) -> list[FieldError]:
    if not isinstance(dist, dict):
        return []
    values = [v for k in ("loguniform", "uniform", "int") for v in (dist.get(k) or [])] + list(dist.get("choice") or [])
    errors = []
    for value in values:
        try:
            model.__pydantic_validator__.validate_assignment(model.model_construct(), field, value)
        except ValidationError as exc:
            errors.append(FieldError(path, value, f"values valid for {field}: {exc.errors()[0]['msg']}"))
    return errors


def check_storage(raw: dict[str, Any]) -> list[FieldError]:
    """``output_dir`` and ``store.path`` are local paths or pyarrow filesystem URIs (nothing is contacted)."""
    from rayft.storage import check_location

    errors = []
    for path, value in (("output_dir", raw.get("output_dir")), ("store.path", _section(raw, "store").get("path"))):
        problem = check_location(value) if isinstance(value, str) else None
        if problem:
            errors.append(FieldError(path, value, problem))
    return errors


def semantic_checks(cfg: schema.ExperimentConfig) -> list[FieldError]:
    """All semantic checks on a schema-valid config."""
    return partial_checks(cfg.model_dump(mode="json", exclude_none=True), set())


def partial_checks(raw: dict[str, Any], bad_paths: set[str]) -> list[FieldError]:
    """Semantic checks on raw data, skipping fields the schema already rejected."""
    errors = check_names(raw) + check_sweep(raw) + check_storage(raw)
    if not any(p.startswith(("data.source", "task.name")) for p in bad_paths):
        errors += check_data(raw)
    return [e for e in errors if e.path not in bad_paths]
