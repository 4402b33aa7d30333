"""Instruction-data layouts for SFT: prompt/response pairs, alpaca records and chat transcripts."""

from __future__ import annotations

from typing import Any, Literal

from rayft.data.collate import IGNORE_INDEX
from rayft.errors import DataError
from rayft.tasks.base import TaskParams

Layout = Literal["auto", "prompt_response", "alpaca", "chat"]


class SFTParams(TaskParams):
    format: Layout = "auto"  # auto: chat if there is a messages column, alpaca if instruction/output, else pairs


PAIRS = ({"prompt": "prompt_column", "response": "response_column"}, {}, {"prompt": "prompt", "response": "response"})
ALPACA = ({"instruction": "instruction_column", "output": "output_column"}, {"input": "input_column"},
          {"instruction": "instruction", "output": "output", "input": "input"})
CHAT = ({"messages": "messages_column"}, {}, {"messages": "messages"})
LAYOUTS = {"prompt_response": PAIRS, "alpaca": ALPACA, "chat": CHAT}
ROLES = {"system", "user", "assistant"}


def detect_layout(fmt: str, data: dict[str, Any], present: list[str]) -> str:
    """The layout in use: the configured one, else the one the configured or present columns point to."""
    if fmt != "auto":
        layout = fmt
    else:
        named = set((data.get("columns") or {}))
        if data.get("prompt_column") or data.get("response_column") or named & {"prompt", "response"}:
            layout = "prompt_response"
        elif "messages" in named or "messages" in present:
            layout = "chat"
        elif "instruction" in named or {"instruction", "output"} <= set(present):
            layout = "alpaca"
        else:
            layout = "prompt_response"
    if layout not in LAYOUTS:
        raise ValueError(f"unknown instruction-data layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    return layout


def layout_roles(layout: str, data: dict[str, Any], present: list[str]) -> tuple[dict, dict, dict]:
    """Column roles of a layout; alpaca's ``input`` becomes required when the data has that column."""
    roles, optional, defaults = LAYOUTS[layout]
    if layout == "alpaca" and "input" in present and not data.get("input_column"):
        return {**roles, **optional}, {}, defaults
    return roles, optional, defaults


def alpaca_prompt(instruction: Any, extra: Any) -> str:
    """The user turn of an alpaca record: the instruction, then its input (when there is one)."""
    text = str(instruction).strip()
    if extra is not None and str(extra).strip() and str(extra) != "nan":
        text += "\n\n" + str(extra).strip()
    return text


def _ids(out: Any) -> list[int]:
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return list(out)


def normalize_messages(messages: list[Any], system: str | None) -> list[dict[str, str]]:
    """Messages as ``{"role", "content"}`` dicts (the configured system prompt first when there is none).

    Raises:
        DataError: for a message without a known role or without content.
    """
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or m.get("content") is None:
            raise DataError(f"data: chat message {m!r} is malformed; expected {{'role': one of "
                            f"{sorted(ROLES)}, 'content': text}}")
        out.append({"role": m["role"], "content": str(m["content"])})
    if system and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": system})
    return out


def render_messages(tokenizer: Any, messages: list[Any], system: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of a whole chat and its labels: assistant turns are learned, everything else is masked."""
    msgs = normalize_messages(messages, system)
    if getattr(tokenizer, "chat_template", None):
        return _render_with_template(tokenizer, msgs)
    return _render_plain(tokenizer, msgs)


def _render_with_template(tokenizer: Any, msgs: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    full = _ids(tokenizer.apply_chat_template(msgs, tokenize=True))
    labels = [IGNORE_INDEX] * len(full)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant" or i == 0:
            continue
        start = len(_ids(tokenizer.apply_chat_template(msgs[:i], add_generation_prompt=True, tokenize=True)))
        upto = _ids(tokenizer.apply_chat_template(msgs[: i + 1], tokenize=True))
        if full[: len(upto)] == upto and start < len(upto):  # templates that rewrite earlier turns: skip the turn
            labels[start:len(upto)] = full[start:len(upto)]
    return full, labels


def _render_plain(tokenizer: Any, msgs: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """No chat template: the alpaca-style text template, one turn after another."""
    from rayft.tasks.sft import FALLBACK_TEMPLATE

    ids: list[int] = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    labels = [IGNORE_INDEX] * len(ids)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for m in msgs:
        if m["role"] == "assistant":
            piece = tokenizer(m["content"], add_special_tokens=False)["input_ids"] + eos
            labels += piece
        else:
            text = m["content"] + "\n\n" if m["role"] == "system" else FALLBACK_TEMPLATE.format(prompt=m["content"])
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            labels += [IGNORE_INDEX] * len(piece)
        ids += piece
    return ids, labels
