"""Choosing the next token of one sequence, and turning its tokens into streamed text that never shows a stop string."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from rayft.generate.params import SamplingParams


def make_generator(params: SamplingParams, index: int) -> torch.Generator | None:
    """The random source of choice ``index``: seeded from ``params.seed + index``, or from torch's global seed."""
    if params.greedy:
        return None
    gen = torch.Generator()
    gen.manual_seed(params.seed + index if params.seed is not None else int(torch.randint(0, 2**62, ()).item()))
    return gen


def next_token(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None) -> int:
    """The next token from one row of logits: argmax when greedy, else temperature, top-k, top-p, then a draw."""
    if params.greedy:
        return int(logits.argmax())
    scores = _warpers(params)(None, logits.float()[None])[0]  # transformers' own temperature, top-k, top-p
    probs = scores.softmax(-1).cpu()  # drawn on the CPU: the seeded generator gives the same tokens on any device
    return int(torch.multinomial(probs, 1, generator=gen).item())


@lru_cache(maxsize=256)  # built once per distinct request parameters, not once per token
def _warpers(params: SamplingParams) -> Any:
    """transformers' logits warpers for ``params`` (temperature, then top-k, then top-p, as ``generate`` orders them)."""
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    warpers = LogitsProcessorList([TemperatureLogitsWarper(params.temperature)])
    if params.top_k > 0:
        warpers.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        warpers.append(TopPLogitsWarper(params.top_p))
    return warpers


class TextStream:
    """The text of one choice, released piece by piece.

    The whole answer is decoded again on each token (byte-level tokenizers merge bytes across tokens, so decoding
    tokens one at a time is wrong). Text is released only when no stop string can still start inside it: the last
    ``len(longest stop) - 1`` characters are held back, and so is a trailing replacement character (half of a
    multi-byte character). A stop string found anywhere in the text ends the choice there, even one spanning tokens.
    """

    def __init__(self, tokenizer: Any, stops: tuple[str, ...]) -> None:
        self.tok, self.stops = tokenizer, stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.ids: list[int] = []
        self.text = ""  # all text released so far
        self.stopped = False

    def push(self, token: int) -> str:
        """Adds one token; returns the newly released text ('' when nothing can be released yet)."""
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        start = max(len(self.text) - self.hold, 0)  # an earlier stop would have been found already
        cut = min((i for i in (text.find(s, start) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._release(text[:cut])
        if text.endswith("\ufffd"):
            return ""
        return self._release(text[: max(len(text) - self.hold, 0)])

    def flush(self) -> str:
        """Releases what was held back (the choice ended for another reason than a stop string)."""
        if self.stopped:
            return ""
        return self._release(self.tok.decode(self.ids, skip_special_tokens=True))

    def _release(self, text: str) -> str:
        if len(text) <= len(self.text):
            return ""
        delta, self.text = text[len(self.text):], text
        return delta
