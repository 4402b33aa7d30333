"""Torch process groups for Ray Train, with torch imported only in the processes that train.

Ray's ``TorchConfig`` lives in ``ray.train.torch.config``, which imports torch at the top, and Ray pickles the
config into every process that handles a run. The Tune trial actor and the Ray Train controller therefore import
torch (see docs/benchmarks.md for its cost) before any worker exists, just to call functions that run in the workers.
:class:`WorkerTorchConfig` does what ``TorchConfig`` does for CPU and GPU workers — the same worker-side functions
of that module, called by name — and so keeps torch out of the trial actor and the controller.

Raises nothing of its own: process-group errors surface from the workers as Ray Train reports them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import ray
from ray.train.backend import Backend, BackendConfig

from rayft import ray_internals

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 30


def _call_in_worker(name: str, **kwargs: Any) -> Any:
    """``ray.train.torch.config``'s function ``name`` (see :data:`rayft.ray_internals.PRIVATE`); resolving it
    imports torch, so only workers call this."""
    return getattr(ray_internals, name)(**kwargs)


def _set_master(addr: str, port: int) -> None:
    os.environ["MASTER_ADDR"] = addr
    os.environ["MASTER_PORT"] = str(port)


class WorkerDeviceContext:
    """Ray's ``TorchConfigContextManager`` around the training function (selects a GPU worker's device)."""

    def __enter__(self) -> Any:
        self._inner = ray_internals.TorchConfigContextManager()
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
        return ray_internals.TrainingFramework.TORCH

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "init_method": "env", "timeout_s": self.timeout_s}


class WorkerTorchBackend(Backend):
    """Sets up and tears down the workers' process group as Ray's ``_TorchBackend`` does (env init method)."""

    share_cuda_visible_devices: bool = True

    def on_start(self, worker_group: Any, backend_config: WorkerTorchConfig) -> None:
        workers = ray_internals.worker_count(worker_group)
        addr, port = ray_internals.run_on_worker(worker_group, 0, ray_internals.get_address_and_port)
        ray_internals.run_on_workers(worker_group, _set_master, addr=addr, port=port)
        ray_internals.run_on_workers(worker_group, _call_in_worker, name="set_torch_distributed_env_vars")
        ray.get([ray_internals.run_on_worker_async(worker_group, i, _call_in_worker, name="setup_torch_process_group",
                                                   backend=backend_config.backend, world_rank=i, world_size=workers,
                                                   init_method="env://", timeout_s=backend_config.timeout_s)
                 for i in range(workers)])

    def on_shutdown(self, worker_group: Any, backend_config: WorkerTorchConfig) -> None:
        from ray.exceptions import GetTimeoutError

        futures = ray_internals.run_on_workers_async(worker_group, _call_in_worker, name="shutdown_torch",
                                                     destroy_process_group=ray_internals.worker_count(worker_group) > 1)
        try:
            ray.get(futures, timeout=SHUTDOWN_TIMEOUT_S)
        except GetTimeoutError:
            logger.warning("torch process group shutdown timed out after %s s", SHUTDOWN_TIMEOUT_S)
