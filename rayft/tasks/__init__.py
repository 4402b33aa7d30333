"""Tasks: one module per task, each registering itself in :data:`TASKS`."""

from rayft.tasks import sequence_classification, sft  # noqa: F401  (registration)
from rayft.tasks.base import TASKS, Task, get_task, register_task, resolve_columns

__all__ = ["TASKS", "Task", "get_task", "register_task", "resolve_columns"]
