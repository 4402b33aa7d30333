"""How to run rows of different LoRA adapters in one decode forward: peft's mixed batch or a gathered matmul.

peft's mixed batch (``adapter_names``, what the decode engine uses) loops over the adapters present in the batch in
every LoRA layer: a sub-batch per adapter, two small matmuls each, then an index-add. A gathered LoRA in the style of
Punica's BGMV instead stacks every adapter's A and B once, gathers one (A, B) pair per row and runs two batched
matmuls per layer, however many adapters the batch holds. This measures, on one decode step of smollm2-135m
(16 rows, prompts already in the cache), the forward time of:

- ``single``: every row on one adapter (the reference the engine's 8-adapter case is compared to);
- ``peft_mixed``: the rows spread round-robin over N adapters through peft's ``adapter_names``;
- ``gathered``: the same rows through rayft's gathered LoRA (:mod:`rayft.generate.gathered`, what the engine uses
  when it can), and how long gathering the weights of a new batch composition takes (once per join or leave).

It also checks that ``gathered`` and ``peft_mixed`` give the same logits. Prints JSON with the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation_common import load, prompts  # noqa: E402

from rayft.generate.gathered import GatheredLora  # noqa: E402


def lora_model(model, count: int, rank: int):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False)
    torch.manual_seed(0)
    peft = get_peft_model(model, config, adapter_name="a0")
    for i in range(1, count):
        peft.add_adapter(f"a{i}", config)
    return peft.eval(), [f"a{i}" for i in range(count)]


def time_forward(peft, cache, width: int, ids, mask, positions, reps: int, **extra) -> tuple[float, torch.Tensor]:
    times, logits = [], None
    for _ in range(reps + 1):
        start = time.perf_counter()
        out = peft(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                   logits_to_keep=1, **extra)
        times.append(time.perf_counter() - start)
        cache.crop(-ids.shape[1])  # back to the prompt: every repetition decodes the same step
        logits = out.logits[:, -1]
    return statistics.median(times[1:]) * 1000, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    name, model, tok = load(args.model)
    peft, names = lora_model(model, args.adapters, args.rank)
    batch = prompts(tok, args.rows)
    width = max(map(len, batch))
    ids = torch.tensor([[tok.pad_token_id or 0] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    from transformers import DynamicCache

    cache = DynamicCache()
    rows = [i % args.adapters for i in range(args.rows)]
    with torch.inference_mode():
        peft(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1,
             adapter_names=[names[r] for r in rows])
        step = torch.full((args.rows, 1), 7)
        step_mask = torch.cat([mask, torch.ones(args.rows, 1, dtype=mask.dtype)], dim=1)
        positions = step_mask.sum(1, keepdim=True) - 1
        peft.set_adapter(names[0])
        single, _ = time_forward(peft, cache, width, step, step_mask, positions, args.reps)
        mixed, mixed_logits = time_forward(peft, cache, width, step, step_mask, positions, args.reps,
                                           adapter_names=[names[r] for r in rows])
        lora = GatheredLora(peft)
        start = time.perf_counter()
        with lora.rows([names[r] for r in rows]):  # the first use stacks every adapter, then gathers per row
            build = (time.perf_counter() - start) * 1000
            gather, gather_logits = time_forward(peft, cache, width, step, step_mask, positions, args.reps)
        start = time.perf_counter()
        with lora.rows([names[r] for r in rows[1:]] + [None]):  # a sequence left, another joined: gather only
            regather = (time.perf_counter() - start) * 1000
    report = {
        "setup": {"model": name, "rows": args.rows, "adapters": args.adapters, "rank": args.rank,
                  "threads": args.threads, "prompt_width": width},
        "decode_forward_ms": {"single_adapter": round(single, 2), "peft_mixed": round(mixed, 2),
                              "gathered": round(gather, 2), "first_composition_stack_and_gather": round(build, 2),
                              "next_composition_gather": round(regather, 2)},
        "ratios": {"peft_mixed_over_single": round(mixed / single, 3), "gathered_over_single": round(gather / single, 3),
                   "gathered_over_peft_mixed": round(gather / mixed, 3)},
        "max_logit_difference": float((gather_logits - mixed_logits).abs().max()),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
