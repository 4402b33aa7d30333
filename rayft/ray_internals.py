"""Every use of a private Ray API in rayft: the one module that a Ray upgrade can break.

rayft's start-up work (the lean trainer, the torch-free backend, the quiet threads, the sweep's hub and warm
worker pool) builds on parts of Ray that Ray does not promise to keep: modules under ``ray._private``,
``ray.train._internal`` and ``ray.train.v2._internal``, private functions of ``ray.train.torch.config``, private
methods of Ray Train's trainer and scaling policy, and the raylet's ``PrestartWorkers`` call. They are all named
here, and the rest of rayft imports them from this module under public names.

Names in :data:`PRIVATE` resolve on first use (a module ``__getattr__``), so importing this module imports no
part of Ray: each process pays only for what it touches, and the Tune trial actor and the Ray Train controller
never import torch (see :mod:`rayft.train.entry`). :data:`OVERRIDDEN` lists the private methods rayft overrides
and the methods of Ray Train's internal worker group it calls, :data:`PRIVATE_ATTRIBUTES` the private attributes
of Ray objects it reads; the functions at the end of this module are the only places that touch either.
The unit tests of this module resolve every entry of these tables, so a Ray upgrade that moves one fails there,
naming this module and the symbol.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name here -> (Ray module, attribute there).
PRIVATE: dict[str, tuple[str, str]] = {
    # Ray Train v2's callback interfaces (rayft's callbacks run on the Train controller).
    "ControllerCallback": ("ray.train.v2._internal.execution.callback", "ControllerCallback"),
    "WorkerGroupCallback": ("ray.train.v2._internal.execution.callback", "WorkerGroupCallback"),
    # Default callbacks that the lean trainer leaves out, and the scaling policy it replaces on a local Ray.
    "DatasetsCallback": ("ray.train.v2._internal.callbacks.datasets", "DatasetsCallback"),
    "PlacementGroupCleanerCallback": ("ray.train.v2._internal.callbacks.placement_group_callback",
                                      "PlacementGroupCleanerCallback"),
    "FixedScalingPolicy": ("ray.train.v2._internal.execution.scaling_policy", "FixedScalingPolicy"),
    "TrainingFramework": ("ray.train.v2._internal.util", "TrainingFramework"),
    "get_address_and_port": ("ray.train._internal.utils", "get_address_and_port"),
    # The worker-side functions of Ray's torch backend (that module imports torch: only workers resolve these).
    "set_torch_distributed_env_vars": ("ray.train.torch.config", "_set_torch_distributed_env_vars"),
    "setup_torch_process_group": ("ray.train.torch.config", "_setup_torch_process_group"),
    "shutdown_torch": ("ray.train.torch.config", "_shutdown_torch"),
    "TorchConfigContextManager": ("ray.train.torch.config", "TorchConfigContextManager"),
    # Core: this process's worker, the raylet's gRPC channel, job packaging, the setup-hook variable's name.
    "global_worker": ("ray._private.worker", "global_worker"),
    "init_grpc_channel": ("ray._private.grpc_utils", "init_grpc_channel"),
    "create_package": ("ray._private.runtime_env.packaging", "create_package"),
    "SETUP_HOOK_VAR": ("ray._private.ray_constants", "WORKER_PROCESS_SETUP_HOOK_ENV_VAR"),
    # Ray Tune's per-trial W&B logging actor, and the callback attribute naming its class (rayft.track).
    "RayWandbLoggingActor": ("ray.air.integrations.wandb", "_WandbLoggingActor"),
    # The raylet's PrestartWorkers call (generated gRPC code, no public client).
    "PrestartWorkersRequest": ("ray.core.generated.node_manager_pb2", "PrestartWorkersRequest"),
    "NodeManagerServiceStub": ("ray.core.generated.node_manager_pb2_grpc", "NodeManagerServiceStub"),
}

# Private methods and class attributes of Ray classes that rayft overrides or calls, and the methods of Ray Train's
# internal worker-group class that the functions below call: "module:Class" -> names.
OVERRIDDEN: dict[str, tuple[str, ...]] = {
    "ray.train.v2.api.data_parallel_trainer:DataParallelTrainer": ("_create_default_callbacks",
                                                                   "_initialize_and_run_controller"),
    "ray.train.v2._internal.execution.scaling_policy:FixedScalingPolicy": ("_maybe_send_resource_request",
                                                                           "_send_resource_request"),
    "ray.runtime_env:RuntimeEnvConfig": ("build_proto_runtime_env_config",),
    "ray.air.integrations.wandb:WandbLoggerCallback": ("_logger_actor_cls",),
    "ray.train.v2._internal.execution.worker_group:WorkerGroup": ("execute", "execute_async", "execute_single",
                                                                  "execute_single_async", "get_worker_group_state",
                                                                  "__len__"),
}

# Private attributes of Ray objects (class attributes, or set by the class's methods) that rayft reads or sets:
# "module:Class" -> names.
PRIVATE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "ray.tune.schedulers:PopulationBasedTraining": ("_synch",),
    "ray.tune.schedulers:TrialScheduler": ("_metric", "_supports_buffered_results"),
    "ray.air.integrations.wandb:_WandbLoggingActor": ("_wandb",),
}


class RayMovedError(ImportError):
    """A private Ray API that rayft uses is not where this module expects it (after a Ray upgrade)."""


def resolve(module: str, attribute: str, name: str | None = None) -> Any:
    """``module.attribute``; raises :class:`RayMovedError` naming this module and the symbol if it is gone."""
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise RayMovedError(f"rayft.ray_internals: {name or attribute} ({module}.{attribute}) is not in this "
                            f"version of Ray ({exc}); update rayft/ray_internals.py to where it moved") from exc


def __getattr__(name: str) -> Any:
    if name == "LocalScalingPolicy":
        value: Any = _local_scaling_policy()
    elif name in PRIVATE:
        value = resolve(*PRIVATE[name], name=name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # resolved once; pickling by reference finds the same object
    return value


def lean_trainer_class(base: type, clean_up_placement_groups: bool = True, autoscaling: bool = True) -> type:
    """``base`` (a Ray Train trainer class) minus the Ray Data shard callback when the run has no Ray Datasets
    (rayft's never do), minus the placement-group cleaner unless ``clean_up_placement_groups``, and with the
    autoscaling coordinator left out unless ``autoscaling`` (:class:`LocalScalingPolicy`).

    Ray Train adds the first to every run, and it starts a ``DatasetManager`` actor (one more process,
    importing Ray Data) before the workers' first step; rayft hands data over through the object store instead.
    The cleaner is one more actor per run that asks the state API every second whether the controller lives,
    to free its placement group if it died; a run whose Ray ends with it has nothing to free.
    """
    datasets_cb = __getattr__("DatasetsCallback")
    left_out = () if clean_up_placement_groups else (__getattr__("PlacementGroupCleanerCallback"),)

    class Trainer(base):  # type: ignore[misc, valid-type]
        def _create_default_callbacks(self) -> list[Any]:
            callbacks = super()._create_default_callbacks()
            drop = left_out if self.datasets else (datasets_cb, *left_out)
            return [cb for cb in callbacks if not isinstance(cb, drop)]

        def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
            fixed = __getattr__("FixedScalingPolicy")
            if not autoscaling and type(controller_init_kwargs.get("scaling_policy")) is fixed:
                controller_init_kwargs["scaling_policy"] = __getattr__("LocalScalingPolicy")(self.scaling_config)
            return super()._initialize_and_run_controller(**controller_init_kwargs)

    Trainer.__name__ = base.__name__  # as Ray names it in its messages
    return Trainer


def _local_scaling_policy() -> type:
    """Ray Train's fixed-size scaling without the autoscaling coordinator, for a Ray that rayft started itself.

    Ray Train's fixed policy registers every run's resources with an ``AutoscalingCoordinator``: one more actor
    process per Ray instance, which forwards the request to the cluster autoscaler. A local Ray that rayft starts
    for a run or a sweep has no autoscaler, so the actor would only cost its idle wake-ups. The Train controller
    unpickles the policy, and so imports this module.
    """

    class LocalScalingPolicy(__getattr__("FixedScalingPolicy")):  # type: ignore[misc]
        """``FixedScalingPolicy`` that never asks the autoscaling coordinator (so never starts it)."""

        def after_controller_start(self, train_run_context: Any) -> None:
            self._requester_id = f"train-{train_run_context.run_id}"  # no client: cancelling is then a no-op

        def _maybe_send_resource_request(self) -> None:
            return None

        def _send_resource_request(self) -> None:
            return None

    LocalScalingPolicy.__module__, LocalScalingPolicy.__qualname__ = __name__, "LocalScalingPolicy"
    return LocalScalingPolicy


def worker_group_placement_group(worker_group: Any) -> Any:
    """The placement group of a Ray Train worker group (as handed to a ``WorkerGroupCallback``)."""
    return worker_group.get_worker_group_state().placement_group_handle.placement_group


# Ray Train hands backends and worker-group callbacks its internal ``WorkerGroup``; rayft runs functions on the
# workers only through these.
def worker_count(worker_group: Any) -> int:
    """How many workers a Ray Train worker group has."""
    return len(worker_group)


def run_on_workers(worker_group: Any, fn: Any, /, **kwargs: Any) -> list[Any]:
    """``fn(**kwargs)`` on every worker of the group, waited for; the results in rank order."""
    return worker_group.execute(fn, **kwargs)


def run_on_workers_async(worker_group: Any, fn: Any, /, **kwargs: Any) -> list[Any]:
    """``fn(**kwargs)`` on every worker of the group; one object ref per worker, in rank order."""
    return worker_group.execute_async(fn, **kwargs)


def run_on_worker(worker_group: Any, rank: int, fn: Any, /, **kwargs: Any) -> Any:
    """``fn(**kwargs)`` on the group's worker of rank ``rank``, waited for."""
    return worker_group.execute_single(rank, fn, **kwargs)


def run_on_worker_async(worker_group: Any, rank: int, fn: Any, /, **kwargs: Any) -> Any:
    """``fn(**kwargs)`` on the group's worker of rank ``rank``; its object ref."""
    return worker_group.execute_single_async(rank, fn, **kwargs)


def declare_scheduler(scheduler: Any, metric: str, buffered_results: bool) -> None:
    """Declare what a Tune ``TrialScheduler`` written in rayft schedules on: its ``metric`` (what Tune's
    ``scheduler.metric`` answers) and whether Tune may hand it results in batches (``buffered_results``; a
    scheduler that must stop or pause a trial at an exact step says no). Tune's schedulers set both as private
    attributes, and Tune reads them there."""
    scheduler._metric = metric
    scheduler._supports_buffered_results = buffered_results


def pbt_is_synchronous(scheduler: Any) -> bool:
    """Whether a Tune ``PopulationBasedTraining`` scheduler was made with ``synch=True`` (it keeps no public
    record of it)."""
    return bool(scheduler._synch)


def use_wandb_logging_actor(callback_cls: type, actor_cls: type) -> None:
    """Have Tune's ``WandbLoggerCallback`` subclass ``callback_cls`` log each trial with ``actor_cls`` (a subclass
    of :data:`RayWandbLoggingActor`) instead of Ray's own actor."""
    callback_cls._logger_actor_cls = actor_cls


def wandb_module(logging_actor: Any) -> Any:
    """The ``wandb`` module a Tune W&B logging actor imported (set once its ``run`` has begun)."""
    return logging_actor._wandb


def current_runtime_env() -> str:
    """The serialized runtime environment of the calling Ray process."""
    return __getattr__("global_worker").core_worker.get_current_runtime_env()


def prestart_workers(raylet_address: str, job_id: str, runtime_env: str, count: int, keep_alive_s: int) -> None:
    """Ask the raylet at ``raylet_address`` (host:port) to start ``count`` idle worker processes of
    ``runtime_env`` (serialized) for job ``job_id`` (hex), kept at least ``keep_alive_s`` seconds.

    Raises:
        grpc.RpcError: the raylet refused or could not be reached.
    """
    from ray.core.generated import common_pb2, runtime_environment_pb2
    from ray.runtime_env import RuntimeEnvConfig

    channel = __getattr__("init_grpc_channel")(raylet_address)
    try:
        info = runtime_environment_pb2.RuntimeEnvInfo(
            serialized_runtime_env=runtime_env,
            runtime_env_config=RuntimeEnvConfig.default_config().build_proto_runtime_env_config())
        __getattr__("NodeManagerServiceStub")(channel).PrestartWorkers(
            __getattr__("PrestartWorkersRequest")(language=common_pb2.PYTHON, job_id=bytes.fromhex(job_id),
                                                  runtime_env_info=info, keep_alive_duration_secs=keep_alive_s,
                                                  num_workers=count), timeout=10)
    finally:
        channel.close()
