"""Instruction-data layouts for SFT: prompt/response pairs, alpaca records and chat transcripts
(rendered by :mod:`rayft.tasks.prompt_format`)."""

from __future__ import annotations

from typing import Any, Literal

from rayft.data.collate import IGNORE_INDEX
from rayft.tasks.base import TaskParams

Layout = Literal["auto", "prompt_response", "alpaca", "chat"]


class SFTParams(TaskParams):
    format: Layout = "auto"  # auto: chat if there is a messages column, alpaca if instruction/output, else pairs


PAIRS = ({"prompt": "prompt_column", "response": "response_column"}, {}, {"prompt": "prompt", "response": "response"})
ALPACA = ({"instruction": "instruction_column", "output": "output_column"}, {"input": "input_column"},
          {"instruction": "instruction", "output": "output", "input": "input"})
CHAT = ({"messages": "messages_column"}, {}, {"messages": "messages"})
LAYOUTS = {"prompt_response": PAIRS, "alpaca": ALPACA, "chat": CHAT}


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


def learned_labels(ids: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """Labels of a rendered chat: the tokens of the (start, end) spans are learned, everything else is masked."""
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    return labels
