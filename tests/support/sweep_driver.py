"""A sweep driver in its own process: killed mid-sweep (with the local Ray it started), then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from tests.support import REPO


def sweep_command(config: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    """``rayft sweep CONFIG ...`` and an environment that imports this checkout's rayft."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return [sys.executable, "-m", "rayft.cli", "sweep", str(config), *extra], env


def kill_when(cmd: list[str], env: dict[str, str], cwd: Path, ready: Callable[[], bool], timeout: float = 400,
              poll_s: float = 0.3) -> bool:
    """Start the driver, SIGKILL it and its process group once ``ready()``; True if it was still running then."""
    driver = subprocess.Popen(cmd, env=env, cwd=cwd, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None and not ready():
        time.sleep(poll_s)
    alive = driver.poll() is None
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    return alive


def resume(cmd: list[str], env: dict[str, str], cwd: Path, *extra: str,
           timeout: float = 800) -> subprocess.CompletedProcess:
    """``cmd --resume ...`` to its end; asserts it succeeded."""
    out = subprocess.run([*cmd, "--resume", *extra], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def trial_results(sweep: Path, trial_id: str) -> list[dict]:
    """The results of one trial as Tune keeps them (``result.json``, each with the config in force; after a PBT
    clone Tune rewinds it to the cloned iteration; a resumed trial appends to it)."""
    found = list(sweep.glob(f"*{trial_id}*/result.json"))
    assert len(found) == 1, found
    return [json.loads(line) for line in found[0].read_text().splitlines() if line.strip()]
