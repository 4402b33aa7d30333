"""The Task protocol and its registry: one module per task registers itself here."""

from __future__ import annotations

from typing import Any, Protocol

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict

from rayft.config.schema import ExperimentConfig
from rayft.registry import Registry


class TaskParams(BaseModel):
    """Base of each task's own parameter schema (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")


class Task(Protocol):
    """What a task provides to the data, train and serve stages."""

    name: str
    peft_task_type: str  # peft.TaskType name
    metrics: tuple[str, ...]  # names reported with an ``eval_`` prefix
    default_metric: str
    default_mode: str
    stratify: bool
    roles: dict[str, str]  # role -> DataConfig key naming its column (e.g. {"text": "text_column"})
    optional_roles: dict[str, str]
    default_columns: dict[str, str]  # role -> column name when the config names none

    def labels(self, cfg: ExperimentConfig, df: pd.DataFrame, columns: dict[str, str]) -> list[str] | None:
        """Label names in id order, or None for tasks without a label vocabulary."""

    def tokenize(self, df: pd.DataFrame, tokenizer: Any, cfg: ExperimentConfig, columns: dict[str, str],
                 labels: list[str] | None) -> dict[str, list[Any]]:
        """Tokenize a split into columns (``input_ids``, ``labels``, ...), unpadded."""

    def build_model(self, path: str, cfg: ExperimentConfig, labels: list[str] | None) -> torch.nn.Module:
        """Load the base model with the head this task needs."""

    def eval_batch(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Per-batch partial results (sums, predictions) that :meth:`finish_eval` combines."""

    def finish_eval(self, parts: list[dict[str, Any]]) -> dict[str, float]:
        """Combine partial results from every batch of every rank into metrics (no prefix)."""

    # Optional members (looked up with getattr; tasks without them get the defaults below):
    #   params: type[TaskParams]                      the task's own keys under ``task:``
    #   unsupported_methods: dict[str, str]           method name -> why it cannot serve this task
    #   roles_for(data: dict, task: dict, present: list[str]) -> (roles, optional_roles, default_columns)
    #                                                 column roles that depend on the data layout
    #   collate(features, pad_id) -> batch            instead of :func:`rayft.data.collate.pad_batch`
    #   compute_loss(model, batch, cfg) -> loss       instead of ``model(**batch).loss``
    #   prepare_model(model, cfg) -> model            after the method is applied (e.g. a frozen reference)
    #   finish_eval_columns(parts, columns) -> dict   instead of finish_eval, with the split's columns
    #   serves_as: str                                the task whose serving routes answer for this one


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    """Register a task instance under its ``name``."""
    return TASKS.register(task.name, task)


def get_task(name: str) -> Task:
    """Look up a task by name.

    Raises:
        UnknownNameError: listing the registered tasks.
    """
    return TASKS.get(name)


def task_params(task: Task, cfg: ExperimentConfig) -> TaskParams:
    """The task's own parameters from ``cfg.task`` (validated by its schema)."""
    return getattr(task, "params", TaskParams).model_validate(cfg.task.params())


def task_roles(task: Task, data: dict[str, Any], present: list[str],
               task_section: dict[str, Any] | None = None) -> tuple[dict, dict, dict]:
    """(required roles, optional roles, default columns) for this data: fixed for most tasks,
    chosen by the data layout for tasks that read several layouts (e.g. ``sft``)."""
    hook = getattr(task, "roles_for", None)
    if hook is not None:
        return hook(data, task_section or {}, present)
    return task.roles, task.optional_roles, task.default_columns


def pick_column(data: dict[str, Any], role: str, key: str, catalog: dict[str, str], defaults: dict[str, str],
                required: bool) -> str | None:
    """The column for one role: ``data.<key>``, else ``data.columns.<role>``, else the catalog's, else the default."""
    col = data.get(key) or (data.get("columns") or {}).get(role) or catalog.get(key)
    return col if col is not None or not required else defaults.get(role)


def resolve_columns(task: Task, cfg: ExperimentConfig, catalog_columns: dict[str, str] | None = None,
                    present: list[str] | None = None) -> dict[str, str]:
    """Role → column name: the config's choice, else the catalog's, else the task's default."""
    out = {}
    data = cfg.data.model_dump()
    roles, optional, defaults = task_roles(task, data, present or [], cfg.task.model_dump())
    for role, key in {**roles, **optional}.items():
        col = pick_column(data, role, key, catalog_columns or {}, defaults, role in roles)
        if col is not None:
            out[role] = col
    return out


def serving_task(name: str) -> str:
    """The task whose routes serve results of task ``name`` (a DPO-tuned model completes text like an SFT one)."""
    return getattr(TASKS.get(name), "serves_as", name) if name in TASKS else name


def method_problem(task: Task, method: str) -> str | None:
    """Why ``method`` cannot be used for ``task``, or None when it can."""
    return (getattr(task, "unsupported_methods", None) or {}).get(method)
