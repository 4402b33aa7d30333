"""Run a ``rayft`` command in its own process and keep track of every process it starts (Ray's included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from tests.support import REPO


@dataclass
class Watched:
    """A finished command: its exit status, its output and the processes it started while it ran."""

    returncode: int
    output: str
    started: dict[int, psutil.Process] = field(default_factory=dict)
    ended_at: float = 0.0

    def left_after(self, seconds: float) -> list[str]:
        """The processes it started that still run ``seconds`` after it ended (zombies count as ended)."""
        time.sleep(max(0.0, self.ended_at + seconds - time.monotonic()))
        left = []
        for proc in self.started.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
            except psutil.Error:
                continue  # ended meanwhile
        return left


def rayft_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """``python -m rayft.cli ARGS`` with this checkout's rayft first on the path, starting a Ray of its own."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "RAY_ADDRESS": ""}
    return [sys.executable, "-m", "rayft.cli", *args], env


def watch(cmd: list[str], env: dict[str, str], cwd: Path, *, timeout: float = 900,
          interrupt_when: Callable[[str], bool] | None = None, poll_s: float = 0.2) -> Watched:
    """Run ``cmd`` to its end, recording the processes it starts; with ``interrupt_when``, send it SIGINT (Ctrl-C)
    once that returns True for its output so far."""
    out_path = cwd / f"watched-{time.time_ns()}.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        seen: dict[int, psutil.Process] = {}
        deadline, interrupted = time.monotonic() + timeout, False
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                for child in root.children(recursive=True):
                    seen.setdefault(child.pid, child)
            except psutil.Error:
                pass
            if interrupt_when and not interrupted and interrupt_when(out_path.read_text()):
                proc.send_signal(signal.SIGINT)
                interrupted = True
            time.sleep(poll_s)
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
    return Watched(code, out_path.read_text(), seen, time.monotonic())
