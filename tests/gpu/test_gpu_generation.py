"""rayft's decode engine on a GPU, without Ray: 16 prompts batched vs one at a time (bf16, SDPA)."""

from __future__ import annotations

import time

import torch

from rayft.generate import DecodeEngine, EngineConfig, Request, SamplingParams
from rayft.generate.device import accelerate
from tests.gpu.conftest import report

GREEDY = SamplingParams(max_tokens=64, temperature=0)


def _generate(engine: DecodeEngine, prompts: list[list[int]]) -> tuple[list[list[int]], float]:
    start = time.perf_counter()
    handles = [engine.add(Request(p, GREEDY)) for p in prompts]
    while engine.has_work():
        engine.step()
    seconds = time.perf_counter() - start
    return [list(h.result(timeout=0).choices[0].token_ids) for h in handles], seconds


def test_batched_generation(llm_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = accelerate(AutoModelForCausalLM.from_pretrained(llm_path).eval())
    tok = AutoTokenizer.from_pretrained(llm_path)
    prompts = [[5 + (i * 7 + j) % 60 for j in range(8 + i)] for i in range(16)]
    engine = DecodeEngine(model, tok, EngineConfig(max_running=16, step_tokens=512))
    _generate(engine, prompts[:2])  # warm-up (CUDA kernels, allocator)
    batched, batched_s = _generate(engine, prompts)
    alone = []
    start = time.perf_counter()
    for p in prompts:
        alone.append(_generate(engine, [p])[0][0])
    alone_s = time.perf_counter() - start
    tokens = sum(len(t) for t in batched)
    report("batched_generation_16", batched_tokens_per_s=round(tokens / batched_s, 1),
           one_at_a_time_tokens_per_s=round(sum(len(t) for t in alone) / alone_s, 1),
           batched_over_one_at_a_time=round((tokens / batched_s) / (sum(len(t) for t in alone) / alone_s), 2),
           same_greedy_tokens=sum(a == b for a, b in zip(batched, alone)))
    assert tokens > 0 and all(batched)
    assert tokens / batched_s > sum(len(t) for t in alone) / alone_s  # batching pays on a GPU
    assert torch.cuda.max_memory_allocated() > 0
