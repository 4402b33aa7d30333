"""Driver side of ``rayft train``: prepare data once, launch a Ray Train run, summarize the result."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayft.config.loader import dump_config
from rayft.config.schema import ExperimentConfig
from rayft.console import LOG_NAME, Console
from rayft.options import StartupOptions
from rayft.train.handoff import LoopConfig


@dataclass
class TrainOutcome:
    metrics: dict[str, Any]
    checkpoint_path: str | None
    run_dir: str
    seconds: float
    ray_start_s: float = 0.0  # starting (or joining) Ray, part of ``seconds``


def storage_location(cfg: ExperimentConfig):
    """This experiment's runs folder (``output_dir/name``) on its filesystem: local, NFS or ``s3://...``."""
    from rayft.storage import resolve

    return resolve(cfg.output_dir).child(cfg.name)


def placement(cfg: ExperimentConfig, worker_cpus: float | None = None) -> dict[str, Any]:
    """Ray Train scaling for this config: resources per worker, placement strategy, collective backend.

    GPUs (``scaling.gpus_per_worker > 0``) train over nccl; CPU-only workers over gloo.
    """
    resources = {**cfg.scaling.resources_per_worker, "CPU": worker_cpus or cfg.scaling.cpus_per_worker}
    use_gpu = cfg.scaling.gpus_per_worker > 0
    if use_gpu:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    backend = cfg.scaling.backend if cfg.scaling.backend != "auto" else ("nccl" if use_gpu else "gloo")
    return {"num_workers": cfg.scaling.num_workers, "use_gpu": use_gpu, "resources_per_worker": resources,
            "placement_strategy": cfg.scaling.placement_strategy, "backend": backend}


def make_trainer(cfg: ExperimentConfig, data: Any, *, run_name: str, storage_path: str,
                 callbacks: list[Any] | None = None, verbose: bool = False, label: str = "train",
                 worker_cpus: float | None = None, trial_started_at: float | None = None,
                 start_checkpoint: Any = None,
                 storage_filesystem: Any = None, clean_up_placement_groups: bool = True,
                 autoscaling: bool = True, worker_env: dict[str, str] | None = None,
                 datasets: dict[str, Any] | None = None, progress: Any = None):
    """A Ray Train data-parallel trainer running :func:`rayft.train.worker.train_loop_per_worker` for this config.

    It starts lean: only the workers import the training stack (:mod:`rayft.train.entry`) and torch
    (:class:`~rayft.train.backend.WorkerTorchConfig`), Ray Train's dataset machinery is left out, and the run's
    controller quiets its own threads on a local Ray (:class:`~rayft.train.quiet.QuietRun`).

    ``worker_cpus`` overrides the CPUs each worker reserves (sweeps shave a little so trials fit);
    the worker's thread count still follows ``scaling.cpus_per_worker``. ``trial_started_at`` (when the
    enclosing trial started, for start-up timing) and ``start_checkpoint`` (another run's checkpoint to start
    from) go to the workers in their :class:`~rayft.train.handoff.LoopConfig`. ``storage_filesystem`` is the
    pyarrow filesystem of ``storage_path`` (None: local). ``clean_up_placement_groups=False`` leaves out Ray
    Train's placement-group cleaner (an actor polling the state API every second), for runs that cannot
    outlive their Ray. ``autoscaling=False`` leaves out Ray Train's autoscaling coordinator, for a Ray with no
    autoscaler (one rayft started on this machine). ``worker_env``: environment variables of the workers'
    processes (their runtime environment). ``progress``: a :class:`~rayft.train.progress.ProgressBoard` actor
    that rank 0 reports its progress to.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    scaling = placement(cfg, worker_cpus)
    backend = scaling.pop("backend")
    loop_config = LoopConfig(dump_config(cfg), data, verbose=verbose, label=label, trial_started_at=trial_started_at,
                             start_checkpoint=start_checkpoint, progress=progress)
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from rayft.ray_internals import lean_trainer_class
    from rayft.train.backend import WorkerTorchConfig
    from rayft.train.entry import train_loop_per_worker  # only the workers import the training stack
    from rayft.train.quiet import QuietRun

    trainer_class = lean_trainer_class(DataParallelTrainer, clean_up_placement_groups, autoscaling)
    return trainer_class(
        train_loop_per_worker,
        train_loop_config=loop_config.to_ray(),
        backend_config=WorkerTorchConfig(backend=backend),
        scaling_config=ScalingConfig(**scaling),
        datasets=datasets or None,  # data.engine ray: Ray Train splits them, each worker reads its shard
        run_config=RunConfig(
            name=run_name, storage_path=storage_path, storage_filesystem=storage_filesystem,
            callbacks=[*(callbacks or []), QuietRun()], checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
            **({"worker_runtime_env": {"env_vars": worker_env}} if worker_env else {}),
        ),
    )


def latest_run(root: Any, prefix: str = "train-") -> str | None:
    """Name of the newest run folder under ``root`` (a local Path or a :class:`rayft.storage.Location`)."""
    if not isinstance(root, Path):
        runs = [name for name in root.subdirs() if name.startswith(prefix)]
        return runs[-1] if runs else None
    runs = sorted(p.name for p in root.glob(prefix + "*") if p.is_dir()) if root.is_dir() else []
    return runs[-1] if runs else None


def run_training(cfg: ExperimentConfig, *, resume: bool = False, address: str | None = None,
                 verbose: bool = True, options: StartupOptions | None = None,
                 console: Console | None = None) -> TrainOutcome:
    """Train once with Ray Train + DeepSpeed. With ``resume``, continue the latest run of this experiment.

    ``options`` say how a Ray started here runs (default: :func:`rayft.options.startup_options`); a run never
    starts the dashboard on a Ray of its own. With a ``console`` (``rayft train``) the run shows a progress bar
    and its evaluations there (:mod:`rayft.train.progress`) and the libraries' output goes to ``rayft.log`` in
    the run's folder; without one, rank 0 prints its progress lines when ``verbose``.

    Raises:
        RayftError: for bad data or a resume request with no earlier run.
    """
    import ray

    from rayft.cluster import init_ray, starts_private_ray
    from rayft.data import prepare_data
    from rayft.data.prepare import describe_lengths
    from rayft.errors import RayftError

    start = time.perf_counter()
    loc = storage_location(cfg)
    root = Path(loc.path) if loc.local else loc
    run_name = latest_run(root) if resume else None
    if resume and run_name is None:
        raise RayftError(f"--resume: no earlier run of {cfg.name!r} under {root}")
    run_name = run_name or time.strftime("train-%Y%m%d-%H%M%S")
    if console:
        from rayft.paths import cache_dir

        console.log_to((Path(loc.path) if loc.local else cache_dir("runs", cfg.name)) / run_name / LOG_NAME)
    # A local Ray started for this one run ends with it: nothing it leaves can outlive the run, and it has no
    # autoscaler, so neither the dashboard nor Ray Train's placement-group cleaner and autoscaling coordinator
    # is needed, and training gets their share of the CPU.
    private = starts_private_ray(address)
    if cfg.data.engine == "ray":  # Ray Data reads and tokenizes on the cluster: Ray first (ray_start_s then ~0)
        init_ray(address, dashboard=not private, options=options)
    data = prepare_data(cfg)
    if verbose or console:
        (console.line if console else print)(f"data: {data.raw_sizes} labels={data.labels} tokenized in "
                                             f"{data.seconds:.1f}s; "
                                             + describe_lengths(data.stats.get("lengths", {}),
                                                              None if cfg.tasks else cfg.model.max_length))
    ray_started = time.perf_counter()
    init_ray(address, dashboard=not private, options=options)
    ray_start_s = time.perf_counter() - ray_started
    board = None
    if console:
        from rayft.train.progress import board_actor

        board = board_actor().remote()
    trainer = make_trainer(cfg, ray.put(data), run_name=run_name, storage_path=loc.path, verbose=verbose,
                           storage_filesystem=None if loc.local else loc.fs, clean_up_placement_groups=not private,
                           autoscaling=not private, datasets=data.datasets, progress=board)
    result = _fit(trainer, board, console)
    return TrainOutcome(dict(result.metrics or {}), loc.uri(result.checkpoint.path) if result.checkpoint else None,
                        loc.child(run_name).uri(), time.perf_counter() - start, ray_start_s)


def _fit(trainer: Any, board: Any, console: Console | None) -> Any:
    """``trainer.fit()``, its progress drawn on ``console`` from ``board`` (when both are given).

    Raises:
        KeyboardInterrupt: Ctrl-C stopped the run. Ray Train's own handler aborts the run on the first Ctrl-C
            and then ends the process with ``sys.exit``; the CLI reports an interrupt instead, once the local
            Ray is shut down.
    """
    try:
        if board is None:
            return trainer.fit()
        from rayft.train.progress import TrainView

        with TrainView(board, console):  # type: ignore[arg-type]
            return trainer.fit()
    except SystemExit:
        raise KeyboardInterrupt from None
