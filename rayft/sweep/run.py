"""Driver side of ``rayft sweep``: Ray Tune + Optuna over trials that are each a Ray Train run."""

from __future__ import annotations

import gc
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayft.config.loader import dump_config
from rayft.config.schema import ExperimentConfig
from rayft.sweep.pareto import pareto_front
from rayft.sweep.results import best_trial, result_rows, write_summary
from rayft.sweep.search import limit_concurrency, make_scheduler, make_searcher, objectives, storage_url
from rayft.sweep.space import apply_sample, flat_params

TRIAL_CPU = 0.01  # the trial function only waits on its Ray Train run
SWEEP_PREFIX = "sweep-"


@dataclass
class TrialRow:
    trial_id: str
    status: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint_path: str | None
    evaluations: int
    curve: list[dict[str, Any]] = field(default_factory=list)  # one entry per evaluation (learning curve)


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
    objectives: list[tuple[str, str]] = field(default_factory=list)
    pareto: list[str] = field(default_factory=list)  # trial ids on the Pareto front (multi-objective)
    storage: str | None = None


def metric_and_mode(cfg: ExperimentConfig) -> tuple[str, str]:
    """The sweep's primary objective (the scheduler's): the configured one, else the task's main metric."""
    return objectives(cfg)[0]


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


def _callbacks(cfg: ExperimentConfig, sweep_name: str, sweep_dir: Path) -> list[Any]:
    mode = cfg.tracking.resolved_mode()
    if not cfg.tracking.wandb or mode == "disabled":
        return []
    from rayft.track.wandb_callback import WandbCallback

    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    wandb_dir = Path(cfg.tracking.dir or sweep_dir / "wandb").resolve()
    wandb_dir.mkdir(parents=True, exist_ok=True)
    return [WandbCallback(project=cfg.tracking.project, group=sweep_name, dir=str(wandb_dir),
                          mode=mode, log_config=True, upload_checkpoints=False, job_type="trial")]


def rayft_trial(sample: dict[str, Any], base: dict[str, Any], data: dict[str, Any], storage: str,
                worker_cpus: float, lean_start: bool = True, storage_filesystem: Any = None) -> None:
    """One trial: apply the sampled values and run a Ray Train job whose reports reach Tune through the hub.

    The Train run is named after the trial, so a restarted trial (driver resumed, or retried after a
    failure) finds its own latest checkpoint and continues from it. ``lean_start=False`` is Ray's stock
    path, kept as the start-up baseline: a queue actor per trial relays the reports.

    Raises:
        Exception: whatever ended the Train run (Tune retries the trial up to ``sweep.max_failures`` times).
    """
    started_at = time.time()
    from ray import tune

    args = (sample, base, data, storage, worker_cpus, lean_start, storage_filesystem)
    if not lean_start:
        from ray.tune.integration.ray_train import TuneReportCallback

        trial_trainer(*args, callbacks=[TuneReportCallback()], started_at=started_at).fit()
        return
    from rayft.sweep.hub import hub_callbacks, relay_reports, run_key

    def register(metrics: dict[str, Any], checkpoint: Any) -> None:
        if checkpoint is not None:
            metrics["checkpoint_path"] = checkpoint.path  # what the sweep's results and exports read
        tune.report(metrics)

    key = run_key(tune.get_context().get_trial_id())
    trainer = trial_trainer(*args, callbacks=hub_callbacks(data["hub"], key, warm=bool(data.get("warm"))),
                            started_at=started_at)
    relay_reports(data["hub"], key, trainer, register)


def trial_trainer(sample: dict[str, Any], base: dict[str, Any], data: dict[str, Any], storage: str,
                  worker_cpus: float, lean_start: bool, storage_filesystem: Any, *, callbacks: list[Any],
                  started_at: float, start: Any = None) -> Any:
    """The Ray Train run of the current Tune trial, with the sampled values applied.

    It is named after the trial; with ``start`` (a checkpoint Tune restarts the trial from) it is a run of its
    own under a new name, so it cannot pick up an older checkpoint of the trial, and its workers begin there.
    With the lean start-up the sweep's hub frees the run's placement group should the trial be stopped (see
    :mod:`rayft.sweep.hub`), so Ray Train's cleaner actor is left out; so is its autoscaling coordinator on a Ray
    the sweep started (``data["private"]``). With ``data["warm"]`` (the sweep's tag) the workers' processes
    import the training stack as they start (see :mod:`rayft.sweep.warm`).
    """
    from ray import tune

    from rayft.train.run import make_trainer

    cfg = apply_sample(base, sample)
    worker_env = None
    if lean_start and data.get("warm"):
        from rayft.sweep.warm import warm_env

        worker_env = warm_env(cfg, data["model_type"], data["warm"])
    trial_id = tune.get_context().get_trial_id()
    run_name = trial_id if start is None else f"{trial_id}-{time.time_ns() // 1_000_000}"
    return make_trainer(cfg, data["ref"], run_name=run_name, storage_path=storage, callbacks=callbacks,
                        label=trial_id, worker_cpus=worker_cpus,
                        extra={"trial_started_at": started_at, "start_checkpoint": start},
                        lean_start=lean_start, storage_filesystem=storage_filesystem,
                        clean_up_placement_groups=not lean_start, autoscaling=not data.get("private"),
                        worker_env=worker_env)


def latest_sweep(root: Path) -> Path | None:
    """The most recent sweep folder of an experiment (one Tune can restore)."""
    found = sorted(p for p in root.glob(SWEEP_PREFIX + "*") if (p / "tuner.pkl").is_file()) if root.is_dir() else []
    return found[-1] if found else None


def latest_sweep_name(loc: Any) -> str | None:
    """The most recent restorable sweep of an experiment's storage location (a local folder or a URI)."""
    names = [n for n in loc.subdirs() if n.startswith(SWEEP_PREFIX) and loc.child(n).is_file("tuner.pkl")]
    return names[-1] if names else None


def _previous_sweep(cfg: ExperimentConfig, loc: Any, root: Path) -> str:
    """The sweep ``--resume`` continues: the latest one Tune saved where the runs live.

    Raises:
        RayftError: with no earlier sweep, or (runs on remote storage) when the driver-side Optuna study is
            not on this machine and no shared ``sweep.storage`` database holds it.
    """
    from rayft.errors import RayftError
    from rayft.sweep.search import STUDY_FILE

    name = latest_sweep_name(loc)
    if name is None:
        raise RayftError(f"--resume: no earlier sweep of {cfg.name!r} under {loc.uri()}")
    study = root / name / STUDY_FILE
    if not loc.local and cfg.sweep.searcher != "grid" and not cfg.sweep.storage and not study.is_file():
        raise RayftError(f"--resume: sweep {name} keeps its runs on {loc.uri()}, but its Optuna study was kept "
                         f"by the driver that started it ({study}), which is not on this machine; resume where "
                         "it started (for a Ray Job: the same head node), or set sweep.storage to a database "
                         "every driver reaches (e.g. postgresql://...)")
    return name


def run_sweep(cfg: ExperimentConfig, *, address: str | None = None, verbose: int = 1,
              resume: bool = False) -> SweepOutcome:
    """Run the experiment's sweep, or with ``resume`` continue its latest one after the driver died.

    The sweep lives where ``output_dir`` points (a local or NFS folder, or ``s3://...``); resuming finds the
    latest sweep there, so a resubmitted Ray Job continues the sweep its stopped predecessor left.

    Raises:
        RayftError: for bad data, or ``resume`` with no earlier sweep.
    """
    import ray
    from ray import tune

    from rayft.cluster import init_ray, starts_private_ray
    from rayft.data import prepare_data
    from rayft.sweep.hub import start_hub
    from rayft.sweep.warm import enabled as warm_enabled
    from rayft.sweep.warm import release_unused
    from rayft.train.preload import model_type
    from rayft.train.run import storage_location

    start = time.perf_counter()
    loc = storage_location(cfg)  # local folder, NFS path or s3://... (pyarrow filesystem)
    fs = None if loc.local else loc.fs
    root = Path(loc.path) if loc.local else _local_side(cfg)  # driver-side files (study, W&B) stay local
    previous = _previous_sweep(cfg, loc, root) if resume else None
    sweep_name = previous or time.strftime(SWEEP_PREFIX + "%Y%m%d-%H%M%S")
    sweep_dir = root / sweep_name
    data = prepare_data(cfg)  # tokenized once for every trial, shared through the object store
    print(f"data: {data.raw_sizes} tokenized once in {data.seconds:.1f}s; labels={data.labels}", flush=True)
    private = starts_private_ray(address)  # a Ray started here: no autoscaler to ask
    resources = init_ray(address)
    concurrent, worker_cpus = fit_trials(cfg, resources.get("CPU", 1.0))
    lean_start = os.environ.get("RAYFT_LEAN_START", "1") != "0"
    warm = lean_start and warm_enabled()  # later trials start in prestarted processes (rayft.sweep.warm)
    # The hub relays the trials' reports, frees stopped trials' placement groups and prestarts processes.
    hub = start_hub(sweep_name, warm_trials=max(0, cfg.sweep.num_trials - concurrent) if warm else 0)
    tag = f"{cfg.name}/{sweep_name}"  # marks the processes prestarted for this sweep
    shared = {"ref": ray.put(data), "hub": hub, "warm": tag if warm else None,
              "model_type": model_type(data.model_path) if warm else "",  # read once, not per trial
              "private": private}
    trainable = tune.with_resources(
        tune.with_parameters(_trial_function(cfg), base=dump_config(cfg), data=shared,
                             storage=loc.child(sweep_name, "trials").path, worker_cpus=worker_cpus,
                             lean_start=lean_start, storage_filesystem=fs),
        {"CPU": TRIAL_CPU},
    )
    pairs = objectives(cfg)
    if previous:
        print(f"resuming sweep {sweep_name}: finished trials are kept, unfinished ones continue from their "
              f"last checkpoint", flush=True)
        tuner = tune.Tuner.restore(str(sweep_dir) if loc.local else loc.child(sweep_name).path,
                                   trainable=trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)
    else:
        tuner = _new_tuner(cfg, trainable, sweep_name, sweep_dir, data.size("train"), concurrent, verbose, loc)
    grid = tuner.fit()
    if cfg.sweep.scheduler == "pbt" and loc.local:
        from rayft.sweep.pbt import describe_exploits

        print(describe_exploits(sweep_dir), flush=True)
    del tuner
    gc.collect()  # finish W&B logging actors while Ray is still up
    if warm:
        release_unused(tag)  # prestarted for trials that never came (the sweep ended or was interrupted)
    rows = result_rows(grid, TrialRow, loc)
    where = str(sweep_dir) if loc.local else loc.child(sweep_name).uri()
    outcome = SweepOutcome(sweep_name, where, pairs[0][0], pairs[0][1], rows,
                           best_trial(rows, *pairs[0]), time.perf_counter() - start, objectives=pairs,
                           storage=None if cfg.sweep.searcher == "grid" or cfg.sweep.scheduler == "pbt"
                           else storage_url(cfg, sweep_dir))
    outcome.pareto = pareto_front(rows, pairs) if len(pairs) > 1 else []
    write_summary(outcome, dump_config(cfg))
    return outcome


def _trial_function(cfg: ExperimentConfig) -> Any:
    """The trial. Under a scheduler that pauses trials (PBT, ASHA with deferred promotion) it hands Tune a
    checkpoint with every report and resumes from the one Tune restarts it with (see :mod:`rayft.sweep.pbt_trial`)."""
    if cfg.sweep.scheduler == "pbt" or (cfg.sweep.scheduler == "asha" and cfg.sweep.asha_promotion == "deferred"):
        from rayft.sweep.pbt_trial import rayft_pbt_trial

        return rayft_pbt_trial
    return rayft_trial


def _local_side(cfg: ExperimentConfig) -> Path:
    """Local folder for driver-side files (Optuna study, W&B offline runs) when the runs live on remote storage."""
    from rayft.paths import cache_dir

    return cache_dir("runs", cfg.name)


def _new_tuner(cfg: ExperimentConfig, trainable: Any, sweep_name: str, sweep_dir: Path, train_rows: int,
               concurrent: int, verbose: int, loc: Any) -> Any:
    from ray import tune

    pairs = objectives(cfg)
    max_t = evaluations_per_trial(cfg, train_rows)
    searcher, num_trials, param_space = make_searcher(cfg, sweep_dir, sweep_name)  # Tune caps its concurrency
    print(f"sweep {sweep_name}: {num_trials} trials, {concurrent} at a time, {cfg.sweep.searcher} + "
          f"{cfg.sweep.scheduler}, objective{'s' if len(pairs) > 1 else ''} "
          f"{', '.join(f'{mode} {metric}' for metric, mode in pairs)}", flush=True)
    callbacks = _callbacks(cfg, sweep_name, sweep_dir)
    scheduler = make_scheduler(cfg, *pairs[0], max_t, concurrent)
    searcher, max_concurrent = limit_concurrency(searcher, scheduler, concurrent)
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=num_trials, max_concurrent_trials=max_concurrent,
                                    reuse_actors=False),  # a stopped trial's actor takes its Train run along
        run_config=tune.RunConfig(name=sweep_name, storage_path=str(sweep_dir.parent) if loc.local else loc.path,
                                  storage_filesystem=None if loc.local else loc.fs, verbose=verbose,
                                  callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=cfg.sweep.max_failures)),
    )


__all__ = ["SweepOutcome", "TrialRow", "apply_sample", "evaluations_per_trial", "fit_trials", "flat_params",
           "latest_sweep", "latest_sweep_name", "metric_and_mode", "run_sweep"]
