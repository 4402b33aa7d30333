"""Connecting to Ray: a local instance started for the user, or an existing cluster by address."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from rayft.paths import setup_env

WORKER_ENV = ("DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR", "TOKENIZERS_PARALLELISM", "RAYFT_CACHE", "WANDB_MODE",
              "HF_HUB_OFFLINE", "RAY_TRAIN_V2_ENABLED", "RAY_TRAIN_ENABLE_PRINT_PATCH", "HF_HUB_DISABLE_PROGRESS_BARS",
              "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "WANDB_SILENT")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_ray(address: str | None = None, *, num_cpus: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Start (or connect to) Ray with the environment rayft's workers need; returns cluster resources.

    ``address`` is ``None`` for a local Ray started here, or ``auto`` / ``HOST:PORT`` / ``ray://HOST:PORT``.
    """
    import ray

    setup_env()
    if ray.is_initialized():
        return ray.cluster_resources()
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": not quiet,
                              "configure_logging": True, "logging_level": "WARNING"}
    if address:
        if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").is_file():
            os.environ["RAY_AUTH_MODE"] = "token"  # Ray 2.60 clusters enable token auth when a token exists
        ray.init(address=address, **kwargs)
    else:
        # The dashboard serves the state API that Ray Train's placement-group cleaner polls.
        # RAYFT_DASHBOARD=0 saves ~5% throughput on a 2-core machine, but then Ray Train cannot clean up
        # the placement groups of trials that ASHA stops (and logs a warning every second): keep it for sweeps.
        dashboard = os.environ.get("RAYFT_DASHBOARD", "1") != "0"
        port_kwargs: dict[str, Any] = {}
        if dashboard:
            # Pin the state API's address for this instance: without it, Ray's state clients (the cleaner
            # included) auto-detect "the" local cluster and fail when several run on one machine.
            port = free_port()
            os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
            env["RAY_API_SERVER_ADDRESS"] = os.environ["RAY_API_SERVER_ADDRESS"]
            port_kwargs["dashboard_port"] = port
        # address="local": always a fresh instance, never a cluster someone started with `ray start` on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 **port_kwargs, **kwargs)
    return ray.cluster_resources()
