"""How a causal LM's prompts are rendered into token ids: one definition for training and serving.

SFT and DPO render every training example through a :class:`PromptFormat` built by
:meth:`PromptFormat.of_training`; export records it in the adapter's manifest (``Manifest.prompt_format``,
:meth:`PromptFormat.to_dict`), and the server renders requests through the same object, so a served model
sees prompts exactly as it was trained on them: the same chat template (the tokenizer's template as it was at
training time, or the plain-text fallback when it had none), the same system prompt, the same special tokens,
and it stops where training ended its responses.

The server side::

    fmt = for_manifest(manifest, tokenizer)         # manifest None: a plain base model
    ids = fmt.render_chat(tokenizer, messages)      # /v1/chat/completions: [{"role", "content"}, ...]
    ids = fmt.render_completion(tokenizer, prompt)  # /v1/completions: plain text
    # the decoder stops at any of fmt.stop_token_ids, and at the strings fmt.stop (besides the request's own)

Manifests written before the field existed get today's serving behaviour: the tokenizer's own template and
the config's ``data.system_prompt`` (:meth:`PromptFormat.from_manifest`).

Importing this module loads only the standard library and :mod:`rayft.errors`; tokenizers are passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from rayft.errors import DataError, StoreError

FALLBACK_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"  # for tokenizers without a chat template
PAIRS, CHAT = "pairs", "chat"  # training rendered one prompt/response per row, or whole chat transcripts
ROLES = {"system", "user", "assistant"}
_PROBE = "RAYFTENDPROBE"  # a response whose text marks where the template's end of turn begins


def _ids(out: Any) -> list[int]:
    """``apply_chat_template(tokenize=True)`` returns a list or a BatchEncoding depending on version."""
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return list(out)


def normalize_messages(messages: list[Any], system: str | None) -> list[dict[str, str]]:
    """Messages as ``{"role", "content"}`` dicts (``system`` first when the conversation has no system message).

    Raises:
        DataError: for a message without a known role or without content.
    """
    out = []
    for m in messages:
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or m.get("content") is None:
            raise DataError(f"chat message {m!r} is malformed; expected {{'role': one of {sorted(ROLES)}, "
                            "'content': text}")
        out.append({"role": m["role"], "content": str(m["content"])})
    if system and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": system})
    return out


@dataclass(frozen=True)
class PromptFormat:
    """What training rendered prompts with; every field is JSON-safe (see :meth:`to_dict`)."""

    chat_template: str | None = None  # the tokenizer's template at training time; None: the text fallback
    fallback_template: str = FALLBACK_TEMPLATE  # a user turn without a chat template ("{prompt}" is its text)
    system_prompt: str | None = None  # put first when a conversation has no system message
    add_special_tokens: bool = True  # how plain prompt text is tokenized (completions, one-turn fallback)
    stop_token_ids: tuple[int, ...] = ()  # tokens that ended responses in training (end of turn, eos)
    stop: tuple[str, ...] = ()  # text that ends a response: the fallback's next instruction header
    # Without a chat template, a one-turn conversation is one text in the ``pairs`` layout (prompt/response
    # rows, DPO) and piece by piece after a bos token in the ``chat`` layout, as each was trained.
    layout: str = PAIRS

    # ------------------------------------------------------------ construction

    @classmethod
    def of_tokenizer(cls, tokenizer: Any, system_prompt: str | None = None, layout: str = PAIRS) -> PromptFormat:
        """The format a tokenizer implies today: its own chat template (or the fallback) and its stop tokens."""
        template = tokenizer.get_chat_template() if getattr(tokenizer, "chat_template", None) else None
        fmt = cls(chat_template=template, system_prompt=system_prompt or None, layout=layout)
        # without a template a model that misses its eos would go on with the next "### Instruction:" header
        stop = () if template else (fmt.fallback_template.split("{prompt}")[0].strip(),)
        return replace(fmt, stop_token_ids=fmt._stop_ids(tokenizer), stop=stop)

    @classmethod
    def of_training(cls, tokenizer: Any, cfg: Any, columns: Mapping[str, str] | None = None) -> PromptFormat:
        """The format SFT/DPO train ``cfg`` with: the tokenizer's template and ``cfg.data.system_prompt``.

        ``columns`` is the role → column map data preparation resolved; without it (at export) the layout is
        worked out again from the config and the data source's column names.
        """
        layout = PAIRS  # DPO and every other task render prompt/response rows
        if cfg.task.name == "sft" and "messages" in (_training_columns(cfg) if columns is None else columns):
            layout = CHAT
        return cls.of_tokenizer(tokenizer, cfg.data.system_prompt, layout)

    @classmethod
    def from_manifest(cls, manifest: Any, tokenizer: Any) -> PromptFormat:
        """The manifest's recorded format; for older manifests, the tokenizer's with the config's system prompt.

        Raises:
            StoreError: if the recorded format is malformed.
        """
        if manifest is None:
            return cls.of_tokenizer(tokenizer)
        if getattr(manifest, "prompt_format", None) is not None:
            return cls.from_dict(manifest.prompt_format)
        system = ((manifest.config or {}).get("data") or {}).get("system_prompt")
        return cls.of_tokenizer(tokenizer, system)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe mapping (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Any) -> PromptFormat:
        """The inverse of :meth:`to_dict`; keys it does not know (from newer versions) are ignored.

        Raises:
            StoreError: naming the field, its value and what was expected, for a malformed entry.
        """
        if not isinstance(data, Mapping):
            raise StoreError(f"manifest prompt_format: expected a mapping, got {data!r}")
        known = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for name, value in known.items():
            ok, expected = _CHECKS[name]
            if not ok(value):
                raise StoreError(f"manifest prompt_format.{name}: expected {expected}, got {value!r}")
        known.update({k: tuple(known[k]) for k in ("stop_token_ids", "stop") if k in known})
        return cls(**known)

    # ------------------------------------------------------------ serving

    def render_chat(self, tokenizer: Any, messages: list[Any]) -> list[int]:
        """Token ids of a conversation followed by the assistant turn opener, as training rendered prompts.

        Raises:
            DataError: for a malformed message.
        """
        return self._prompt(tokenizer, normalize_messages(messages, self.system_prompt), self.layout)

    def render_completion(self, tokenizer: Any, prompt: str) -> list[int]:
        """Token ids of a plain-text prompt (no template, no system prompt)."""
        return tokenizer(prompt, add_special_tokens=self.add_special_tokens)["input_ids"]

    # ------------------------------------------------------------ training

    def render_example(self, tokenizer: Any, prompt: str, response: str) -> tuple[list[int], int]:
        """Token ids of one prompt/response exchange and the length of its prompt part (masked from the loss)."""
        msgs = normalize_messages([{"role": "user", "content": prompt}], self.system_prompt)
        prompt_ids = self._prompt(tokenizer, msgs, PAIRS)
        if self.chat_template is not None:
            full = self._templated(tokenizer, msgs + [{"role": "assistant", "content": response}])
            if full[: len(prompt_ids)] == prompt_ids:
                return full, len(prompt_ids)
        # no template, or one that renders the prompt differently inside the whole exchange
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"] + eos, len(prompt_ids)

    def render_transcript(self, tokenizer: Any, messages: list[Any]) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of a whole chat and the (start, end) spans of its assistant turns (what is learned).

        Raises:
            DataError: for a malformed message.
        """
        msgs = normalize_messages(messages, self.system_prompt)
        if self.chat_template is None:
            return self._pieces(tokenizer, msgs)
        full = self._templated(tokenizer, msgs)
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant" or i == 0:
                continue
            start = len(self._templated(tokenizer, msgs[:i], add_generation_prompt=True))
            upto = self._templated(tokenizer, msgs[: i + 1])
            if full[: len(upto)] == upto and start < len(upto):  # templates that rewrite earlier turns: skip it
                spans.append((start, len(upto)))
        return full, spans

    # ------------------------------------------------------------ the renderings

    def _templated(self, tokenizer: Any, msgs: list[dict[str, str]], add_generation_prompt: bool = False) -> list[int]:
        return _ids(tokenizer.apply_chat_template(msgs, chat_template=self.chat_template, tokenize=True,
                                                  add_generation_prompt=add_generation_prompt))

    def _prompt(self, tokenizer: Any, msgs: list[dict[str, str]], layout: str) -> list[int]:
        """A normalized conversation and the assistant turn opener, as ``layout`` was trained."""
        if self.chat_template is not None:
            return self._templated(tokenizer, msgs, add_generation_prompt=True)
        roles = [m["role"] for m in msgs]
        if layout == PAIRS and roles in (["user"], ["system", "user"]):
            system = msgs[0]["content"] + "\n\n" if len(msgs) == 2 else ""
            text = system + self._fill(msgs[-1]["content"])  # one text: the system prompt, the filled template
            return tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"]
        return self._pieces(tokenizer, msgs)[0]

    def _pieces(self, tokenizer: Any, msgs: list[dict[str, str]]) -> tuple[list[int], list[tuple[int, int]]]:
        """The fallback for a transcript: bos, then each turn tokenized on its own; assistant turns end in eos."""
        ids: list[int] = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        spans = []
        for m in msgs:
            if m["role"] == "assistant":
                piece = tokenizer(m["content"], add_special_tokens=False)["input_ids"] + eos
                spans.append((len(ids), len(ids) + len(piece)))
            else:
                text = m["content"] + "\n\n" if m["role"] == "system" else self._fill(m["content"])
                piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
        return ids, spans

    def _fill(self, prompt: str) -> str:
        """The fallback template around a user turn (a plain replace: a stored template may hold other braces)."""
        return self.fallback_template.replace("{prompt}", prompt)

    def _stop_ids(self, tokenizer: Any) -> tuple[int, ...]:
        """The template's end-of-turn token (the special token right after an assistant reply), then eos."""
        out = []
        if self.chat_template is not None:
            from jinja2 import TemplateError

            try:
                text = tokenizer.apply_chat_template(
                    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}],
                    chat_template=self.chat_template, tokenize=False)
            except TemplateError:  # a template that refuses the probe: eos still ends a response
                text = ""
            after = text[text.rfind(_PROBE) + len(_PROBE):].lstrip() if _PROBE in text else ""
            first = tokenizer(after, add_special_tokens=False)["input_ids"][:1] if after else []
            out += [t for t in first if t in tokenizer.all_special_ids]
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in out:
            out.append(tokenizer.eos_token_id)
        return tuple(out)


def for_manifest(manifest: Any, tokenizer: Any) -> PromptFormat:
    """The format to serve a stored model with (``manifest`` None: a base model); see the module docstring.

    Raises:
        StoreError: if the manifest's recorded format is malformed.
    """
    return PromptFormat.from_manifest(manifest, tokenizer)


def _training_columns(cfg: Any) -> dict[str, str]:
    """The role → column map data preparation resolves for ``cfg`` (no columns if the source is unreadable)."""
    from rayft.data.prepare import catalog_columns
    from rayft.data.sources import source_columns
    from rayft.tasks.base import get_task, resolve_columns

    try:
        present = source_columns(cfg.data.source, cfg.data.format, cfg.data.named_splits(), cfg.data.hub_config)
    except DataError:  # e.g. exported where the data is not: the configured columns and defaults decide
        present = []
    return resolve_columns(get_task(cfg.task.name), cfg, catalog_columns(cfg.data.source), present)


def _str_or_none(v: Any) -> bool:
    return v is None or isinstance(v, str)


_CHECKS = {  # field → (accepts the value, what is expected)
    "chat_template": (_str_or_none, "a template string or null"),
    "fallback_template": (lambda v: isinstance(v, str) and "{prompt}" in v, "a string containing '{prompt}'"),
    "system_prompt": (_str_or_none, "a string or null"),
    "add_special_tokens": (lambda v: isinstance(v, bool), "true or false"),
    "stop_token_ids": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool)
                                                                      and t >= 0 for t in v),
                       "a list of token ids (non-negative integers)"),
    "stop": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(s, str) and s for s in v),
             "a list of non-empty strings"),
    "layout": (lambda v: v in (PAIRS, CHAT), f"{PAIRS!r} or {CHAT!r}"),
}
