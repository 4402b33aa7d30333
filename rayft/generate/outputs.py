"""What a request hands the engine and what the engine hands back: frozen records, safe to pass between threads."""

from __future__ import annotations

import itertools
import queue
from dataclasses import dataclass, field
from typing import Callable

from rayft.generate.params import SamplingParams

FINISH_REASONS = ("stop", "length", "cancelled", "error")  # error: the forward pass failed (see Event.error)
_ids = itertools.count()


@dataclass(frozen=True)
class Request:
    """One prompt to continue: its token ids, the adapter to use (None: the bare model) and how to sample.

    ``sink`` receives every :class:`Event` of the request on the engine's thread; it must be quick and must not
    call back into the engine. Without one, the events go to the :class:`Handle`'s queue.
    """

    prompt_ids: tuple[int, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    adapter: str | None = None
    request_id: str = field(default_factory=lambda: f"gen-{next(_ids)}")
    sink: Callable[[Event], None] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_ids", tuple(int(i) for i in self.prompt_ids))


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Event:
    """New text of one choice (``index``) of a request; its last event has ``finish_reason`` set.

    ``token_ids`` are the tokens generated since the previous event (the end-of-sequence token is never one);
    the request's last event (``done``) carries ``usage``: the prompt counted once, every choice's tokens.
    """

    request_id: str
    index: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None = None
    usage: Usage | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.usage is not None


@dataclass(frozen=True)
class Choice:
    index: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str


@dataclass(frozen=True)
class Result:
    request_id: str
    choices: tuple[Choice, ...]
    usage: Usage


class Handle:
    """The caller's side of one request: its events (a thread-safe queue, unless the request has a ``sink``)."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.events: queue.Queue[Event] = queue.Queue()

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def emit(self, event: Event) -> None:
        (self.request.sink or self.events.put)(event)

    def result(self, timeout: float | None = None) -> Result:
        """Waits for the queue's events up to the last one and assembles the choices (not with a ``sink``)."""
        if self.request.sink is not None:
            raise RuntimeError("this request's events go to its sink; result() reads the handle's queue")
        texts: dict[int, list[str]] = {}
        ids: dict[int, list[int]] = {}
        finish: dict[int, str] = {}
        while True:
            event = self.events.get(timeout=timeout)
            texts.setdefault(event.index, []).append(event.text)
            ids.setdefault(event.index, []).extend(event.token_ids)
            if event.finish_reason is not None:
                finish[event.index] = event.finish_reason
            if event.done:
                choices = tuple(Choice(i, "".join(texts[i]), tuple(ids[i]), finish[i]) for i in sorted(texts))
                return Result(self.request_id, choices, event.usage)
