"""Tasks: one module per task, each registering itself in :data:`TASKS`."""

from rayft.tasks import (  # noqa: F401  (registration)
    distill, dpo, extractive_qa, grpo, multitask, ppo, reward_model, sequence_classification, sft, token_classification,
)
from rayft.tasks.base import (TASKS, Task, TaskParams, get_task, method_problem, register_task, resolve_columns,
                              task_params, task_roles)

__all__ = ["TASKS", "Task", "TaskParams", "get_task", "method_problem", "register_task", "resolve_columns",
           "task_params", "task_roles"]
