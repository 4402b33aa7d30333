"""The sweep's W&B callback exits quietly: Ray's prints a traceback when collected during interpreter shutdown."""

from __future__ import annotations

import subprocess
import sys

HOLD_UNTIL_SHUTDOWN = """
import importlib, json, sys
mod, name = sys.argv[1].rsplit(".", 1)
cls = getattr(importlib.import_module(mod), name)
# Held by a module imported before Ray's: its globals are cleared after Ray's module globals became None,
# which is when the callback of a finished `rayft sweep` used to be collected.
json.KEEP = cls(project="p", mode="offline")
"""


def _stderr_at_exit(cls: str) -> str:
    done = subprocess.run([sys.executable, "-c", HOLD_UNTIL_SHUTDOWN, cls], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_wandb_callback_is_quiet_at_interpreter_exit():
    stock = _stderr_at_exit("ray.air.integrations.wandb.WandbLoggerCallback")
    # If this stops failing, Ray has fixed its __del__ and rayft.track.wandb_callback can go.
    assert "Exception ignored" in stock
    assert "Exception ignored" not in _stderr_at_exit("rayft.track.wandb_callback.WandbCallback")


def test_the_logging_actor_shuts_wandb_down_after_finishing_the_run(tmp_path, monkeypatch):
    """W&B's atexit teardown then has nothing left to do when Ray kills the actor."""
    from types import SimpleNamespace

    from ray.air.integrations.wandb import _QueueItem

    from rayft.track.wandb_callback import WandbCallback, WandbLoggingActor

    assert WandbCallback._logger_actor_cls is WandbLoggingActor
    calls = []
    fake = SimpleNamespace(init=lambda *a, **k: calls.append("init") or SimpleNamespace(config=SimpleNamespace()),
                           finish=lambda: calls.append("finish"), teardown=lambda: calls.append("teardown"))
    queue = SimpleNamespace(get=lambda: (_QueueItem.END, None))
    monkeypatch.chdir(tmp_path)  # the actor moves into its log folder; the test's folder comes back afterwards
    actor = WandbLoggingActor(str(tmp_path), queue, [], [], name="trial")
    actor._wandb = fake
    actor.run()
    assert calls == ["init", "finish", "teardown"]
