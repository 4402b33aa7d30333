"""Searcher, scheduler and objective factories for a sweep (Optuna through Ray Tune's ``OptunaSearch``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rayft.config.schema import ExperimentConfig
from rayft.sweep.space import define_by_run, grid_points

STUDY_FILE = "optuna.db"


def objectives(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """``(metric, mode)`` pairs, the scheduler's (primary) metric first."""
    from rayft.tasks import get_task

    task = get_task(cfg.task.name)
    pairs = [(o.metric, o.mode) for o in cfg.sweep.objectives]
    if not pairs:
        return [(cfg.sweep.metric or task.default_metric, cfg.sweep.mode or task.default_mode)]
    primary = cfg.sweep.metric or pairs[0][0]
    return sorted(pairs, key=lambda p: p[0] != primary)


def storage_url(cfg: ExperimentConfig, sweep_dir: Path) -> str:
    """The Optuna study's storage: the configured SQLAlchemy URL, else a SQLite file beside the sweep."""
    return cfg.sweep.storage or f"sqlite:///{(sweep_dir / STUDY_FILE).resolve()}"


def make_searcher(cfg: ExperimentConfig, sweep_dir: Path, study_name: str) -> tuple[Any, int, dict[str, Any]]:
    """The Tune searcher, the number of trials it will run and the Tuner's param space.

    TPE and random search are Optuna samplers (seeded) over the define-by-run space, recording every
    trial in persistent storage; grid enumerates every combination branch by branch (a parameter of
    another branch stays ``None`` in a trial's config).
    """
    if cfg.sweep.scheduler == "pbt":  # PBT searches by mutation; its population is a seeded random draw
        from ray.tune.search.basic_variant import BasicVariantGenerator

        from rayft.sweep.space import tune_space

        return BasicVariantGenerator(random_state=cfg.sweep.seed), cfg.sweep.num_trials, tune_space(cfg.sweep.space)
    if cfg.sweep.searcher == "grid":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        points = grid_points(cfg)
        placeholders = {key: None for point in points for key in point}  # Tune fills these from each point
        return BasicVariantGenerator(points_to_evaluate=points, random_state=cfg.sweep.seed), len(points), placeholders
    import optuna
    from optuna.storages import RDBStorage
    from ray.tune.search.optuna import OptunaSearch

    if cfg.sweep.searcher == "random":
        sampler = optuna.samplers.RandomSampler(seed=cfg.sweep.seed)
    else:
        # group=True models each method's branch separately; constant_liar keeps parallel trials apart.
        sampler = optuna.samplers.TPESampler(seed=cfg.sweep.seed, n_startup_trials=tpe_startup_trials(cfg),
                                             multivariate=True, group=True, constant_liar=True)
    pairs = objectives(cfg)
    metric: Any = [m for m, _ in pairs] if len(pairs) > 1 else pairs[0][0]
    mode: Any = [m for _, m in pairs] if len(pairs) > 1 else pairs[0][1]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = RDBStorage(storage_url(cfg, sweep_dir), engine_kwargs=_engine_kwargs(cfg))
    searcher = OptunaSearch(space=define_by_run(cfg), metric=metric, mode=mode, sampler=sampler,
                            study_name=study_name, storage=storage)
    return searcher, cfg.sweep.num_trials, {}


def tpe_startup_trials(cfg: ExperimentConfig) -> int:
    """Finished trials TPE needs before it models their results (it draws at random until then; Optuna counts
    completed and pruned trials): ``sweep.startup_trials``, else a third of the sweep (at least 2)."""
    return cfg.sweep.startup_trials or max(2, cfg.sweep.num_trials // 3)


def _engine_kwargs(cfg: ExperimentConfig) -> dict[str, Any]:
    url = cfg.sweep.storage or "sqlite"
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}


def make_scheduler(cfg: ExperimentConfig, metric: str, mode: str, max_t: int, concurrent: int | None = None) -> Any:
    """ASHA, median stopping or population based training on the primary metric (or none).

    ``concurrent`` (trials running at once) lets PBT know whether its population shares the cluster, and tells
    ASHA with deferred promotion (:mod:`rayft.sweep.asha`) how many trials it may resume at once."""
    if cfg.sweep.scheduler == "none":
        return None
    if cfg.sweep.scheduler == "pbt":
        from rayft.sweep.pbt import make_pbt

        return make_pbt(cfg, metric, mode, max_t, concurrent)
    grace = min(cfg.sweep.grace_period, max_t)
    if cfg.sweep.scheduler == "median":
        from ray.tune.schedulers import MedianStoppingRule

        return MedianStoppingRule(time_attr="training_iteration", metric=metric, mode=mode, grace_period=grace,
                                  min_samples_required=2)
    if cfg.sweep.asha_promotion == "deferred":
        from rayft.sweep.asha import DeferredASHA, Parking

        return DeferredASHA(metric=metric, mode=mode, max_t=max_t, grace_period=grace,
                            reduction_factor=cfg.sweep.reduction_factor, concurrent=concurrent or 1, parking=Parking())
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", metric=metric, mode=mode, max_t=max_t, grace_period=grace,
                         reduction_factor=cfg.sweep.reduction_factor)


def load_study(url: str, study_name: str) -> Any:
    """The sweep's Optuna study, read back from its storage (for reports and checks)."""
    import optuna

    return optuna.load_study(study_name=study_name, storage=url)


def limit_concurrency(searcher: Any, scheduler: Any, concurrent: int) -> tuple[Any, int | None]:
    """The searcher and the Tuner's ``max_concurrent_trials``: under ASHA with deferred promotion the searcher is
    wrapped in a limiter that does not count trials waiting at a rung (Tune's own would wait for them forever)."""
    from rayft.sweep.asha import DeferredASHA, ParkingLimiter

    if isinstance(scheduler, DeferredASHA):
        return ParkingLimiter(searcher, concurrent, scheduler.parking), None
    return searcher, concurrent
