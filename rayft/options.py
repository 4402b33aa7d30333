"""rayft's start-up options, and the one module that reads rayft's environment variables.

:class:`StartupOptions` says how rayft starts the processes of a run or a sweep: the sweep's warm worker pool
(:mod:`rayft.sweep.warm`), the quiet local Ray (:func:`rayft.cluster.quiet_settings`), the niceness of Ray's own
threads (:mod:`rayft.train.quiet`) and the dashboard. The CLI builds one and passes it down; Python callers pass
their own or leave it out, and then :func:`startup_options` reads the defaults from the environment.

The other variables are read here too, each by one function: the cache folder, the admin token and the cluster
address that users set, and the variables rayft itself sets for processes Ray starts on its behalf (a Ray Train
worker gets only its runtime environment from the driver, so these carry what it must know as it starts).

Imports nothing but the standard library: Ray's worker processes import this module as they start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

# Set by users.
WARM_VAR = "RAYFT_WARM"  # "0": sweeps start every trial in fresh processes
QUIET_VAR = "RAYFT_RAY_QUIET"  # "0": a local Ray keeps Ray's default periodic work
NICE_VAR = "RAYFT_RAY_NICE"  # niceness of Ray's own threads on a local Ray (0: leave them)
DASHBOARD_VAR = "RAYFT_DASHBOARD"  # "1": a local Ray serves the dashboard
CACHE_VAR = "RAYFT_CACHE"  # cache folder (default ~/.cache/rayft)
ADMIN_TOKEN_VAR = "RAYFT_ADMIN_TOKEN"  # bearer token of the serving admin routes
ADDRESS_VAR = "RAYFT_ADDRESS"  # the cluster's dashboard URL for the job commands (after RAY_JOB_ADDRESS)
# Set by rayft for the processes Ray starts for it.
QUIET_THREADS_VAR = "RAYFT_QUIET_THREADS"  # "1": this process belongs to a local Ray rayft started
PRELOAD_MODEL_TYPE_VAR = "RAYFT_PRELOAD_MODEL_TYPE"  # e.g. "bert": transformers.models.bert.modeling_bert
PRELOAD_QUANTIZED_VAR = "RAYFT_PRELOAD_QUANTIZED"  # "1": the method uses bitsandbytes
PRELOAD_TAG_VAR = "RAYFT_PRELOAD_TAG"  # the sweep the process was started for (to find its unused ones at the end)

MAX_NICE = 19


@dataclass(frozen=True)
class StartupOptions:
    """How rayft starts the processes of a run or a sweep.

    Attributes:
        warm_pool: a sweep has Ray prestart the next trials' processes, with the training stack imported, while
            earlier trials train (:mod:`rayft.sweep.warm`).
        quiet_ray: a Ray started here does less periodic work (:func:`rayft.cluster.quiet_settings`).
        nice: niceness (0-19) of Ray's own threads and bookkeeping processes on a Ray started here, so they
            yield the CPU to training (:mod:`rayft.train.quiet`); 0 leaves every priority alone.
        dashboard: a Ray started here serves the dashboard (with the Jobs and state APIs); nothing rayft runs
            needs it.

    Raises:
        RayftError: ``nice`` outside 0-19.
    """

    warm_pool: bool = True
    quiet_ray: bool = True
    nice: int = MAX_NICE
    dashboard: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.nice, bool) or not isinstance(self.nice, int) or not 0 <= self.nice <= MAX_NICE:
            from rayft.errors import RayftError

            raise RayftError(f"StartupOptions.nice: expected an integer from 0 to {MAX_NICE} (${NICE_VAR}), "
                             f"got {self.nice!r}")


def startup_options(environ: Mapping[str, str] | None = None, **overrides: bool | int | None) -> StartupOptions:
    """:class:`StartupOptions` with defaults from the environment (``environ``, default ``os.environ``), and
    ``overrides`` (those not None) on top, e.g. a CLI flag.

    ``RAYFT_WARM=0``, ``RAYFT_RAY_QUIET=0`` and ``RAYFT_DASHBOARD=1`` switch the pool, the quiet Ray and the
    dashboard; ``RAYFT_RAY_NICE=N`` sets the niceness.

    Raises:
        RayftError: ``RAYFT_RAY_NICE`` is not an integer from 0 to 19.
    """
    env = os.environ if environ is None else environ
    nice = env.get(NICE_VAR, str(MAX_NICE))
    try:
        nice_value: int = int(nice)
    except ValueError:
        from rayft.errors import RayftError

        raise RayftError(f"${NICE_VAR}: expected an integer from 0 to {MAX_NICE}, got {nice!r}") from None
    options = StartupOptions(warm_pool=env.get(WARM_VAR, "1") != "0", quiet_ray=env.get(QUIET_VAR, "1") != "0",
                             nice=nice_value, dashboard=env.get(DASHBOARD_VAR, "0") == "1")
    return replace(options, **{k: v for k, v in overrides.items() if v is not None})


def cache_root() -> Path:
    """rayft's cache folder: ``$RAYFT_CACHE``, default ``~/.cache/rayft``."""
    return Path(os.environ.get(CACHE_VAR) or Path.home() / ".cache" / "rayft")


def forwarded_env() -> dict[str, str]:
    """rayft's variables that the processes Ray starts should see as the driver does (the cache folder)."""
    return {CACHE_VAR: os.environ[CACHE_VAR]} if CACHE_VAR in os.environ else {}


def admin_token() -> str | None:
    """The serving admin token from ``$RAYFT_ADMIN_TOKEN`` (None when unset or empty)."""
    return os.environ.get(ADMIN_TOKEN_VAR) or None


def job_address() -> str | None:
    """The cluster the job commands talk to: ``$RAY_JOB_ADDRESS``, else ``$RAYFT_ADDRESS`` (None: neither)."""
    return os.environ.get("RAY_JOB_ADDRESS") or os.environ.get(ADDRESS_VAR) or None


def thread_env(nice: int) -> dict[str, str]:
    """The variables that tell the processes of a local Ray to lower Ray's threads to ``nice``
    (:func:`thread_niceness` reads them there)."""
    return {QUIET_THREADS_VAR: "1", NICE_VAR: str(nice)}


def thread_niceness() -> int:
    """The niceness this process gives Ray's threads: ``$RAYFT_RAY_NICE`` (default 19) in a process of a local
    Ray rayft started (``$RAYFT_QUIET_THREADS=1``, :func:`thread_env`), else 0 (priorities left alone)."""
    if os.environ.get(QUIET_THREADS_VAR) != "1":
        return 0
    try:
        return int(os.environ.get(NICE_VAR, str(MAX_NICE)))
    except ValueError:
        return 0  # the driver refused such a value before it started Ray


@dataclass(frozen=True)
class WorkerPreload:
    """What a prestarted worker process imports as it starts (:mod:`rayft.train.preload`).

    Attributes:
        model_type: the model's ``model_type`` (its transformers modeling module is imported too; "": none).
        quantized: the method uses bitsandbytes (otherwise the process treats it as not installed).
        tag: the sweep the process is started for (to find its unused ones at the end).
    """

    model_type: str = ""
    quantized: bool = False
    tag: str = ""

    def env(self) -> dict[str, str]:
        """The variables that hand this over to the process (read back by :func:`worker_preload`)."""
        return {PRELOAD_MODEL_TYPE_VAR: self.model_type, PRELOAD_QUANTIZED_VAR: "1" if self.quantized else "0",
                PRELOAD_TAG_VAR: self.tag}


def worker_preload(environ: Mapping[str, str] | None = None) -> WorkerPreload:
    """The :class:`WorkerPreload` in ``environ`` (default: this process's environment; or another process's)."""
    env = os.environ if environ is None else environ
    return WorkerPreload(env.get(PRELOAD_MODEL_TYPE_VAR, ""), env.get(PRELOAD_QUANTIZED_VAR) == "1",
                         env.get(PRELOAD_TAG_VAR, ""))
