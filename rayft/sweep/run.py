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
from rayft.console import LOG_NAME, Console
from rayft.options import StartupOptions
from rayft.sweep.handoff import TrialPlan, TrialSetup
from rayft.sweep.pareto import pareto_front
from rayft.sweep.results import best_trial, result_rows, write_summary
from rayft.sweep.search import limit_concurrency, make_scheduler, make_searcher, objectives, storage_url
from rayft.sweep.space import apply_sample, flat_params
from rayft.sweep.trial import rayft_trial
from rayft.train.steps import batches_per_epoch, steps_per_epoch, total_steps, updates_per_batch

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
    batches = batches_per_epoch(cfg, train_rows)
    updates = updates_per_batch(cfg)
    steps, every = total_steps(cfg, batches, updates), cfg.train.eval_every or steps_per_epoch(cfg, batches, updates)
    return max(1, math.ceil(steps / every))  # one every ``every`` steps, and one at the last step


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
              resume: bool = False, options: StartupOptions | None = None,
              console: Console | None = None) -> SweepOutcome:
    """Run the experiment's sweep, or with ``resume`` continue its latest one after the driver died.

    ``options`` say how a Ray started here runs and whether later trials start in prestarted processes
    (default: :func:`rayft.options.startup_options`). With a ``console`` (``rayft sweep``), the sweep shows
    rayft's live view of its trials there (:class:`~rayft.sweep.progress.SweepView`; Tune's own output is off,
    ``verbose`` is ignored) and the libraries' output goes to ``rayft.log`` in the sweep's folder; without one,
    Tune reports at ``verbose`` and everything prints as it comes.

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
    from rayft.options import startup_options
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
    say = console.line if console else _print
    if console:
        console.log_to(sweep_dir / LOG_NAME)
    data = prepare_data(cfg)  # tokenized once for every trial, shared through the object store
    say(f"data: {data.raw_sizes} tokenized once in {data.seconds:.1f}s; labels={data.labels}")
    private = starts_private_ray(address)  # a Ray started here: no autoscaler to ask
    options = options or startup_options()
    resources = init_ray(address, options=options)
    concurrent, worker_cpus = fit_trials(cfg, resources.get("CPU", 1.0))
    warm = options.warm_pool  # later trials start in prestarted processes (rayft.sweep.warm)
    # The hub relays the trials' reports, frees stopped trials' placement groups and prestarts processes.
    hub = start_hub(sweep_name, warm_trials=max(0, cfg.sweep.num_trials - concurrent) if warm else 0)
    tag = f"{cfg.name}/{sweep_name}"  # marks the processes prestarted for this sweep
    setup = TrialSetup(dump_config(cfg), ray.put(data), hub, loc.child(sweep_name, "trials").path, worker_cpus,
                       plan=trial_plan(cfg), storage_filesystem=fs, warm=tag if warm else None,
                       model_type=model_type(data.model_path) if warm else "",  # read once, not per trial
                       private=private)
    trainable = tune.with_parameters(rayft_trial, setup=setup)
    trainable.__name__ = setup.plan.trainable_name
    trainable = tune.with_resources(trainable, {"CPU": TRIAL_CPU})
    pairs = objectives(cfg)
    from rayft.data.packing import training_rows  # torch: the driver only, never the trial side

    rows = training_rows(cfg, data)  # packed rows under train.packing
    view = _view(cfg, console, rows)
    if previous:
        say(f"resuming sweep {sweep_name}: finished trials are kept, unfinished ones continue from their "
            f"last checkpoint")
        tuner = tune.Tuner.restore(str(sweep_dir) if loc.local else loc.child(sweep_name).path,
                                   trainable=trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)  # with the callbacks it had: a view finds the console
    else:
        tuner = _new_tuner(cfg, trainable, sweep_name, sweep_dir, rows, concurrent,
                           0 if view else verbose, loc, view=view, say=say)
    grid = tuner.fit()
    if cfg.sweep.scheduler == "pbt" and loc.local:
        from rayft.sweep.pbt import describe_exploits

        say(describe_exploits(sweep_dir))
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


def trial_plan(cfg: ExperimentConfig) -> TrialPlan:
    """How the trials deal with the scheduler: under one that pauses trials (PBT, ASHA with deferred promotion)
    they hand Tune a checkpoint with every report and resume from the one Tune restarts them with (see
    :mod:`rayft.sweep.trial`)."""
    return TrialPlan(pausable=cfg.sweep.scheduler == "pbt"
                     or (cfg.sweep.scheduler == "asha" and cfg.sweep.asha_promotion == "deferred"))


def _local_side(cfg: ExperimentConfig) -> Path:
    """Local folder for driver-side files (Optuna study, W&B offline runs) when the runs live on remote storage."""
    from rayft.paths import cache_dir

    return cache_dir("runs", cfg.name)


def _print(text: str) -> None:
    print(text, flush=True)


def _view(cfg: ExperimentConfig, console: Console | None, train_rows: int) -> Any:
    """The live view of the sweep's trials on ``console`` (None without one)."""
    if console is None:
        return None
    from rayft.sweep.progress import SweepView

    def steps_of(sample: dict[str, Any]) -> int:
        trial_cfg = apply_sample(dump_config(cfg), sample)
        return total_steps(trial_cfg, batches_per_epoch(trial_cfg, train_rows))

    return SweepView(console, *objectives(cfg)[0], steps_of=steps_of)


def _new_tuner(cfg: ExperimentConfig, trainable: Any, sweep_name: str, sweep_dir: Path, train_rows: int,
               concurrent: int, verbose: int, loc: Any, view: Any = None, say: Any = _print) -> Any:
    from ray import tune

    pairs = objectives(cfg)
    max_t = evaluations_per_trial(cfg, train_rows)
    searcher, num_trials, param_space = make_searcher(cfg, sweep_dir, sweep_name)  # Tune caps its concurrency
    say(f"sweep {sweep_name}: {num_trials} trials, {concurrent} at a time, {cfg.sweep.searcher} + "
        f"{cfg.sweep.scheduler}, objective{'s' if len(pairs) > 1 else ''} "
        f"{', '.join(f'{mode} {metric}' for metric, mode in pairs)}")
    callbacks = [*_callbacks(cfg, sweep_name, sweep_dir), *([view] if view else [])]
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
           "latest_sweep_name", "metric_and_mode", "run_sweep", "trial_plan"]
