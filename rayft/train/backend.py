"""Torch process groups for Ray Train, with torch imported only in the processes that train.

Ray's ``TorchConfig`` lives in ``ray.train.torch.config``, which imports torch at the top, and Ray pickles the
config into every process that handles a run. The Tune trial actor and the Ray Train controller therefore import
torch (about 1.5 s each on two cores, before any worker exists) just to call functions that run in the workers.
:class:`WorkerTorchConfig` does what ``TorchConfig`` does for CPU and GPU workers — the same worker-side functions
of that module, called by name — and so keeps torch out of the trial actor and the controller.

Raises nothing of its own: process-group errors surface from the workers as Ray Train reports them.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import ray
from ray.train.backend import Backend, BackendConfig

logger = logging.getLogger(__name__)

TORCH_CONFIG = "ray.train.torch.config"
# The functions of ``ray.train.torch.config`` called in the workers (a unit test checks they exist).
WORKER_FUNCTIONS = ("_set_torch_distributed_env_vars", "_setup_torch_process_group", "_shutdown_torch",
                    "TorchConfigContextManager")
SHUTDOWN_TIMEOUT_S = 30


def _torch_config_attr(name: str) -> Any:
    """``ray.train.torch.config.<name>``; importing that module imports torch, so only workers call this."""
    return getattr(importlib.import_module(TORCH_CONFIG), name)


def _call_in_worker(name: str, **kwargs: Any) -> Any:
    return _torch_config_attr(name)(**kwargs)


def _set_master(addr: str, port: int) -> None:
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)


class WorkerDeviceContext:
    """Ray's ``TorchConfigContextManager`` around the training function (selects a GPU worker's device)."""

    def __enter__(self) -> Any:
        self._inner = _torch_config_attr("TorchConfigContextManager")()
        return self._inner.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._inner.__exit__(*exc)


@dataclass
class WorkerTorchConfig(BackendConfig):
    """``ray.train.torch.TorchConfig`` with ``init_method="env"``, importable without torch.

    Args:
        backend: the ``torch.distributed`` backend (``gloo`` on CPU, ``nccl`` on GPUs).
        timeout_s: seconds before a collective operation times out.
    """

    backend: str = "gloo"
    timeout_s: int = 1800

    @property
    def backend_cls(self) -> type[Backend]:
        return WorkerTorchBackend

    @property
    def train_func_context(self) -> type[WorkerDeviceContext]:
        return WorkerDeviceContext

    @property
    def framework(self) -> Any:
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}


class WorkerTorchBackend(Backend):
    """Sets up and tears down the workers' process group as Ray's ``_TorchBackend`` does (env init method)."""

    share_cuda_visible_devices: bool = True

    def on_start(self, worker_group: Any, backend_config: WorkerTorchConfig) -> None:
        from ray.train._internal.utils import get_address_and_port

        addr, port = worker_group.execute_single(0, get_address_and_port)
        worker_group.execute(_set_master, addr=addr, port=port)
        worker_group.execute(_call_in_worker, name="_set_torch_distributed_env_vars")
        ray.get([worker_group.execute_single_async(i, _call_in_worker, name="_setup_torch_process_group",
                                                   backend=backend_config.backend, world_rank=i,
                                                   world_size=len(worker_group), init_method="env://",
                                                   timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])

    def on_shutdown(self, worker_group: Any, backend_config: WorkerTorchConfig) -> None:
        from ray.exceptions import GetTimeoutError

        futures = worker_group.execute_async(_call_in_worker, name="_shutdown_torch",
                                             destroy_process_group=len(worker_group) > 1)
        try:
            ray.get(futures, timeout=SHUTDOWN_TIMEOUT_S)
        except GetTimeoutError:
            logger.warning("torch process group shutdown timed out after %s s", SHUTDOWN_TIMEOUT_S)
