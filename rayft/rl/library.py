"""Reward functions that ship with rayft (name them as ``rayft.rl.library:<function>`` in ``task.rewards``).

Each follows TRL's signature: ``f(prompts, completions, **columns) -> list[float]``.
"""

from __future__ import annotations

import re
from typing import Any


def uses_keyword(prompts: list[str], completions: list[str], keyword: list[str], **columns: Any) -> list[float]:
    """1 when the completion uses the row's ``keyword`` (as a whole word, any case), else 0."""
    return [float(bool(re.search(rf"\b{re.escape(str(k))}\b", c, flags=re.IGNORECASE)))
            for c, k in zip(completions, keyword)]


def length_target(prompts: list[str], completions: list[str], target_words: list[int] | None = None,
                  **columns: Any) -> list[float]:
    """1 for a completion of exactly ``target_words`` words (default 12), falling linearly to 0 at twice as far."""
    targets = target_words or [12] * len(completions)
    return [max(0.0, 1.0 - abs(len(c.split()) - int(t)) / max(int(t), 1)) for c, t in zip(completions, targets)]
