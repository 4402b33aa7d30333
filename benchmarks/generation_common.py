"""What the generation benchmarks share: the model, the prompt set, plain batched ``generate`` and percentiles.

``generation_engine.py`` (the decode engine in-process) and ``generation.py`` (the same prompts over HTTP through
``rayft serve``) import these, so both measure the same model on the same prompts against the same reference.
Free of ``rayft.generate`` and of Ray.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

TEXT = ("The river bends twice before it reaches the old mill, where the water slows and the town begins. "
        "Every spring the fields flood, the children count the herons, and the baker opens an hour early. "
        "Travellers ask about the bridge, which has stood for three hundred years and been rebuilt four times. ")


def load(name: str):
    """The model and tokenizer: the catalog's smollm2-135m, else (or with ``tiny``) a tiny random Llama."""
    from transformers import AutoModelForCausalLM

    from rayft.models.catalog import load_tokenizer, resolve_model

    path = None
    if name != "tiny":
        try:
            path = resolve_model(name)
        except Exception as exc:  # noqa: BLE001 - the benchmark still runs, on the fallback, and says so
            print(f"{name} did not load ({exc}); using a tiny Llama", file=sys.stderr)
    if path is None:
        from tests.support.tiny import make_llama

        name, path = "tiny-llama", str(make_llama(Path(tempfile.mkdtemp()) / "tiny-llama", hidden=64, layers=4))
    return name, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), load_tokenizer(path)


def prompts(tok, count: int) -> list[list[int]]:
    """``count`` prompts from 8 to about 120 tokens, longer and shorter ones interleaved."""
    ids = tok((TEXT * 4))["input_ids"]
    lengths = [8 + (i * 37) % 113 for i in range(count)]
    return [ids[i: i + n] for i, n in enumerate(lengths)]


def prompt_texts(tok, count: int) -> list[str]:
    """:func:`prompts` as text, for clients that send text (a server tokenizes them again)."""
    return [tok.decode(ids) for ids in prompts(tok, count)]


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; NaN when there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


def run_generate(model, tok, batch: list[list[int]], new: int) -> dict:
    """One left-padded ``generate`` call over the whole batch (end-of-sequence suppressed until ``new`` tokens)."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(len(p) for p in batch)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=pad)
    tokens = (out.shape[1] - width) * len(batch)
    return rates(tokens, time.perf_counter() - start, time.process_time() - cpu)


def rates(tokens: int, wall: float, cpu: float) -> dict:
    """Tokens per second of wall time, and per second of this process's CPU time: on a machine shared with other
    work, with one torch thread, the CPU-time rate is the figure that other processes barely move."""
    return {"tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1),
            "cpu_s": round(cpu, 2), "tokens_per_cpu_s": round(tokens / cpu, 1)}
