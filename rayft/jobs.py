"""Sweeps as Ray Jobs: submit an experiment to any Ray cluster, list, follow and stop its jobs.

The job's runtime environment carries the experiment files (``working_dir``: the folder holding the config and
its data) and the local ``rayft`` package itself (``py_modules``), so the cluster runs exactly the code and files
that were validated here. Ray 2.60 clusters use token authentication: the token comes from ``--token``,
``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token`` and is sent as a bearer header.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from rayft.errors import ClusterError, RayftError

# Never shipped with a job: run outputs, stores, virtualenvs, caches, version control.
EXCLUDES = [".git", ".venv*", "venv", "__pycache__", "*.pyc", ".pytest_cache", "runs/", "store/", "wandb/",
            ".mypy_cache", ".ruff_cache", "*.egg-info"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
AGENT_WAIT_S = 90.0  # how long a submission waits for a head's job agent to come up
NO_AGENT = "No available agent"  # Ray's answer while the head has no job agent


@dataclass
class Submission:
    """What ``rayft submit`` sends: the command run on the cluster and its runtime environment."""

    entrypoint: str
    runtime_env: dict[str, Any]
    submission_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def auth_token(token: str | None = None) -> str | None:
    """The cluster token: given, ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``."""
    if token:
        return token.strip()
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    return path.read_text().strip() or None if path.is_file() else None


def job_client(address: str, token: str | None = None):
    """A ``JobSubmissionClient`` for ``http://HEAD:8265`` that authenticates when a token is available.

    Raises:
        RayftError: if the address is malformed or nothing answers there.
    """
    from ray.job_submission import JobSubmissionClient

    if not address.startswith(("http://", "https://")):
        raise RayftError(f"--address {address!r}: expected the dashboard URL of the cluster's head, "
                         "e.g. http://HEAD:8265")
    secret = auth_token(token)
    if secret and os.environ.get("RAY_AUTH_MODE") != "disabled":
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    headers = {"Authorization": f"Bearer {secret}"} if secret else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayftError(f"cannot reach the Ray cluster at {address}: {exc}") from None


def build_submission(config: str | os.PathLike[str], overrides: Iterable[str] = (), *,
                     working_dir: str | os.PathLike[str] | None = None, command: str = "sweep",
                     extra_args: Iterable[str] = (), pip: Iterable[str] = (), submission_id: str | None = None,
                     python: str = "python") -> Submission:
    """Validate the experiment here, then describe the job that runs it on the cluster.

    ``python`` is the interpreter on the cluster's nodes (with rayft's dependencies installed). Nothing is
    contacted: a bad config, or one that names files outside the working dir, fails before
    anything is sent.

    Raises:
        ConfigError: for any invalid field (all of them listed).
        RayftError: if the config is not inside the working dir.
    """
    import rayft
    from rayft.cluster import WORKER_ENV
    from rayft.config import load_config
    from rayft.storage import is_relative_path

    workdir = Path(working_dir or Path.cwd()).resolve()
    config_path = Path(config).resolve()
    if not config_path.is_relative_to(workdir):
        raise RayftError(f"config {config} is outside the working dir {workdir}: the job ships only the working "
                         "dir, so run from (or pass --working-dir) a folder that contains it")
    with contextlib.chdir(workdir):  # relative paths resolve as they will in the job's working dir
        cfg = load_config(config_path, list(overrides))  # the same checks `rayft validate` runs
    _reward_modules_ship(cfg, workdir)
    warnings = _outside_files(cfg, workdir)
    for name, value in (("output_dir", cfg.output_dir), ("store.path", cfg.store.path)):
        if is_relative_path(value):
            warnings.append(f"{name}={value!r} is relative: results land in the job's working dir on the head node "
                            "and are deleted with it; use shared storage (s3://..., an NFS path)")
    args = [python, "-m", "rayft.cli", command, config_path.relative_to(workdir).as_posix(), *overrides, *extra_args]
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    runtime_env: dict[str, Any] = {
        "working_dir": str(workdir), "excludes": EXCLUDES, "py_modules": [str(Path(rayft.__file__).parent)],
        "env_vars": {**env, "PYTHONUNBUFFERED": "1"},
    }
    if pip := list(pip):
        runtime_env["pip"] = pip
    return Submission(entrypoint=shlex.join(args), runtime_env=runtime_env, submission_id=submission_id,
                      metadata={"rayft_experiment": cfg.name, "rayft_command": command}, warnings=warnings)


def _reward_modules_ship(cfg: Any, workdir: Path) -> None:
    """The modules of an RL task's reward functions (``task.rewards``) reach the job: in the working dir (shipped
    with it) or in rayft itself (shipped as a module).

    Raises:
        ConfigError: naming each reward function whose module would not be on the cluster.
    """
    from rayft.errors import ConfigError, FieldError

    errors = []
    for i, spec in enumerate(cfg.task.params().get("rewards") or []):
        function = spec.get("function", "") if isinstance(spec, dict) else getattr(spec, "function", "")
        top = function.partition(":")[0].split(".")[0]
        if top == "rayft" or (workdir / f"{top}.py").is_file() or (workdir / top / "__init__.py").is_file():
            continue
        errors.append(FieldError(f"task.rewards[{i}].function", function,
                                 f"a module the job carries: {top}.py (or the package {top}/) in the working dir "
                                 f"{workdir}, or one of rayft's (rayft.rl.library)"))
    if errors:
        raise ConfigError(errors)


def _outside_files(cfg: Any, workdir: Path) -> list[str]:
    """Warnings for local files the experiment reads that the job would not carry."""
    out = []
    named = [("data.source", cfg.data.source), ("model.name", cfg.model.name)]
    named += [(f"data.splits.{role}", value) for role, value in cfg.data.named_splits().items()]
    for name, value in ((n, v) for n, v in named if v is not None):
        path = Path(value).expanduser()
        if path.exists() and path.is_absolute() and not path.resolve().is_relative_to(workdir):
            out.append(f"{name}={value!r} is outside the working dir: every node must have it at that path")
    return out


def submit(address: str, submission: Submission, *, token: str | None = None,
           say: Callable[[str], None] | None = None) -> str:
    """Send the job; returns its submission id. While the head has no job agent yet (it just started), retry for
    up to :data:`AGENT_WAIT_S` seconds, telling ``say`` (default: standard error) once.

    Raises:
        ClusterError: the head never got a job agent, or refused the job; the message says what to try.
    """
    client = job_client(address, token)
    deadline = time.monotonic() + AGENT_WAIT_S
    told = False
    with tempfile.TemporaryDirectory(prefix="rayft-submit-") as tmp:
        runtime_env = _own_package(submission.runtime_env, Path(tmp))
        while True:
            try:
                return client.submit_job(entrypoint=submission.entrypoint, runtime_env=runtime_env,
                                         submission_id=submission.submission_id, metadata=submission.metadata)
            except RuntimeError as exc:  # a head that just started has no job agent yet: retry a while
                if NO_AGENT not in str(exc):
                    raise ClusterError(f"the cluster at {address} refused the job: {exc}") from None
                if time.monotonic() > deadline:
                    raise ClusterError(no_agent_message(address, exc)) from None
                if not told:
                    (say or _to_stderr)(f"the head at {address} has no job agent yet; retrying for up to {AGENT_WAIT_S:.0f}s")
                    told = True
                time.sleep(2.0)


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def no_agent_message(address: str, exc: Exception) -> str:
    """What failed, what it means and what to try when a head never got a job agent."""
    return (f"could not submit to {address}: its head node has no job agent (Ray answered: {exc}) after "
            f"{AGENT_WAIT_S:.0f}s of retrying.\n"
            "  What it means: the dashboard answers, but the agent process that starts jobs on the head is not "
            "running - most often its port was already taken when the head started (the agent's listen port, "
            "52365 by default), or it crashed.\n"
            "  What to try: read dashboard_agent.log in the head's Ray log folder (/tmp/ray/session_latest/logs); "
            "restart the head with a free agent port (`ray stop`, then `ray start --head "
            "--dashboard-agent-listen-port=<free port>`), and submit again.")


def _own_package(runtime_env: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Ship the working dir as a zip of its own for this submission.

    Ray names a package by its content, so two jobs with the same files share one package, and when one of
    them ends (e.g. a killed sweep) Ray may delete the package the other still needs. A marker file with the
    submission's own id makes every package distinct; local ``py_modules`` (rayft itself) go into the same
    package, at its root, which is on the job's ``sys.path`` on every node.
    """
    workdir = runtime_env.get("working_dir")
    if not workdir or not Path(workdir).is_dir():
        return runtime_env
    from rayft.ray_internals import create_package

    package = tmp / f"working_dir_{uuid.uuid4().hex[:12]}.zip"
    create_package(str(workdir), package, include_gitignore=True, excludes=list(runtime_env.get("excludes") or []))
    modules = [Path(m) for m in runtime_env.get("py_modules") or [] if Path(m).is_dir()]
    with zipfile.ZipFile(package, "a") as zf:
        zf.writestr(".rayft_submission", package.stem)
        names = set(zf.namelist())
        for module in modules:  # local packages travel inside the same package (on sys.path in the job)
            for path in sorted(module.rglob("*")):
                arc = (Path(module.name) / path.relative_to(module)).as_posix()
                if path.is_file() and "__pycache__" not in path.parts and arc not in names:
                    zf.write(path, arc)
    rest = [m for m in runtime_env.get("py_modules") or [] if Path(m) not in modules]
    env = {k: v for k, v in runtime_env.items() if k not in ("excludes", "py_modules")}
    return {**env, "working_dir": str(package), **({"py_modules": rest} if rest else {})}


def jobs(address: str, *, token: str | None = None) -> list[dict[str, Any]]:
    """Every job of the cluster, newest first: id, status, experiment, start time, entrypoint."""
    rows = []
    for job in job_client(address, token).list_jobs():
        rows.append({"id": job.submission_id or job.job_id, "status": str(job.status.value),
                     "experiment": (job.metadata or {}).get("rayft_experiment", ""),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000))
                     if job.start_time else "", "entrypoint": job.entrypoint, "message": job.message or ""})
    return sorted(rows, key=lambda r: r["started"], reverse=True)


def logs(address: str, job_id: str, *, token: str | None = None, follow: bool = False,
         write: Callable[[str], Any] = print) -> str:
    """Print a job's logs (following them until the job ends with ``follow``); returns its final status."""
    client = job_client(address, token)
    status = _status(client, job_id)
    if not follow:
        write(client.get_job_logs(job_id))
        return status
    shown = 0
    while True:  # poll, so that a client behind a proxy without websockets still follows
        text = client.get_job_logs(job_id)
        if len(text) > shown:
            write(text[shown:].rstrip("\n"))
            shown = len(text)
        if status in TERMINAL:
            return status
        time.sleep(1.0)
        status = _status(client, job_id)


def wait(address: str, job_id: str, *, token: str | None = None, timeout_s: float = 3600.0) -> str:
    """Block until the job ends; returns its final status.

    Raises:
        RayftError: if it is still running after ``timeout_s``.
    """
    client = job_client(address, token)
    deadline = time.monotonic() + timeout_s
    while (status := _status(client, job_id)) not in TERMINAL:
        if time.monotonic() > deadline:
            raise RayftError(f"job {job_id} still {status} after {timeout_s:.0f}s")
        time.sleep(1.0)
    return status


def stop(address: str, job_id: str, *, token: str | None = None) -> bool:
    """Ask the cluster to stop a job; False if it had already ended."""
    client = job_client(address, token)
    _status(client, job_id)
    return bool(client.stop_job(job_id))


def _status(client: Any, job_id: str) -> str:
    try:
        return str(client.get_job_status(job_id).value)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise RayftError(f"no job {job_id!r} on this cluster (see `rayft jobs`)") from None
        raise
