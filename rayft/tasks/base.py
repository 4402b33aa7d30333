"""The Task protocol and its registry: one module per task registers itself here."""

from __future__ import annotations

from typing import Any, Protocol

import pandas as pd
import torch

from rayft.config.schema import ExperimentConfig
from rayft.registry import Registry


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


def resolve_columns(task: Task, cfg: ExperimentConfig, catalog_columns: dict[str, str] | None = None) -> dict[str, str]:
    """Role → column name: the config's choice, else the catalog's, else the task's default."""
    out = {}
    catalog_columns = catalog_columns or {}
    for role, key in {**task.roles, **task.optional_roles}.items():
        col = getattr(cfg.data, key, None) or catalog_columns.get(key)
        if col is None and role in task.roles:
            col = task.default_columns[role]
        if col is not None:
            out[role] = col
    return out
