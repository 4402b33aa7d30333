"""Connecting to Ray: a local instance started for the user, or an existing cluster by address."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

from rayft.options import QUIET_THREADS_VAR, StartupOptions, forwarded_env, startup_options, thread_env
from rayft.paths import setup_env

# Variables of the driver's environment that rayft's workers get too (rayft's own: rayft.options.forwarded_env).
WORKER_ENV = ("DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR", "TOKENIZERS_PARALLELISM", "WANDB_MODE",
              "HF_HUB_OFFLINE", "RAY_TRAIN_V2_ENABLED", "RAY_TRAIN_ENABLE_PRINT_PATCH", "HF_HUB_DISABLE_PROGRESS_BARS",
              "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "WANDB_SILENT", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Ray's own processes on a local instance, by executable or script: none of them runs user code, so they can yield
# the CPU to training. The dashboard's modules run as "ray-dashboard-<Module>-0" processes forked before the
# dashboard was reniced. The raylet forks the workers from its main thread, so that one thread keeps its priority.
BOOKKEEPING = ("gcs_server", "dashboard.py", "log_monitor.py", "monitor.py", "ray::DashboardAgent",
               "ray::RuntimeEnvAgent", "ray-dashboard-", "raylet/raylet")
# Periodic work a local instance can do without: Prometheus metrics (nobody scrapes them without the dashboard),
# per-handler event statistics, a memory check four times a second (once a second still guards against OOM),
# every process's task events sent to the GCS each second (for the dashboard's task views; kept when it runs),
# the raylet's garbage-collection check and idle-worker sweep (10 and 5 times a second; once a second is plenty)
# and the GCS's pull of resource demand for an autoscaler (a local instance has none).
QUIET_SYSTEM_CONFIG = {"enable_metrics_collection": False, "event_stats": False, "memory_monitor_refresh_ms": 1000,
                       "task_events_report_interval_ms": 0, "raylet_check_gc_period_milliseconds": 1000,
                       "kill_idle_workers_interval_ms": 1000, "gcs_pull_resource_loads_period_milliseconds": 5000}
DASHBOARD_NEEDS = ("task_events_report_interval_ms",)
# Ray's log monitor globs the log folder on each 0.1 s pass while it follows fewer than 1,000 files; the files it
# follows are still read every 0.1 s, new ones (a new worker's) are found within a second.
QUIET_NODE_ENV = {"RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0", "LOG_NAME_UPDATE_INTERVAL_S": "1"}
# Without the dashboard nobody reads the node and process statistics each node's agent gathers every 5 s.
QUIET_AGENT_ENV = {"REPORTER_UPDATE_INTERVAL_MS": "60000"}


def quiet_settings(dashboard: bool, quiet: bool = True) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The system config and the environment of a local instance: a quiet one, or with ``quiet=False``
    (:attr:`rayft.options.StartupOptions.quiet_ray`) Ray's defaults. Variables the user set keep their values."""
    if not quiet:
        return None, {}
    config = {k: v for k, v in QUIET_SYSTEM_CONFIG.items() if not (dashboard and k in DASHBOARD_NEEDS)}
    env = {**QUIET_NODE_ENV, **({} if dashboard else QUIET_AGENT_ENV)}
    return config, {k: v for k, v in env.items() if k not in os.environ}


@contextlib.contextmanager
def environ(values: dict[str, str]):
    """Set environment variables for the processes started inside the block, then restore the previous ones."""
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def renice_threads(pid: int, niceness: int, keep: frozenset[int] = frozenset(),
                   only: set[int] | None = None) -> int:
    """Lower every thread of process ``pid`` (but ``keep``; of ``only`` if given) to ``niceness``; returns how
    many were changed.

    Linux keeps a niceness per thread, and renicing a process changes its main thread only: the threads it
    started before (gRPC pollers, event loops) would go on competing with training at full priority.
    """
    changed = 0
    for tid in thread_ids(pid):
        try:
            if tid not in keep and (only is None or tid in only) and os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
                changed += 1
        except OSError:
            continue  # exited meanwhile, or not ours to change
    return changed


def thread_ids(pid: int) -> set[int]:
    """The Linux thread ids of process ``pid`` (empty when it is gone, or elsewhere than Linux)."""
    try:
        return {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    except OSError:
        return set()


def lower_bookkeeping_priority(niceness: int) -> list[int]:
    """Renice the bookkeeping processes of the local Ray this process started, thread by thread; returns their pids.

    On a machine with few cores their periodic wake-ups take CPU time from the training threads; at the lowest
    priority (19) they get the smallest share of a busy CPU (:mod:`rayft.train.quiet`). ``niceness`` 0
    (:attr:`rayft.options.StartupOptions.nice`) turns this off.
    """
    if niceness <= 0:
        return []
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil ships with ray
        return []
    reniced = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
        except (psutil.Error, OSError):
            continue  # gone already
        if any(name in cmdline for name in BOOKKEEPING):
            keep = frozenset({proc.pid}) if "raylet/raylet" in cmdline else frozenset()  # workers fork from it
            if renice_threads(proc.pid, niceness, keep):
                reniced.append(proc.pid)
    return reniced


def _job_env_vars() -> dict[str, str]:
    """Environment variables the enclosing Ray Job's runtime env already sets (empty outside a job)."""
    import json

    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        return {}
    return dict((job.get("runtime_env") or {}).get("env_vars") or {})


def resolve_address(address: str | None = None) -> str | None:
    """The cluster ``init_ray(address)`` joins, or None when it starts a local instance of its own.

    Inside a Ray Job (``rayft submit`` / ``ray job submit -- rayft sweep ...``) Ray sets RAY_ADDRESS: that
    cluster is joined instead of starting a private one on the head node. ``local`` always means a new instance.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


def starts_private_ray(address: str | None = None) -> bool:
    """Whether :func:`init_ray` with ``address`` would start a local Ray of its own now: one that ends with this
    process, has no autoscaler, and whose processes rayft may quiet."""
    import ray

    return not ray.is_initialized() and resolve_address(address) is None


def init_ray(address: str | None = None, *, num_cpus: int | None = None, quiet: bool = False,
             dashboard: bool | None = None, options: StartupOptions | None = None) -> dict[str, Any]:
    """Start (or connect to) Ray with the environment rayft's workers need; returns cluster resources.

    ``address`` is ``None`` for a local Ray started here, or ``auto`` / ``HOST:PORT`` / ``ray://HOST:PORT``.
    ``options`` (default: :func:`rayft.options.startup_options`) say how quiet a local instance is and how low
    Ray's own threads run there. ``dashboard`` (local instances only; default: ``options.dashboard``, off)
    serves the web UI and the Jobs and state APIs. Nothing rayft runs needs it: sweeps free the placement groups
    of stopped trials through their hub (:mod:`rayft.sweep.hub`), not through Ray Train's cleaner, which polls
    the state API.
    """
    import ray

    setup_env()
    if ray.is_initialized():
        return ray.cluster_resources()
    options = options or startup_options()
    env = {**{k: os.environ[k] for k in WORKER_ENV if k in os.environ}, **forwarded_env()}
    address = resolve_address(address)
    env = {k: v for k, v in env.items() if k not in _job_env_vars()}  # Ray refuses to merge duplicate keys
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": not quiet,
                              "configure_logging": True, "logging_level": "WARNING"}
    if address and os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and "runtime_resources" in os.getcwd():
        # A driver inside a Ray Job runs in the job's unpacked working_dir. Jobs with identical files share
        # that folder, and Ray deletes it when one of them ends (a killed job then takes the resubmitted job's
        # folder with it). Everything relative was read by now: leave it for a folder nobody deletes.
        os.chdir(Path.home())
    if address:
        os.environ.pop(QUIET_THREADS_VAR, None)  # a shared cluster's processes keep their priorities
        if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").is_file():
            os.environ["RAY_AUTH_MODE"] = "token"  # Ray 2.60 clusters enable token auth when a token exists
        ray.init(address=address, **kwargs)
    else:
        # The dashboard and its module processes take CPU time from training: started only when asked for.
        if dashboard is None:
            dashboard = options.dashboard
        port_kwargs: dict[str, Any] = {}
        if dashboard:
            # Pin the state API's address for this instance: without it, Ray's state clients (the cleaner
            # included) auto-detect "the" local cluster and fail when several run on one machine.
            port = free_port()
            os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
            env["RAY_API_SERVER_ADDRESS"] = os.environ["RAY_API_SERVER_ADDRESS"]
            port_kwargs["dashboard_port"] = port
        nice = options.nice
        lowered = nice > 0
        if lowered:  # Ray's own threads in this instance's processes yield to training (rayft.train.quiet)
            os.environ.update(thread_env(nice))
            env.update(thread_env(nice))
        threads_before = thread_ids(os.getpid())
        # address="local": always a new instance; with no address Ray would join a `ray start` cluster on this machine.
        quiet_config, quiet_env = quiet_settings(dashboard, options.quiet_ray)
        with environ(quiet_env):  # read by the node's processes as they start
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                     _system_config=quiet_config, **port_kwargs, **kwargs)
        lower_bookkeeping_priority(nice)
        if lowered:  # the threads ray.init started in this process; the caller's own (and torch's) keep theirs
            renice_threads(os.getpid(), nice, only=thread_ids(os.getpid()) - threads_before)
    return ray.cluster_resources()


class LocalCluster:
    """Several Ray nodes on this machine (``ray.cluster_utils.Cluster``) for tests, demos and benchmarks.

    Every port is picked free (dashboard, dashboard agents), so it runs beside other local Ray instances, and
    the dashboard (Jobs API, state API) is pinned on 127.0.0.1 so that Ray's state clients, Ray Train's
    placement-group cleaner among them, talk to this cluster and no other.
    """

    def __init__(self, head_cpus: float = 1, head_resources: dict[str, float] | None = None) -> None:
        from ray.cluster_utils import Cluster

        setup_env()
        port = free_port()
        self.dashboard_url = f"http://127.0.0.1:{port}"
        os.environ["RAY_API_SERVER_ADDRESS"] = self.dashboard_url  # this process's state clients, and children
        self._cluster = Cluster(initialize_head=True, connect=False, head_node_args={
            "num_cpus": head_cpus, "resources": head_resources or {}, "include_dashboard": True,
            "dashboard_host": "127.0.0.1", "dashboard_port": port, "dashboard_agent_listen_port": free_port(),
            "object_store_memory": 200 * 1024 * 1024,
        })
        self.address = self._cluster.address

    @property
    def head(self):
        return self._cluster.head_node

    @property
    def workers(self) -> list[Any]:
        return list(self._cluster.worker_nodes)

    def add_node(self, num_cpus: float = 1, resources: dict[str, float] | None = None):
        """Start one more node (its own raylet and object store) and wait until it joined."""
        return self._cluster.add_node(num_cpus=num_cpus, resources=resources or {},
                                      object_store_memory=150 * 1024 * 1024, dashboard_agent_listen_port=free_port())

    def remove_node(self, node: Any, graceful: bool = False) -> None:
        """Kill every process of a node, as when a machine is lost."""
        self._cluster.remove_node(node, allow_graceful=graceful)

    def node_of(self, node_id: str) -> Any:
        return next((n for n in [self.head, *self.workers] if n is not None and n.node_id == node_id), None)

    def shutdown(self) -> None:
        self._cluster.shutdown()
