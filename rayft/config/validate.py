"""Semantic checks that need registries or files; they run on raw data so that they can be reported
together with schema errors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from rayft.config import schema
from rayft.config.checks import run_registered
from rayft.errors import FieldError, RayftError

SEARCHABLE: dict[str, type[BaseModel]] = {
    "train": schema.TrainConfig, "model": schema.ModelConfig, "scaling": schema.ScalingConfig,
    "mix": schema.MixConfig,
}  # plus the configured method's own parameters as method.<name>


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name)
    return value if isinstance(value, dict) else {}


def section_name(raw: dict[str, Any], section: str) -> Any:
    """``<section>.name`` of a raw config mapping (``task`` or ``method``), or the schema's default (``multitask``
    for the task of a config with ``tasks:``)."""
    if section == "task" and isinstance(raw.get("tasks"), list) and "name" not in _section(raw, "task"):
        return schema.MULTITASK
    return _section(raw, section).get("name", schema.default(f"{section}.name"))


def task_metrics(task: str, raw: dict[str, Any] | None = None) -> list[str]:
    """The metrics a registered task reports (``eval_<m>`` and ``test_<m>`` for each of its metrics) in the raw
    config ``raw`` (a multi-task run also reports each head's)."""
    from rayft.tasks import TASKS

    return [f"{p}_{m}" for p in ("eval", "test") for m in TASKS.get(task).metric_names(raw or {})]


def check_names(raw: dict[str, Any]) -> list[FieldError]:
    """Model, task and method names; the method's own parameters; model/task compatibility."""
    from rayft.models.catalog import MODELS, describe_valid_models, model_kind
    from rayft.tasks import TASKS

    errors: list[FieldError] = []
    model = _section(raw, "model").get("name")
    task = section_name(raw, "task")
    if isinstance(model, str) and model and model_kind(model) is None:
        errors.append(FieldError("model.name", model, f"one of {describe_valid_models()}"))
    if isinstance(task, str) and task not in TASKS:
        errors.append(FieldError("task.name", task, f"a registered task: one of {', '.join(TASKS.names())}"))
    elif isinstance(model, str) and model in MODELS and MODELS.get(model).tasks and task not in MODELS.get(model).tasks:
        errors.append(FieldError("task.name", task, f"a task model {model!r} supports: "
                                 f"{', '.join(MODELS.get(model).tasks)}"))
    method_errors = check_method(_section(raw, "method"))
    errors += method_errors or check_method_combination(raw)
    errors += [e for e in check_task(_section(raw, "task"), _section(raw, "method"))
               if not (e.path == "method.name" and any(x.path == "method.name" for x in errors))]
    return errors


def check_method_combination(raw: dict[str, Any]) -> list[FieldError]:
    """The method against the task, ZeRO stage and installed packages (e.g. prompt tuning on a token-level head,
    QLoRA at ZeRO-3 or without bitsandbytes); each message says why and what would work."""
    from rayft.methods import METHODS, MethodContext, method_problems
    from rayft.tasks import TASKS

    method = _section(raw, "method")
    name, task = section_name(raw, "method"), section_name(raw, "task")
    scaling, model = _section(raw, "scaling"), _section(raw, "model")
    if not isinstance(name, str) or name not in METHODS:
        return []
    try:
        params = METHODS.get(name).params.model_validate({k: v for k, v in method.items() if k != "name"})
        stage = int(scaling.get("zero_stage", schema.default("scaling.zero_stage")))
        workers = int(scaling.get("num_workers", schema.default("scaling.num_workers")))
    except (ValidationError, TypeError, ValueError):
        return []  # reported by the schema / check_method
    ctx = MethodContext(task=str(task), peft_task_type=TASKS.get(task).peft_task_type if task in TASKS else None,
                        zero_stage=stage, num_workers=workers,
                        dtype=str(model.get("dtype", schema.default("model.dtype"))))
    problems = method_problems(METHODS.get(name), params, ctx)
    return [FieldError(path, value, expected) for path, value, expected in problems]


def check_task(task: dict[str, Any], method: dict[str, Any],
               section_keys: tuple[str, ...] = ("name", "labels")) -> list[FieldError]:
    """The task's own parameters, and whether the configured method can serve this task. ``section_keys``: the
    keys of the section beside the task's parameters (a ``tasks:`` entry has more), named in the error."""
    from rayft.methods import METHODS
    from rayft.tasks import TASKS, method_problem

    name = task.get("name", schema.default("task.name"))
    if not isinstance(name, str) or name not in TASKS:
        return []  # reported by check_names
    entry = TASKS.get(name)
    schema_cls = entry.params
    errors = []
    try:
        schema_cls.model_validate({k: v for k, v in task.items() if k not in ("name", "labels")})
    except ValidationError as exc:
        errors += [FieldError("task." + ".".join(map(str, e["loc"])), e.get("input"),
                              f"unknown parameter for task {name!r}; it takes: "
                              f"{', '.join([*section_keys, *schema_cls.model_fields])}"
                              if e["type"] == "extra_forbidden" else e["msg"]) for e in exc.errors()]
    method_name = method.get("name", schema.default("method.name"))
    why = method_problem(entry, method_name) if isinstance(method_name, str) else None
    if why:
        usable = [m for m in METHODS.names() if not method_problem(entry, m)]
        errors.append(FieldError("method.name", method_name, f"a method task {name!r} can use — {method_name!r} "
                                 f"cannot: {why}; use one of: {', '.join(usable)}"))
    return errors


def check_method(method: dict[str, Any]) -> list[FieldError]:
    from rayft.methods import METHODS

    name = method.get("name", schema.default("method.name"))
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
    """The data source (or split files) exists, is readable, and has the columns the task needs."""
    from rayft.data.prepare import catalog_columns
    from rayft.data.sources import open_source
    from rayft.data.splits import sizes_error
    from rayft.data.streaming import config_problems, peek_source
    from rayft.tasks import TASKS, task_roles
    from rayft.tasks.base import pick_column

    data = _section(raw, "data")
    source = data.get("source")
    splits = data.get("splits") if isinstance(data.get("splits"), dict) else {}
    task_name = section_name(raw, "task")
    if not (isinstance(source, str) and source) and not (source is None and splits.get("train")):
        return []
    streaming = config_problems(raw)  # data.engine ray: what cannot stream, and its files read without pandas
    if streaming:
        return streaming
    opener = peek_source if data.get("engine") == "ray" else open_source
    try:
        loaded = opener(source, data.get("format", schema.default("data.format")), splits,
                        data.get("hub_config"), nrows=5)
    except RayftError as exc:
        return [_data_error(exc, source)]
    present = loaded.columns
    unused = sizes_error(data) if loaded.given else None
    if unused:
        return [_data_error(unused, source)]
    if task_name not in TASKS:
        return []
    task = TASKS.get(task_name)
    catalog = catalog_columns(source)
    errors = []
    try:
        roles, optional, defaults = task_roles(task, data, [str(c) for c in present], _section(raw, "task"))
    except ValueError as exc:
        return [FieldError("task.format", _section(raw, "task").get("format"), str(exc))]
    for role, key in {**roles, **optional}.items():
        col = pick_column(data, role, key, catalog, defaults, role in roles)
        if col is not None and col not in present:
            own_key = key in schema.DataConfig.model_fields and not (data.get("columns") or {}).get(role)
            where = f"data.{key}" if own_key else f"data.columns.{role}"
            errors.append(FieldError(where, col, f"a column of {loaded.name!r} for the {role!r} role of task "
                                     f"{task_name!r}; it has: {', '.join(map(str, present))}"))
    return errors


def _data_error(exc: RayftError, source: Any) -> FieldError:
    """A data stage's error as a FieldError: its field and value (``data.source`` unless it names another), and
    its message without the leading ``<field> <value>:``."""
    field, value, message = getattr(exc, "field", "data.source"), getattr(exc, "value", None), str(exc)
    return FieldError(field, source if value is None else value,
                      message.split(": ", 1)[-1] if message.startswith(field) else message)


def check_sweep(raw: dict[str, Any]) -> list[FieldError]:
    """Every sweep dimension names a real, settable parameter and its values are valid for it."""
    from rayft.methods import METHODS
    from rayft.tasks import TASKS

    sweep = _section(raw, "sweep")
    errors: list[FieldError] = []
    method = section_name(raw, "method")
    for key, dist in (sweep.get("space") or {}).items() if isinstance(sweep.get("space"), dict) else []:
        section, _, field = str(key).partition(".")
        if key == "method.name" or (section == "method" and _searches_method(sweep)):
            continue  # conditional spaces: see check_conditional_space
        if section == "method" and method not in METHODS:
            continue  # the unknown method is reported on its own
        if section == "mix" and field.startswith("weights."):  # one task's mixing weight, by the task's name
            errors += _check_weight(raw, str(key), field.split(".", 1)[1], dist)
            continue
        target = METHODS.get(method).params if section == "method" else SEARCHABLE.get(section)
        target = _task_schema(raw) if section == "task" else target
        target, field = nested_field(target, field)  # train.ewc.lambda: EwcConfig's lambda_
        if target is None or not field or field not in target.model_fields:
            known = [f"{s}.{f}" for s, m in SEARCHABLE.items() for f in m.model_fields]
            known += [f"method.{f}" for f in METHODS.get(method).params.model_fields] if method in METHODS else []
            known += [f"task.{f}" for f in getattr(_task_schema(raw), "model_fields", {})]
            errors.append(FieldError(f"sweep.space.{key}", dist, f"a searchable parameter: one of {', '.join(known)}"))
            continue
        errors += _check_distribution(f"sweep.space.{key}", target, field, dist)
    task = section_name(raw, "task")
    metric = sweep.get("metric")
    if metric is not None and task in TASKS:
        valid = task_metrics(task, raw)
        if metric not in valid:
            errors.append(FieldError("sweep.metric", metric, f"a metric task {task!r} reports: {', '.join(valid)}"))
    return errors


def _check_weight(raw: dict[str, Any], key: str, name: str, dist: Any) -> list[FieldError]:
    """``mix.weights.<task>`` in the sweep space: a task of ``tasks:``, searched over numbers >= 0."""
    names = [t.get("name") for t in raw.get("tasks") or [] if isinstance(t, dict)]
    if name not in names:
        return [FieldError(f"sweep.space.{key}", dist, f"mix.weights.<task> for a task of tasks: "
                                                      f"{', '.join(map(str, names)) or 'none (no tasks:)'}")]
    weights = _section(raw, "mix").get("weights")
    if not isinstance(weights, dict) or set(weights) != set(names):
        return [FieldError(f"sweep.space.{key}", dist, "mix.weights set for every task in the config (the sweep "
                                                      "changes some of them): e.g. {" + ", ".join(
                                                          f"{n}: 1" for n in names) + "}")]
    values = [v for k in ("loguniform", "uniform", "int") for v in (dist.get(k) or [])] + list(dist.get("choice") or []) \
        if isinstance(dist, dict) else []
    bad = [v for v in values if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0]
    return [FieldError(f"sweep.space.{key}", v, "a weight >= 0") for v in bad]


def nested_field(model: type[BaseModel] | None, path: str) -> tuple[type[BaseModel] | None, str]:
    """(the section model, the attribute name) a dotted field path inside ``model`` ends at: ``ewc.lambda`` of
    ``TrainConfig`` is ``(EwcConfig, "lambda_")``; ``(None, path)`` where a step is no sub-section."""
    import typing

    *steps, last = path.split(".")
    for step in steps:
        info = model.model_fields.get(step) if model is not None else None
        kinds = typing.get_args(info.annotation) or (info.annotation,) if info is not None else ()
        model = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
    if model is None:
        return None, path
    by_alias = {info.alias: name for name, info in model.model_fields.items() if info.alias}
    return model, by_alias.get(last, last)


def _searches_method(sweep: dict[str, Any]) -> bool:
    space = sweep.get("space")
    return isinstance(space, dict) and "method.name" in space


def _task_schema(raw: dict[str, Any]) -> type[BaseModel] | None:
    """The configured task's own parameter schema (searchable as ``task.<name>``), if the task is known."""
    from rayft.tasks import TASKS

    name = section_name(raw, "task")
    return TASKS.get(name).params if isinstance(name, str) and name in TASKS else None


def _check_distribution(path: str, model: type[BaseModel], field: str, dist: Any) -> list[FieldError]:
    if not isinstance(dist, dict):
        return []
    values = [v for k in ("loguniform", "uniform", "int") for v in (dist.get(k) or [])] + list(dist.get("choice") or [])
    return check_values(path, model, field, values)


def check_values(path: str, model: type[BaseModel], field: str, values: list[Any]) -> list[FieldError]:
    """One error at ``path`` per value that ``model`` would refuse for ``field``."""
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
    """Semantic checks on raw data, skipping fields the schema already rejected.

    The stages' own checks (:mod:`rayft.config.checks`) run after the sweep space's, as one list of errors."""
    errors = check_names(raw) + check_sweep(raw) + run_registered(raw) + check_storage(raw)
    if not any(p == "data" or p.startswith(("data.source", "data.splits", "task.name")) for p in bad_paths):
        errors += check_data(raw)
    errors += [e for e in check_tasks(raw, bad_paths)  # the method refused once: for the run, not for each task
               if not (e.path == "method.name" and any(x.path == "method.name" for x in errors))]
    return [e for e in errors if e.path not in bad_paths]



def check_tasks(raw: dict[str, Any], bad_paths: set[str]) -> list[FieldError]:
    """Multi-task (``tasks:``): each task's type, its own parameters, whether the model and the method suit it, and
    its data — the single-task checks on each task's own config, reported under ``tasks[i]``."""
    from rayft.models.catalog import MODELS
    from rayft.tasks import TASKS

    tasks = raw.get("tasks")
    if not isinstance(tasks, list):
        return []
    errors: list[FieldError] = []
    model = _section(raw, "model").get("name")
    for i, sub in enumerate(tasks):
        if not isinstance(sub, dict):
            continue
        where, name = f"tasks.{i}", sub.get("task", "sequence_classification")
        if name not in schema.HEAD_TASKS:
            errors.append(FieldError(f"{where}.task", name, f"a task a multi-task head learns: {', '.join(schema.HEAD_TASKS)}"))
            continue
        if isinstance(model, str) and model in MODELS and MODELS.get(model).tasks and name not in MODELS.get(model).tasks:
            errors.append(FieldError(f"{where}.task", name, f"a task model {model!r} supports: "
                                                            f"{', '.join(MODELS.get(model).tasks)}"))
        own = {k: v for k, v in sub.items() if k not in ("name", "task", "data", "max_length")}
        single = {**raw, "task": {**own, "name": name}, "data": sub.get("data") or {}}
        single.pop("tasks", None)
        found = check_task(single["task"], _section(raw, "method"), ("name", "task", "data", "labels", "max_length"))
        if not any(p.startswith((f"{where}.data.source", f"{where}.data.splits")) for p in bad_paths):
            found += check_data(single)
        errors += [_in_task(e, where) for e in found if name in TASKS]
        engine = (sub.get("data") or {}).get("engine") if isinstance(sub.get("data"), dict) else None
        if engine == "ray":
            errors.append(FieldError(f"{where}.data.engine", engine, "memory: multi-task data is mixed per batch "
                                                                     "on the workers from in-memory splits"))
    if _section(raw, "train").get("curriculum") is not None:
        errors.append(FieldError("train.curriculum", _section(raw, "train")["curriculum"],
                                 "none with tasks: batches are drawn per task by mix, not by difficulty"))
    names = [sub.get("name") for sub in tasks if isinstance(sub, dict)]
    twice = sorted({str(n) for n in names if names.count(n) > 1})
    if twice:
        errors.append(FieldError("tasks", names, f"a unique name per task ({', '.join(twice)} repeat)"))
    weights = _section(raw, "mix").get("weights")
    if isinstance(weights, dict) and set(weights) != set(names):
        errors.append(FieldError("mix.weights", weights, f"a weight for every task and no other: "
                                                         f"{', '.join(map(str, names))}"))
    return errors


def _in_task(error: FieldError, where: str) -> FieldError:
    """A single-task check's error on task ``where`` of a multi-task config: ``data.x`` → ``tasks.i.data.x``,
    ``task.x`` → ``tasks.i.x`` (errors on shared sections keep their path)."""
    path = error.path
    if path.startswith("data."):
        path = f"{where}.{path}"
    elif path.startswith("task."):
        path = f"{where}.{path[len('task.'):]}"
    return FieldError(path, error.value, error.expected)
