"""The (task, method, parameters) of one run, resolved once per worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rayft.config.schema import ExperimentConfig
from rayft.methods import Method, MethodParams, get_method
from rayft.tasks import Task, TaskParams, get_task, task_params


@dataclass(frozen=True)
class Recipe:
    """What a run trains and how: the config, its task and method, and their validated parameters.

    Built once at the start of the worker loop (:meth:`of`) and handed to every building block of
    :mod:`rayft.train.engine`, so none of them looks a name up in the registries or validates parameters again.
    """

    cfg: ExperimentConfig
    task: Task
    method: Method
    method_params: MethodParams
    task_params: TaskParams

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> Recipe:
        """Resolve the config's task and method and validate their parameters.

        Raises:
            UnknownNameError: if the task or the method is not registered.
            pydantic.ValidationError: if their parameters do not fit their schemas (a validated config's do).
        """
        task, method = get_task(cfg.task.name), get_method(cfg.method.name)
        return cls(cfg, task, method, method.params.model_validate(cfg.method_params()), task_params(task, cfg))

    def lr_gate(self, blocks: int, steps_per_epoch: int) -> Callable[[int, int], float] | None:
        """The method's learning-rate gate for a model of ``blocks`` blocks (None: the method has none)."""
        return self.method.lr_gate(self.method_params, blocks, steps_per_epoch)

    @property
    def gates_lr(self) -> bool:
        """True when the method gates learning rates by depth (gradual unfreezing): optimizer groups go by depth."""
        return self.lr_gate(0, 1) is not None
