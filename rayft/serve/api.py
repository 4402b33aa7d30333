"""The HTTP contract of ``rayft serve``, free of Ray: request models, the model catalog, errors, responses.

Every error leaves the server as ``{"error": {"message", "type", "code", "param"}}``: 4xx for client mistakes
(unknown model 404, bad body 422, wrong task for the route or a request the model cannot take 400, a full replica
429 with ``Retry-After``) and 5xx only for the server's own trouble.
"""

from __future__ import annotations

import calendar
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rayft.errors import StoreError
from rayft.generate.params import RequestError, SamplingParams
from rayft.store.store import Manifest, validate_ref

CLASSIFY_TASK = "sequence_classification"
SFT_TASK = "sft"
BASE_PREFIX = "base:"  # multiplexed keys of plain base models; adapter ids cannot contain ':'
MAX_TEXT_CHARS = 32_000  # one input text or prompt; longer ones are refused (422) before any tokenizing
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]


class ServeError(Exception):
    """An error with its HTTP status, carried as data between the model replicas and the gateway.

    ``param`` names the request field at fault (OpenAI's ``error.param``); ``retry_after`` (seconds) becomes a
    ``Retry-After`` header.
    """

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type, code
        self.param, self.retry_after = param, retry_after

    def to_dict(self) -> dict[str, Any]:
        """A picklable form (``ServeError(**d)`` rebuilds it)."""
        return {"status": self.status, "message": self.message, "type": self.type, "code": self.code,
                "param": self.param, "retry_after": self.retry_after}

    def body(self) -> dict[str, Any]:
        """The JSON response body."""
        return error_body(self.message, self.type, self.code, self.param)

    def headers(self) -> dict[str, str] | None:
        if self.status == 401:
            return {"WWW-Authenticate": 'Bearer realm="rayft admin"'}
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None


def error_body(message: str, type: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    """The OpenAI-style error body every failing route returns."""
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


def request_refused(exc: RequestError) -> ServeError:
    """The 4xx for a generation request the model or the replica cannot take (the field is named).

    A full queue (code ``queue_full``) is 429 with ``Retry-After``; anything else the client can fix is 400.
    """
    if exc.code == "queue_full":
        return ServeError(429, f"the model server is at capacity ({exc}); retry later", "server_busy", exc.code,
                          None, RETRY_AFTER_S)
    return ServeError(400, str(exc), "invalid_request_error", exc.code, exc.field)


RETRY_AFTER_S = 1  # what a 429 asks a client to wait: a decode step frees slots within a second on any model here


def not_found(model: Any, reason: str = "") -> ServeError:
    return ServeError(404, f"model {model!r} not found{': ' + reason if reason else ''}; GET /v1/models lists "
                      "the served models", "invalid_request_error", "model_not_found")


def load_error(model: str, reason: str) -> ServeError:
    return ServeError(500, f"model {model!r} could not be loaded: {reason}", "model_load_error", "model_load_error")


def internal_error(reason: str = "internal server error") -> ServeError:
    return ServeError(500, reason, "server_error", "internal_error")


def short_error(exc: BaseException) -> str:
    """``<type>: <first line>`` of an exception, at most 300 characters (what a client is told)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def inference_failed(exc: BaseException) -> ServeError:
    """A 500 for an exception raised while running a model."""
    return internal_error(f"inference failed: {short_error(exc)}")


def evicted() -> ServeError:
    """A 503 for a request whose model was evicted (LRU) before the request could pin it."""
    return ServeError(503, "the model was evicted while waiting; retry or raise max_adapters", "server_error",
                      "overloaded")


def validation_error(errors: Iterable[dict[str, Any]], hint: str | None = None) -> ServeError:
    """A 422 naming every bad field of a request body (from pydantic/FastAPI error dicts), plus a hint."""
    parts = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            parts.append(f"malformed JSON body ({err.get('ctx', {}).get('error', 'invalid JSON')})")
        else:
            parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid value')}")
    message = "invalid request: " + ("; ".join(parts) if parts else "malformed body") + (f" ({hint})" if hint else "")
    return ServeError(422, message, "invalid_request_error", "validation_error")


# ---------------------------------------------------------------- request bodies


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, logprobs, ...)

    model: str = Field(min_length=1, max_length=1024)


class ClassifyRequest(_Request):
    model_config = ConfigDict(extra="forbid")

    inputs: list[Text] = Field(min_length=1, max_length=512)


class _Sampling(_Request):
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="keep the k likeliest tokens (0: all)")
    n: int = Field(1, ge=1, description="choices per prompt (at most the server's max_n)")
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str] | None:
        stops = [value] if isinstance(value, str) else value
        if stops is not None and (len(stops) > 4 or any(not s for s in stops)):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stops or None

    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk (``stream_options.include_usage``)."""
        return bool(self.stream and (self.stream_options or {}).get("include_usage"))

    def params(self, max_tokens: int) -> SamplingParams:
        """How to decode (checked against the model's context and the server's limits by the model replica).

        Raises:
            ServeError: 400 naming a field the decoder refuses.
        """
        try:
            return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
                                  top_k=self.top_k, seed=self.seed, stop=tuple(self.stop or ()), n=self.n)
        except RequestError as exc:
            raise request_refused(exc) from None


class CompletionRequest(_Sampling):
    prompt: Text | list[Text] = Field(min_length=1)
    max_tokens: int = Field(16, ge=1, description="at most the model's context")

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and (len(value) > 16 or any(not p for p in value)):
            raise ValueError("prompt takes at most 16 non-empty strings")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | list[dict[str, Any]]

    def text(self) -> str:
        """The message text (OpenAI content parts of type ``text`` are joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def plain_messages(self) -> list[dict[str, str]]:
        """Messages as ``{"role", "content"}`` dicts for a chat template (``developer`` acts as ``system``)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

    def limit(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 128


# ---------------------------------------------------------------- the catalog of served models


@dataclass(frozen=True)
class ModelEntry:
    """One servable model: a stored adapter or full model, or a plain base model."""

    id: str
    kind: str  # "adapter" | "full" | "base"
    task: str
    base_model: str
    key: str  # the multiplexed model id that routes to it
    created: int = 0
    labels: list[str] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    alias_of: str | None = None

    def card(self) -> dict[str, Any]:
        """The OpenAI model object plus rayft's fields (``alias_of`` names an alias's target)."""
        card = {"id": self.id, "object": "model", "created": self.created, "owned_by": "rayft", "task": self.task,
                "kind": self.kind, "base_model": self.base_model, "labels": self.labels, "metrics": self.metrics}
        if self.alias_of:
            card["alias_of"] = self.alias_of
        return card


def _epoch(stamp: str) -> int:
    try:
        return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return 0


def build_catalog(manifests: Iterable[Manifest]) -> dict[str, ModelEntry]:
    """Stored results by id, plus the base model of every stored ``sft`` result (served plain)."""
    out: dict[str, ModelEntry] = {}
    bases: dict[str, ModelEntry] = {}
    from rayft.tasks.base import serving_task

    for m in manifests:
        task = serving_task(m.task, m.config)
        out[m.adapter_id] = ModelEntry(m.adapter_id, m.kind, task, m.base_model, f"{m.adapter_id}@{m.created}",
                                       _epoch(m.created), m.labels, dict(m.metrics or {}))
        if task == SFT_TASK and m.base_model not in bases:
            bases[m.base_model] = ModelEntry(m.base_model, "base", SFT_TASK, m.base_model, BASE_PREFIX + m.base_model)
    for name, entry in bases.items():
        out.setdefault(name, entry)  # a stored id wins over a base model of the same name
    return out


def resolve(catalog: dict[str, ModelEntry], model: str) -> ModelEntry:
    """The catalog entry for a requested model id.

    Ids that are not listed never reach the store; stored ids (and ``<id>:<head>``) are checked by
    :func:`~rayft.store.store.validate_ref`.

    Raises:
        ServeError: 404 for an invalid or unknown id.
    """
    entry = catalog.get(model)
    if entry is None or entry.kind != "base":
        try:
            validate_ref(model)
        except StoreError as exc:
            raise not_found(model, str(exc)) from None
    if entry is None:
        raise not_found(model)
    return entry


def require_task(entry: ModelEntry, task: str, route: str) -> None:
    """Raises ServeError (400) if ``entry`` cannot answer ``route``."""
    if entry.task != task:
        raise ServeError(400, f"model {entry.id!r} is a {entry.task!r} model; {route} needs a {task!r} model",
                         "invalid_request_error", "wrong_task")


# ---------------------------------------------------------------- response bodies


def models_response(catalog: dict[str, ModelEntry]) -> dict[str, Any]:
    return {"object": "list", "data": [e.card() for e in catalog.values()]}


def classification_response(model: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    data = [{"index": i, "label": r["label"], "probabilities": r["probabilities"]} for i, r in enumerate(rows)]
    return {"model": model, "object": "classification", "data": data}


# ---------------------------------------------------------------- what a model replica answers


@dataclass(frozen=True)
class TokenUsage:
    """OpenAI ``usage``: every prompt counted once, every choice's completion tokens."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: "TokenUsage") -> "TokenUsage":
        return TokenUsage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)

    def body(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass(frozen=True)
class Piece:
    """One streamed piece of a generation answer: new text of choice ``index`` (its last piece has
    ``finish_reason``), or the answer's ``usage`` (the stream's last piece), or an ``error`` (``ServeError.to_dict``).
    """

    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    usage: TokenUsage | None = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class GeneratedChoice:
    index: int
    text: str
    finish_reason: str


@dataclass(frozen=True)
class Completion:
    """A whole generation answer: its choices in index order (prompt ``p``, choice ``i`` at ``p * n + i``)."""

    choices: tuple[GeneratedChoice, ...]
    usage: TokenUsage


def completion_response(model: str, out: Completion) -> dict[str, Any]:
    choices = [{"text": c.text, "index": c.index, "logprobs": None, "finish_reason": c.finish_reason}
               for c in out.choices]
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": out.usage.body()}


def chat_response(model: str, out: Completion) -> dict[str, Any]:
    choices = [{"index": c.index, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                "finish_reason": c.finish_reason} for c in out.choices]
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": out.usage.body()}


# ---------------------------------------------------------------- streamed (server-sent events) responses


class StreamShape:
    """Builds the OpenAI chunks of one streamed answer (``chat.completion.chunk`` or ``text_completion``)."""

    def __init__(self, model: str, chat: bool) -> None:
        self.model, self.chat = model, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, **extra}

    def opening(self, choices: int = 1) -> dict[str, Any] | None:
        """Chat streams open with the assistant role and no text, for every choice."""
        if not self.chat:
            return None
        return self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None} for i in range(choices)])

    def text(self, index: int, text: str, finish_reason: str | None = None) -> dict[str, Any]:
        if self.chat:
            delta = {"content": text} if text else {}
            return self._chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])
        return self._chunk([{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}])

    def usage(self, usage: TokenUsage) -> dict[str, Any]:
        return self._chunk([], usage=usage.body())


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event (``data: <json>``)."""
    import json

    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
