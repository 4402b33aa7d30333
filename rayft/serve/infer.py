"""Inference on the models of one replica, free of Ray: the one place that tokenizes, runs models and shapes
their answers, for ``/v1/classify``, ``/v1/completions`` and ``/v1/chat/completions``.

The model deployment (:mod:`rayft.serve.replica`) and the tests call these functions on the models that
:mod:`rayft.serve.runtime` loads. Classification requests for different LoRA adapters on the same base run as one
forward pass with peft's mixed-adapter batches (``adapter_names=[...]``, one name per row); other methods (DoRA,
prompt learning) and full-weight models run one group per model. Generation runs one prompt at a time, plain or
streamed token by token.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from rayft.serve.api import ServeError, evicted, inference_failed
from rayft.serve.runtime import LoadedModel, activate
from rayft.tasks.sft import FALLBACK_TEMPLATE, _ids, generate

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
            batch = tok.pad(rows[start:start + ROWS_PER_FORWARD], return_tensors="pt")
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
    """Token ids of plain-text prompts (no chat template: ``/v1/completions`` semantics)."""
    return [loaded.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]


def render_chat(loaded: LoadedModel, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation followed by the assistant turn opener (the model's system prompt first,
    unless the conversation has one)."""
    tok = loaded.tokenizer
    if loaded.system_prompt and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": loaded.system_prompt}] + messages
    if getattr(tok, "chat_template", None):
        return _ids(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    history = "".join(f"{m['role']}: {m['content']}\n" for m in turns[:-1])
    text = (system + "\n\n" if system else "") + history + FALLBACK_TEMPLATE.format(prompt=turns[-1]["content"]
                                                                                    if turns else "")
    return tok(text, add_special_tokens=True)["input_ids"]


def complete(loaded: LoadedModel, model: Any, prompt_ids: list[int], params: dict[str, Any],
             generate_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Generate one continuation; ``params``: max_tokens, temperature, top_p, stop, seed.

    Returns ``{"text", "finish_reason", "prompt_tokens", "completion_tokens"}``.

    Raises:
        ServeError: 400 if the prompt leaves no room in the model's context.
    """
    limit = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    room = limit - len(prompt_ids)
    if room < 1:
        raise ServeError(400, f"the prompt has {len(prompt_ids)} tokens; model {loaded.model_id!r} takes at most "
                              f"{limit}", "invalid_request_error", "context_length_exceeded")
    new, finish = generate(model, loaded.tokenizer, prompt_ids, min(params["max_tokens"], room),
                           params["temperature"], params["top_p"], params.get("seed"), generate_kwargs)
    text = loaded.tokenizer.decode(new, skip_special_tokens=True)
    for stop in params.get("stop") or []:
        if stop in text:
            text, finish = text[: text.index(stop)], "stop"
    return {"text": text, "finish_reason": finish, "prompt_tokens": len(prompt_ids),
            "completion_tokens": len(new)}


def complete_text(loaded: LoadedModel, model: Any, prompts: list[str], params: dict[str, Any]) -> list[dict]:
    """Plain-text completion of each prompt (``/v1/completions``)."""
    return [complete(loaded, model, ids, params) for ids in completion_prompts(loaded, prompts)]


def complete_chat(loaded: LoadedModel, model: Any, messages: list[dict[str, str]], params: dict[str, Any]) -> dict:
    """The assistant's reply to a conversation, rendered with the tokenizer's chat template
    (``/v1/chat/completions``)."""
    return complete(loaded, model, render_chat(loaded, messages), params)


# ---------------------------------------------------------------- streaming


class _TextStream:
    """A transformers streamer that turns generated ids into text deltas, holding back partial stop strings."""

    def __init__(self, tokenizer: Any, stops: list[str], emit: Callable[[str], None]) -> None:
        self.tok, self.stops, self.emit = tokenizer, stops, emit
        self.ids: list[int] = []
        self.sent = 0
        self.stopped = False
        self.prompt_seen = False
        self.hold = max((len(s) for s in stops), default=1) - 1

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        ids = [i for i in value.flatten().tolist() if i != self.tok.eos_token_id]
        self.ids += ids
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        cut = min((text.index(s) for s in self.stops if s in text), default=None)
        if cut is not None:
            self.stopped = True
            self._send(text[:cut])
        elif not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            self._send(text[: len(text) - self.hold] if self.hold else text)

    def _send(self, text: str) -> None:
        if len(text) > self.sent:
            self.emit(text[self.sent:])
            self.sent = len(text)

    def end(self) -> None:
        pass

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> bool:  # a stopping criterion
        return self.stopped


def stream_complete(loaded: LoadedModel, model: Any, prompt_ids: list[int], params: dict[str, Any],
                    emit: Callable[[str], None]) -> dict[str, Any]:
    """:func:`complete`, calling ``emit(text)`` with each new piece of the answer."""
    from transformers import StoppingCriteriaList

    stream = _TextStream(loaded.tokenizer, params.get("stop") or [], emit)
    extra = {"streamer": stream, "stopping_criteria": StoppingCriteriaList([stream])}
    out = complete(loaded, model, prompt_ids, params, generate_kwargs=extra)
    stream._send(out["text"])  # whatever was held back
    return out
