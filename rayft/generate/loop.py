"""A background thread that drives a :class:`DecodeEngine` while it has work, for servers and other async callers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any, Callable

from rayft.generate.engine import DecodeEngine
from rayft.generate.outputs import Event, Handle, Request

log = logging.getLogger(__name__)
HANDOFF_S = 0.0005  # pause between steps under a shared lock; a step takes tens of milliseconds or more


class EngineLoop:
    """Runs ``engine.step()`` on its own thread whenever a request is waiting or running; sleeps otherwise.

    Use ``add`` and ``cancel`` of the loop (they wake the thread). A step that raises ends every request in flight
    with finish reason ``error`` and the loop goes on serving new ones. ``lock`` (optional) is held during each
    step: whoever changes the model (loads or deletes adapters) takes it too, and then never runs mid-step.
    """

    def __init__(self, engine: DecodeEngine, idle_wait_s: float = 1.0, lock: Any = None) -> None:
        self.engine, self.idle_wait_s = engine, idle_wait_s
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.shared = lock is not None
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> EngineLoop:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="rayft-decode", daemon=True)
            self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        """Whether the loop's thread was started and not stopped."""
        return self._thread is not None

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stops after the current step; requests still in flight stay where they are."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> EngineLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add(self, request: Request) -> Handle:
        """:meth:`DecodeEngine.add`, then wakes the thread."""
        handle = self.engine.add(request)
        self._wake.set()
        return handle

    def cancel(self, request_id: str) -> None:
        self.engine.cancel(request_id)
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before looking for work, so an add() that lands meanwhile is not missed
            if not self.engine.has_work():
                self._wake.wait(self.idle_wait_s)
                continue
            try:
                with self.lock:
                    self.engine.step()
                if self.shared:
                    time.sleep(HANDOFF_S)  # Python locks are not fair: let a waiting loader take it between steps
            except Exception as exc:  # noqa: BLE001 - the thread must outlive one bad step
                log.exception("decode step failed")
                with self.lock:
                    self.engine.fail_all(f"{type(exc).__name__}: {exc}")


def asyncio_sink(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> Callable[[Event], None]:
    """A request ``sink`` that hands each event to an asyncio queue on ``loop`` (from the engine's thread)."""
    return lambda event: loop.call_soon_threadsafe(queue.put_nowait, event)
