"""Per-request sampling parameters and their checks.

Checks that need only the parameters run when a :class:`SamplingParams` is built; the ones that need the prompt and
the model (its context length, the engine's limit on ``n``) run in :func:`check_request`. Every failure is a
:class:`RequestError`: a :class:`~rayft.errors.RayftError` that names the field, the value and what was expected, so
a server can turn it into a 4xx naming the field (``field`` and ``code`` are kept as attributes for that). The
serving layer's ``ServeError`` (rayft/serve/api.py) is not reused: it carries an HTTP status and is no RayftError,
and this engine knows nothing of HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rayft.errors import FieldError, RayftError

MAX_STOPS = 8  # a client's four (as OpenAI allows) plus those of the model's prompt format


class RequestError(RayftError):
    """One bad field of a generation request."""

    def __init__(self, field: str, value: Any, expected: str, code: str = "invalid_value") -> None:
        self.field, self.value, self.expected, self.code = field, value, expected, code
        super().__init__(str(FieldError(field, value, expected)))


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    ``temperature`` 0 is greedy (top_p/top_k then have no effect); ``top_k`` 0 keeps every token; ``seed`` makes
    sampling reproducible (choice ``i`` of ``n`` uses ``seed + i``); ``stop`` strings end a choice and are never part
    of its text; ``stop_token_ids`` end it as the model's end-of-sequence token does (a chat template's end of turn,
    say); ``n`` choices share one prompt (and one prefill).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop or ()))
        if not isinstance(self.stop_token_ids, tuple):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))
        _int("max_tokens", self.max_tokens, 1, "an integer >= 1")
        _int("top_k", self.top_k, 0, "an integer >= 0 (0 keeps every token)")
        _int("n", self.n, 1, "an integer >= 1")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise RequestError("seed", self.seed, "an integer or None")
        if not _number(self.temperature) or self.temperature < 0:
            raise RequestError("temperature", self.temperature, "a number >= 0 (0 is greedy)")
        if not _number(self.top_p) or not 0 < self.top_p <= 1:
            raise RequestError("top_p", self.top_p, "a number in (0, 1]")
        if len(self.stop) > MAX_STOPS or any(not isinstance(s, str) or not s for s in self.stop):
            raise RequestError("stop", self.stop, f"at most {MAX_STOPS} non-empty strings")
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise RequestError("stop_token_ids", self.stop_token_ids, "token ids (integers >= 0)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # NaN fails


def _int(field: str, value: Any, low: int, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RequestError(field, value, expected)


def check_request(params: SamplingParams, prompt_tokens: int, context: int, max_n: int) -> None:
    """Checks what depends on the model and the engine: the prompt and ``max_tokens`` against the context, ``n``.

    A prompt that fits leaves ``context - prompt_tokens`` tokens of room; a smaller ``max_tokens`` is not an error,
    the answer just ends with finish reason ``length`` when the room runs out.

    Raises:
        RequestError: an empty prompt or one with no room left in the context (naming both lengths), ``max_tokens``
            beyond the context, or ``n`` above ``max_n``.
    """
    if prompt_tokens < 1:
        raise RequestError("prompt", prompt_tokens, "at least one token")
    if prompt_tokens >= context:
        raise RequestError("prompt", f"{prompt_tokens} tokens", f"fewer tokens than the model's context of {context}, "
                           "which must also hold the answer", code="context_length_exceeded")
    if params.max_tokens > context:
        raise RequestError("max_tokens", params.max_tokens, f"at most the model's context of {context} tokens",
                           code="context_length_exceeded")
    if params.n > max_n:
        raise RequestError("n", params.n, f"at most {max_n} (this engine's limit)")


@dataclass(frozen=True)
class EngineConfig:
    """Per-engine limits: running sequences, queued requests, tokens per step, choices per request."""

    max_running: int = 16
    max_queued: int = 64
    step_tokens: int = 256
    max_n: int = 4

    def __post_init__(self) -> None:
        for name in ("max_running", "max_queued", "max_n"):
            if getattr(self, name) < 1:
                raise RequestError(name, getattr(self, name), "an integer >= 1")
        if self.step_tokens <= self.max_running:
            raise RequestError("step_tokens", self.step_tokens,
                               f"more than max_running ({self.max_running}), so prompts advance every step")
        if self.max_n > self.max_running:
            raise RequestError("max_n", self.max_n, f"at most max_running ({self.max_running})")
