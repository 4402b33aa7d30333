"""Inference on the models of one replica, free of Ray: the one place that tokenizes, runs models and shapes
their answers, for ``/v1/classify``, ``/v1/completions`` and ``/v1/chat/completions``.

The model deployment (:mod:`rayft.serve.replica`) and the tests call these functions on the models that
:mod:`rayft.serve.runtime` loads. Classification requests for different LoRA adapters on the same base run as one
forward pass with peft's mixed-adapter batches (``adapter_names=[...]``, one name per row); other methods (DoRA,
prompt learning) and full-weight models run one group per model. Generation hands requests to the model's decode
engine (:mod:`rayft.generate`), which batches every request on the same base between decode steps, and streams
their text back piece by piece.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from typing import Any, AsyncIterator, Callable

import torch

from rayft.errors import RayftError
from rayft.generate.device import device_of
from rayft.generate.outputs import Event, Request
from rayft.generate.params import RequestError, SamplingParams
from rayft.serve.api import (Completion, GeneratedChoice, Piece, ServeError, TokenUsage, evicted, inference_failed,
                             internal_error, request_refused)
from rayft.serve.runtime import LoadedModel, activate

ROWS_PER_FORWARD = 64


def _mixable(peft_model: Any, names: set[str]) -> bool:
    """Whether peft can run these adapters in one mixed batch (plain LoRA only)."""
    for name in names:
        cfg = peft_model.peft_config.get(name)
        if cfg is None or str(getattr(cfg, "peft_type", "")) not in ("LORA", "PeftType.LORA") \
                or getattr(cfg, "use_dora", False):
            return False
    return True


def _engine(item: tuple[LoadedModel, list[str]]) -> int:
    loaded = item[0]
    return id(loaded.entry) if loaded.entry is not None else id(loaded)


def classify(loaded: LoadedModel, inputs: list[str]) -> list[dict[str, Any]]:
    """Classify one request's inputs in process (pinning the model for the call): per input ``{"label",
    "probabilities"}``, as ``/v1/classify`` answers.

    Raises:
        ServeError: 503 if the model was evicted, 500 if inference failed.
    """
    if not loaded.acquire():
        raise evicted()
    try:
        (out,) = classify_many([(loaded, inputs)])
    finally:
        loaded.release()
    return rows_of(out)


def rows_of(out: list[dict[str, Any]] | ServeError) -> list[dict[str, Any]]:
    """One request's entry of :func:`classify_many`: its rows.

    Raises:
        ServeError: the request's error.
    """
    if isinstance(out, ServeError):
        raise out
    return out


def classify_many(items: list[tuple[LoadedModel, list[str]]]) -> list[Any]:
    """Classify the inputs of several requests; per request its rows, or a :class:`ServeError`.

    Every model in ``items`` must be pinned (:meth:`LoadedModel.acquire`) by its request.
    """
    results: list[Any] = [None] * len(items)
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(_engine(item), []).append(i)
    for members in groups.values():
        try:
            outs = _classify_group([items[i] for i in members])
        except _Sequential:  # adapters that cannot share a forward pass: one at a time
            outs = [classify_many([items[i]])[0] for i in members]
        except ServeError as exc:
            outs = [exc] * len(members)
        except Exception as exc:  # noqa: BLE001 - one group's failure is its requests' alone
            outs = [inference_failed(exc)] * len(members)
        for i, out in zip(members, outs):
            results[i] = out
    return results


def _classify_group(items: list[tuple[LoadedModel, list[str]]]) -> list[list[dict[str, Any]]]:
    """One model (or one shared base with several adapters): tokenize per request, forward in chunks."""
    first = items[0][0]
    tok = first.tokenizer
    rows: list[dict[str, Any]] = []
    owners: list[int] = []
    for n, (loaded, inputs) in enumerate(items):
        enc = tok(inputs, truncation=True, max_length=loaded.max_length)
        rows += [{k: enc[k][j] for k in enc.keys()} for j in range(len(inputs))]
        owners += [n] * len(inputs)
    with first.pool.lock, torch.no_grad():
        model, names = _prepare(items)
        probs = []
        for start in range(0, len(rows), ROWS_PER_FORWARD):
            batch = tok.pad(rows[start:start + ROWS_PER_FORWARD], return_tensors="pt").to(device_of(model))
            extra = {"adapter_names": names[start:start + ROWS_PER_FORWARD]} if names else {}
            probs.append(model(**batch, **extra).logits.float().softmax(-1))
    table = torch.cat(probs).tolist()
    out: list[list[dict[str, Any]]] = [[] for _ in items]
    for n, p in zip(owners, table):
        labels = items[n][0].labels or [str(v) for _, v in sorted(model.config.id2label.items())]
        best = max(range(len(p)), key=p.__getitem__)
        out[n].append({"label": labels[best], "probabilities": dict(zip(labels, p))})
    return out


def _prepare(items: list[tuple[LoadedModel, list[str]]]) -> tuple[Any, list[str] | None]:
    """The module to call and, for a mixed-adapter batch, the adapter name of every row (lock held)."""
    first = items[0][0]
    if first.entry is None:
        return first.model, None
    peft = first.entry.peft
    adapters = {lm.adapter for lm, _ in items}
    if len(adapters) == 1:
        activate(peft, first.adapter)
        return peft, None
    if not _mixable(peft, adapters):
        raise _Sequential()
    return peft, [lm.adapter for lm, inputs in items for _ in inputs]


class _Sequential(Exception):
    """Adapters that cannot share one forward pass."""


# ---------------------------------------------------------------- generation


def completion_prompts(loaded: LoadedModel, prompts: list[str]) -> list[list[int]]:
    """Token ids of plain-text prompts (``/v1/completions``: no chat template, special tokens as training had them)."""
    return [loaded.prompt_format.render_completion(loaded.tokenizer, p) for p in prompts]


def render_chat(loaded: LoadedModel, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation followed by the assistant turn opener, rendered as the model was trained: its
    chat template (or text fallback) and its system prompt, unless the conversation has one.

    Raises:
        ServeError: 400 for a conversation the template cannot render.
    """
    try:
        return loaded.prompt_format.render_chat(loaded.tokenizer, messages)
    except RayftError as exc:
        raise ServeError(400, str(exc), "invalid_request_error", "invalid_messages", "messages") from None


def with_model_stops(loaded: LoadedModel, params: SamplingParams) -> SamplingParams:
    """``params`` plus the stop tokens and stop strings the model was trained to end its answers with."""
    fmt = loaded.prompt_format
    stops = params.stop + tuple(s for s in fmt.stop if s not in params.stop)
    return dataclasses.replace(params, stop=stops, stop_token_ids=tuple(fmt.stop_token_ids))


class Generation:
    """One HTTP request's prompts on the model's decode engine (one engine request per prompt, ``n`` choices each).

    :meth:`pieces` yields the answer as it is decoded; leaving it early (a client that went away, a timeout, an
    error) cancels what still runs, which frees the sequences' slots at the engine's next step. ``on_end`` is called
    exactly once, on the event loop, when every request the engine took has ended (cancelled ones included), or
    right away if the engine took none: only then may the caller unpin the model, so no decode step ever meets an
    adapter that was evicted under it.

    Raises (from the constructor):
        ServeError: 400 for a request the model cannot take (naming the field), 429 if the engine's queue is full.
    """

    def __init__(self, loaded: LoadedModel, engine: tuple[Any, str | None], prompts: list[list[int]],
                 params: SamplingParams, on_end: Callable[[], Any]) -> None:
        self.aio = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.n, self.on_end = params.n, on_end
        self.index: dict[str, int] = {}  # engine request id -> prompt index
        self.pending: set[str] = set()  # read and written on the event loop only
        self._open = 1  # engine requests not ended, plus this constructor's own count (no end while adding)
        self._count = threading.Lock()
        params = with_model_stops(loaded, params)
        try:
            self.loop, adapter = engine  # loaded.generator(), fetched off the event loop
            for p, ids in enumerate(prompts):
                request = Request(tuple(ids), params, adapter, request_id=f"gen-{uuid.uuid4().hex}", sink=self._sink)
                self._opened(1)
                try:
                    self.loop.add(request)
                except BaseException:
                    self._opened(-1)
                    raise
                self.index[request.request_id] = p
                self.pending.add(request.request_id)
        except RequestError as exc:
            self.cancel()
            raise request_refused(exc) from None
        except BaseException:
            self.cancel()
            raise
        finally:
            self._opened(-1)

    def _opened(self, change: int) -> None:
        """Counts engine requests in (+1) and out (-1); the count's end schedules ``on_end`` on the event loop."""
        with self._count:
            self._open += change
            ended = self._open == 0
        if ended:
            self.aio.call_soon_threadsafe(self.on_end)

    def _sink(self, event: Event) -> None:
        """On the engine's thread: hand the event to the event loop; count the request out when it ends."""
        self.aio.call_soon_threadsafe(self.queue.put_nowait, event)
        if event.done:
            self._opened(-1)

    def cancel(self) -> None:
        for request_id in self.pending:
            self.loop.cancel(request_id)

    async def pieces(self, timeout: float) -> AsyncIterator[Piece]:
        """Text pieces as they are decoded (choice ``p * n + i`` of prompt ``p``), then one piece with the usage.

        Raises:
            ServeError: 504 past ``timeout`` seconds, 500 if the model failed on this request.
        """
        deadline = time.monotonic() + timeout
        usage = TokenUsage()
        try:
            while self.pending:
                try:
                    event = await asyncio.wait_for(self.queue.get(), max(deadline - time.monotonic(), 0))
                except asyncio.TimeoutError:
                    raise ServeError(504, f"the answer took longer than the server's request timeout of {timeout:g} s",
                                     "server_error", "timeout") from None
                if event.error is not None:
                    raise internal_error(f"inference failed: {event.error}"[:300])
                if event.text or event.finish_reason:
                    yield Piece(self.index[event.request_id] * self.n + event.index, event.text, event.finish_reason)
                if event.done:
                    self.pending.discard(event.request_id)
                    usage += TokenUsage(event.usage.prompt_tokens, event.usage.completion_tokens)
            yield Piece(usage=usage)
        finally:
            self.cancel()  # whatever still runs: the reader left, timed out or failed


async def collect(pieces: AsyncIterator[Piece]) -> Completion:
    """A whole answer from its streamed pieces."""
    texts: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    usage = TokenUsage()
    async for piece in pieces:
        if piece.usage is not None:
            usage = piece.usage
            continue
        texts.setdefault(piece.index, []).append(piece.text)
        if piece.finish_reason:
            finish[piece.index] = piece.finish_reason
    choices = tuple(GeneratedChoice(i, "".join(texts[i]), finish.get(i, "stop")) for i in sorted(texts))
    return Completion(choices, usage)
