"""Driver side of ``rayft sweep``: Ray Tune + Optuna over trials that are each a Ray Train run."""

from __future__ import annotations

import gc
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayft.config.loader import dump_config
from rayft.config.schema import ExperimentConfig
from rayft.sweep.space import apply_sample, flat_params, tune_space

TRIAL_CPU = 0.01  # the trial function only waits on its Ray Train run


@dataclass
class TrialRow:
    trial_id: str
    status: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint_path: str | None
    evaluations: int


@dataclass
class SweepOutcome:
    name: str
    path: str
    metric: str
    mode: str
    trials: list[TrialRow]
    best: TrialRow | None
    seconds: float
    exported: list[str] = field(default_factory=list)


def metric_and_mode(cfg: ExperimentConfig) -> tuple[str, str]:
    """The sweep's objective: the configured one, else the task's main metric."""
    from rayft.tasks import get_task

    task = get_task(cfg.task.name)
    return cfg.sweep.metric or task.default_metric, cfg.sweep.mode or task.default_mode


def fit_trials(cfg: ExperimentConfig, cluster_cpus: float) -> tuple[int, float]:
    """How many trials run at once and the CPUs each worker requests so that they fit the cluster."""
    per_trial = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    concurrent = max(1, int(cluster_cpus // per_trial))
    concurrent = min(concurrent, cfg.sweep.num_trials, cfg.sweep.max_concurrent or concurrent)
    # Leave room for the trial functions themselves, so N trials fit on N * per_trial CPUs.
    worker_cpus = min(cfg.scaling.cpus_per_worker,
                      (cluster_cpus / concurrent - TRIAL_CPU) / cfg.scaling.num_workers)
    return concurrent, round(max(worker_cpus, 0.01), 4)


def evaluations_per_trial(cfg: ExperimentConfig, train_rows: int) -> int:
    """Evaluations a full-length trial makes (ASHA's ``max_t``)."""
    per_rank = math.ceil(train_rows / cfg.scaling.num_workers)
    steps_per_epoch = max(1, math.ceil(math.ceil(per_rank / cfg.train.batch_size) / cfg.train.grad_accum))
    steps = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    return max(1, math.ceil(steps / (cfg.train.eval_every or steps_per_epoch)))


def _searcher(cfg: ExperimentConfig, metric: str, mode: str):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sampler = (optuna.samplers.TPESampler(seed=cfg.sweep.seed, n_startup_trials=max(2, cfg.sweep.num_trials // 3))
               if cfg.sweep.searcher == "optuna" else optuna.samplers.RandomSampler(seed=cfg.sweep.seed))
    return OptunaSearch(metric=metric, mode=mode, sampler=sampler)


def _scheduler(cfg: ExperimentConfig, max_t: int):
    if cfg.sweep.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=min(cfg.sweep.grace_period, max_t),
                         reduction_factor=cfg.sweep.reduction_factor)


def _callbacks(cfg: ExperimentConfig, sweep_name: str, sweep_dir: Path) -> list[Any]:
    mode = cfg.tracking.resolved_mode()
    if not cfg.tracking.wandb or mode == "disabled":
        return []
    from ray.air.integrations.wandb import WandbLoggerCallback

    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    wandb_dir = Path(cfg.tracking.dir or sweep_dir / "wandb").resolve()
    wandb_dir.mkdir(parents=True, exist_ok=True)
    return [WandbLoggerCallback(project=cfg.tracking.project, group=sweep_name, dir=str(wandb_dir),
                                mode=mode, log_config=True, upload_checkpoints=False, job_type="trial")]


def rayft_trial(sample: dict[str, Any], base: dict[str, Any], data: dict[str, Any], storage: str, worker_cpus: float,
                storage_filesystem: Any = None) -> None:
    """One trial: apply the sampled values and run a Ray Train job that reports into Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from rayft.train.run import make_trainer

    cfg = apply_sample(base, sample)
    trial_id = tune.get_context().get_trial_id()
    trainer = make_trainer(cfg, data["ref"], run_name=trial_id, storage_path=storage,
                           callbacks=[TuneReportCallback()], label=trial_id, worker_cpus=worker_cpus,
                           storage_filesystem=storage_filesystem)
    trainer.fit()


def run_sweep(cfg: ExperimentConfig, *, address: str | None = None, verbose: int = 1) -> SweepOutcome:
    """Run the experiment's sweep; export the best trial if configured.

    Raises:
        RayftError: for bad data; Ray errors propagate for infrastructure failures.
    """
    import ray
    from ray import tune

    from rayft.cluster import init_ray
    from rayft.data import prepare_data
    from rayft.train.run import storage_location

    start = time.perf_counter()
    metric, mode = metric_and_mode(cfg)
    loc = storage_location(cfg)  # local folder, NFS path or s3://... (pyarrow filesystem)
    fs = None if loc.local else loc.fs
    root = Path(loc.path) if loc.local else _local_side(cfg)
    sweep_name = time.strftime("sweep-%Y%m%d-%H%M%S")
    data = prepare_data(cfg)  # tokenized once for every trial
    print(f"data: {data.raw_sizes} tokenized once in {data.seconds:.1f}s; labels={data.labels}", flush=True)
    resources = init_ray(address)
    concurrent, worker_cpus = fit_trials(cfg, resources.get("CPU", 1.0))
    max_t = evaluations_per_trial(cfg, data.size("train"))
    print(f"sweep {sweep_name}: {cfg.sweep.num_trials} trials, {concurrent} at a time, "
          f"{cfg.sweep.searcher} + {cfg.sweep.scheduler}, objective {mode} {metric}", flush=True)
    callbacks = _callbacks(cfg, sweep_name, root / sweep_name)
    trainable = tune.with_resources(
        tune.with_parameters(rayft_trial, base=dump_config(cfg), data={"ref": ray.put(data)},
                             storage=loc.child(sweep_name, "trials").path, worker_cpus=worker_cpus,
                             storage_filesystem=fs),
        {"CPU": TRIAL_CPU},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=tune_space(cfg.sweep.space),
        tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=_searcher(cfg, metric, mode),
                                    scheduler=_scheduler(cfg, max_t), num_samples=cfg.sweep.num_trials,
                                    max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(name=sweep_name, storage_path=loc.path, storage_filesystem=fs, verbose=verbose,
                                  callbacks=callbacks),
    )
    grid = tuner.fit()
    del tuner
    callbacks.clear()
    gc.collect()  # finish W&B logging actors while Ray is still up
    rows = [_row(r, loc) for r in grid]
    best = _best(rows, metric, mode)
    outcome = SweepOutcome(sweep_name, loc.child(sweep_name).uri(), metric, mode, rows, best,
                           time.perf_counter() - start)
    _write_summary(outcome, cfg, loc.child(sweep_name))
    return outcome


def _local_side(cfg: ExperimentConfig) -> Path:
    """Local folder for driver-side files (W&B offline runs) when the runs themselves live on remote storage."""
    from rayft.paths import cache_dir

    return cache_dir("runs", cfg.name)


def _row(result: Any, loc: Any = None) -> TrialRow:
    metrics = dict(result.metrics or {})
    config = metrics.pop("config", None) or result.config or {}
    status = "ERROR" if result.error else ("DONE" if metrics.get("final") else "STOPPED")
    return TrialRow(trial_id=str(metrics.get("trial_id") or Path(result.path).name), status=status,
                    params=flat_params(config), metrics={k: v for k, v in metrics.items() if _plain(v)},
                    checkpoint_path=loc.uri(metrics["checkpoint_path"]) if loc and metrics.get("checkpoint_path")
                    else metrics.get("checkpoint_path"),
                    evaluations=int(metrics.get("training_iteration") or 0))


def _plain(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def _best(rows: list[TrialRow], metric: str, mode: str) -> TrialRow | None:
    scored = [r for r in rows if isinstance(r.metrics.get(metric), (int, float)) and r.checkpoint_path]
    if not scored:
        return None
    # Prefer trials that trained to the end; among them the best objective.
    return sorted(scored, key=lambda r: (not r.metrics.get("final"),
                                         -r.metrics[metric] if mode == "max" else r.metrics[metric]))[0]


def _write_summary(outcome: SweepOutcome, cfg: ExperimentConfig, where: Any = None) -> None:
    """Write ``rayft_sweep.json`` (atomically) into the sweep folder, local or remote."""
    from rayft.storage import resolve

    where = where or resolve(outcome.path)
    payload = {"name": outcome.name, "metric": outcome.metric, "mode": outcome.mode, "seconds": outcome.seconds,
               "best": outcome.best.trial_id if outcome.best else None, "config": dump_config(cfg),
               "trials": [vars(t) for t in outcome.trials]}
    where.write_text("rayft_sweep.json", json.dumps(payload, indent=2, default=str))
