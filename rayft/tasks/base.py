"""The Task base class and its registry: one module per task registers itself here."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Any, Iterator

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict

from rayft.config.schema import ExperimentConfig
from rayft.data.collate import pad_batch
from rayft.data.packing import pad_packed
from rayft.registry import Registry


class TaskParams(BaseModel):
    """Base of each task's own parameter schema (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")


class Task(ABC):
    """What a task provides to the data, train and serve stages.

    Every task subclasses this and sets the class attributes below. The abstract methods are what each task must
    provide; the other hooks are real methods whose defaults say what a task without them does (as peft's
    ``BaseTuner`` does for its tuners).
    """

    name: str
    peft_task_type: str  # peft.TaskType name
    metrics: tuple[str, ...]  # names reported with an ``eval_`` prefix
    default_metric: str
    default_mode: str
    stratify: bool = False
    roles: dict[str, str]  # role -> DataConfig key naming its column (e.g. {"text": "text_column"})
    optional_roles: dict[str, str] = {}  # role -> DataConfig key, for columns a dataset may lack
    default_columns: dict[str, str]  # role -> column name when the config names none
    params: type[TaskParams] = TaskParams  # the task's own keys under ``task:``
    unsupported_methods: dict[str, str] = {}  # method name -> why it cannot serve this task
    serves_as: str | None = None  # the task whose serving routes answer for this one; None: its own

    def labels(self, cfg: ExperimentConfig, df: pd.DataFrame, columns: dict[str, str]) -> list[str] | None:
        """Label names in id order, or None for tasks without a label vocabulary (the default)."""
        return None

    @abstractmethod
    def tokenize(self, df: pd.DataFrame, tokenizer: Any, cfg: ExperimentConfig, columns: dict[str, str],
                 labels: list[str] | None) -> dict[str, list[Any]]:
        """Tokenize a split into columns (``input_ids``, ``labels``, ...), unpadded."""

    @abstractmethod
    def build_model(self, path: str, cfg: ExperimentConfig, labels: list[str] | None) -> torch.nn.Module:
        """Load the base model with the head this task needs."""

    @abstractmethod
    def eval_batch(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Per-batch partial results (sums, predictions) that :meth:`finish_eval` combines."""

    @abstractmethod
    def finish_eval(self, parts: list[dict[str, Any]]) -> dict[str, float]:
        """Combine partial results from every batch of every rank into metrics (no prefix)."""

    def roles_for(self, data: dict[str, Any], task: dict[str, Any],
                  present: list[str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        """(required roles, optional roles, default columns) for this data layout.

        Default: the fixed ``roles``, ``optional_roles`` and ``default_columns``; tasks that read several layouts
        (e.g. ``sft``) choose them from the data section, the task section and the columns ``present``.
        """
        return self.roles, self.optional_roles, self.default_columns

    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
        """One batch from tokenized rows. Default: dynamic padding (:func:`rayft.data.collate.pad_batch`)."""
        return pad_batch(features, pad_id)

    def pack(self, columns: dict[str, list[Any]], max_length: int) -> dict[str, list[Any]] | None:
        """The tokenized training split packed into rows of about ``max_length`` tokens (``train.packing``, see
        :func:`rayft.data.packing.pack_split`), or None where this task's rows cannot share one.

        Default: None (the config check refuses packing for such tasks before any work starts).
        """
        return None

    def collate_packed(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
        """One batch of packed rows. Default: :func:`rayft.data.packing.pad_packed`."""
        return pad_packed(features, pad_id)

    def compute_loss(self, model: Any, batch: dict[str, torch.Tensor], params: TaskParams) -> torch.Tensor:
        """The training loss of one batch (already on the model's device) under the task's parameters.

        Default: the model's own loss.
        """
        return model(**{k: v for k, v in batch.items() if k != "index"}).loss

    def losses(self, model: Any, batch: dict[str, torch.Tensor], params: TaskParams) -> Iterator[torch.Tensor]:
        """The losses one training batch gives, each followed by the loop's backward and optimizer step before the
        next is asked for (PPO: several epochs of minibatch updates on one rollout batch).

        Default: one, :meth:`compute_loss`.
        """
        yield self.compute_loss(model, batch, params)

    def updates_per_batch(self, params: TaskParams) -> int:
        """How many losses :meth:`losses` yields per training batch (the schedule's length counts them).

        Default: 1.
        """
        return 1

    @contextlib.contextmanager
    def saving(self, model: torch.nn.Module) -> Iterator[None]:
        """The model as its result is written: parts used only for training (PPO's value head) are taken off.

        Default: the model as it is.
        """
        yield

    def step_figures(self, model: Any) -> dict[str, float]:
        """What the last :meth:`compute_loss` measured besides the loss (an RL task's reward, KL, rollout time...);
        the loop averages them between evaluations and reports them as ``train_<name>``.

        Default: nothing.
        """
        return {}

    def peft_task_type_for(self, cfg: ExperimentConfig) -> str:
        """The peft task type of this run's model. Default: :attr:`peft_task_type`; a task whose head depends on the
        run (``distill`` learns its teacher's task) answers per config."""
        return self.peft_task_type

    def serves_for(self, task: dict[str, Any]) -> str | None:
        """The task whose routes serve a result trained with this task section (a stored manifest's
        ``config["task"]``). Default: :attr:`serves_as`."""
        return self.serves_as

    def prepare_model(self, model: torch.nn.Module, params: TaskParams) -> torch.nn.Module:
        """The task's last touch on the model after the method is applied (e.g. DPO's frozen reference), under the
        task's parameters.

        Default: the model unchanged.
        """
        return model

    def sampler(self, columns: dict[str, list[Any]], cfg: ExperimentConfig, rank: int, world: int, *,
                train: bool) -> torch.utils.data.Sampler | None:
        """The rows of a split this rank reads, in order, where the task chooses them (multi-task: each batch from
        one task). Default: None, rayft's own (a ``DistributedSampler``, or the curriculum's)."""
        return None

    def metric_names(self, raw: dict[str, Any]) -> tuple[str, ...]:
        """The metrics (without prefix) a run of this task reports, for the raw config ``raw``.

        Default: :attr:`metrics`; a multi-task run adds each head's own.
        """
        return self.metrics

    def finish_eval_columns(self, parts: list[dict[str, Any]], columns: dict[str, list[Any]]) -> dict[str, float]:
        """Metrics from the partial results and the split's columns (for metrics that need the raw text).

        Default: :meth:`finish_eval`, which needs only the partial results.
        """
        return self.finish_eval(parts)


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
    return task.params.model_validate(cfg.task.params())


def task_roles(task: Task, data: dict[str, Any], present: list[str],
               task_section: dict[str, Any] | None = None) -> tuple[dict, dict, dict]:
    """(required roles, optional roles, default columns) for this data: fixed for most tasks,
    chosen by the data layout for tasks that read several layouts (e.g. ``sft``)."""
    return task.roles_for(data, task_section or {}, present)


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


def serving_task(name: str, config: dict[str, Any] | None = None) -> str:
    """The task whose routes serve results of task ``name`` (a DPO-tuned model completes text like an SFT one),
    trained with the experiment ``config`` (a manifest's recorded config; it decides for tasks such as ``distill``)."""
    if name not in TASKS:
        return name
    return TASKS.get(name).serves_for(((config or {}).get("task") or {})) or name


def method_problem(task: Task, method: str) -> str | None:
    """Why ``method`` cannot be used for ``task``, or None when it can."""
    return task.unsupported_methods.get(method)
