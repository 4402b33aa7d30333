"""The decode engine (``rayft.generate``) against one-at-a-time decoding and plain batched ``generate``, in one run.

On ``smollm2-135m`` (the catalog's GGUF, converted once into ~/.cache/rayft; ``--model tiny`` or a failed load
uses a tiny random Llama instead), ``--prompts`` prompts of mixed lengths, greedy, ``--new-tokens`` each (the
end-of-sequence token does not stop a sequence, so every mode makes the same number of tokens):

1. ``engine_batched``: all prompts submitted to one engine at once (time to first token and inter-token latency
   percentiles from the streamed events);
2. ``engine_sequential``: the same prompts one after another through the engine;
3. ``generate_batched``: plain transformers ``generate`` of all prompts as one left-padded batch (the machine's
   reference for what batching is worth);
4. ``engine_adapters`` (with ``--adapters N`` > 0): as 1, over N random LoRA adapters round-robin in one forward.

Also measured: the cost of the KV-cache layout the engine did not take, re-stacking per-sequence caches into a
batch before each decode step (at the batch's mid-run lengths), against the engine's mean step time.
Prints JSON: tokens per second of wall time and of CPU time for each mode, and the ratios of both.

    python benchmarks/generation_engine.py [--model smollm2-135m|tiny] [--prompts 16] [--new-tokens 64]
                                           [--threads 2] [--adapters 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from generation_common import load, pct, prompts, rates, run_generate  # noqa: E402

from rayft.generate import DecodeEngine, EngineConfig, Request, SamplingParams  # noqa: E402


def run_engine(model, tok, batch: list[list[int]], new: int, together: bool, adapters: list[str | None]) -> dict:
    """Greedy decoding of ``batch`` through a fresh engine: all at once, or each after the previous finished."""
    engine = DecodeEngine(model, tok, EngineConfig(max_running=len(batch), step_tokens=256, max_queued=len(batch)),
                          eos_token_ids=[])
    params = SamplingParams(max_tokens=new, temperature=0)
    stamps: dict[str, list[float]] = {}
    outputs: dict[str, list[int]] = {}
    steps = 0

    def submit(i: int, ids: list[int]) -> None:
        request_id = f"r{i}"
        stamps[request_id], outputs[request_id] = [time.perf_counter()], []

        def sink(event, rid=request_id):
            stamps[rid].append(time.perf_counter())
            outputs[rid].extend(event.token_ids)

        engine.add(Request(ids, params, adapters[i % len(adapters)], request_id=request_id, sink=sink))

    start, cpu = time.perf_counter(), time.process_time()
    for i, ids in enumerate(batch):
        submit(i, ids)
        while not together and engine.has_work():
            engine.step()
            steps += 1
    while engine.has_work():
        engine.step()
        steps += 1
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    ttft = [s[1] - s[0] for s in stamps.values()]
    gaps = [b - a for s in stamps.values() for a, b in zip(s[1:], s[2:])]
    tokens = sum(len(o) for o in outputs.values())
    return {**rates(tokens, wall, cpu), "steps": steps,
            "step_ms": round(1000 * wall / steps, 1), "ttft_p50_s": round(pct(ttft, 0.5), 3),
            "ttft_p95_s": round(pct(ttft, 0.95), 3), "itl_p50_ms": round(1000 * pct(gaps, 0.5), 1),
            "itl_p95_ms": round(1000 * pct(gaps, 0.95), 1), "_outputs": [outputs[f"r{i}"] for i in range(len(batch))]}


def restack_ms(model, batch: list[list[int]], new: int, reps: int = 10) -> float:
    """Milliseconds to pad and stack per-sequence caches into one batch and split it back, per decode step."""
    cfg = model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    caches = [[torch.randn(1, heads, len(p) + new // 2, dim) for _ in range(2 * cfg.num_hidden_layers)]
              for p in batch]
    width = max(c[0].shape[2] for c in caches)
    start = time.process_time()
    for _ in range(reps):
        for layer in range(2 * cfg.num_hidden_layers):
            stacked = torch.cat([torch.nn.functional.pad(c[layer], (0, 0, width - c[layer].shape[2], 0))
                                 for c in caches])
            stacked = torch.cat([stacked, stacked[:, :, -1:]], dim=2)  # the step's new position
            for i, c in enumerate(caches):  # each sequence keeps its own rows back
                c[layer] = stacked[i: i + 1, :, width - c[layer].shape[2]:].clone()
    return 1000 * (time.process_time() - start) / reps


def lora_model(model, count: int):
    """``model`` wrapped in a PeftModel with ``count`` random rank-8 LoRA adapters on q/v (B not zero)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    peft = get_peft_model(model, config, adapter_name="a0")
    for i in range(1, count):
        peft.add_adapter(f"a{i}", config)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return peft.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--adapters", type=int, default=8)
    args = parser.parse_args()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON (DeepSpeed logs to stdout)
        report = measure(args)
    print(json.dumps(report, indent=1))


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    name, model, tok = load(args.model)
    batch = prompts(tok, args.prompts)
    run_generate(model, tok, batch[:2], 4)  # warm-up: first-call allocations and kernels
    report = {"model": name, "threads": args.threads, "prompt_tokens": [len(p) for p in batch],
              "new_tokens": args.new_tokens}
    report["engine_batched"] = run_engine(model, tok, batch, args.new_tokens, True, [None])
    report["engine_sequential"] = run_engine(model, tok, batch, args.new_tokens, False, [None])
    report["generate_batched"] = run_generate(model, tok, batch, args.new_tokens)
    if args.adapters:
        names = [f"a{i}" for i in range(args.adapters)]
        report["engine_adapters"] = run_engine(lora_model(model, args.adapters), tok, batch, args.new_tokens, True,
                                               names)
    same = report["engine_batched"].pop("_outputs") == report["engine_sequential"].pop("_outputs")
    report.get("engine_adapters", {}).pop("_outputs", None)
    batched = report["engine_batched"]
    step = 1000 * batched["cpu_s"] / batched["steps"]
    cost = restack_ms(model, batch, args.new_tokens)
    report["batched_equals_sequential"] = same
    report["restack"] = {"cpu_ms_per_step": round(cost, 1), "engine_cpu_ms_per_step": round(step, 1),
                         "share": round(cost / step, 3)}
    report["ratios"] = ratios(report, "tokens_per_s")
    report["cpu_ratios"] = ratios(report, "tokens_per_cpu_s")
    return report


def ratios(report: dict, rate: str) -> dict:
    """The engine's batched rate against one-at-a-time and plain ``generate``; mixed adapters against one model."""
    tps = {k: v[rate] for k, v in report.items() if isinstance(v, dict) and rate in v}
    out = {
        "batched_vs_sequential": round(tps["engine_batched"] / tps["engine_sequential"], 2),
        "batched_vs_generate": round(tps["engine_batched"] / tps["generate_batched"], 2),
        "sequential_vs_generate": round(tps["engine_sequential"] / tps["generate_batched"], 2),
    }
    if "engine_adapters" in tps:
        out["adapters_vs_batched"] = round(tps["engine_adapters"] / tps["engine_batched"], 2)
    return out


if __name__ == "__main__":
    main()
