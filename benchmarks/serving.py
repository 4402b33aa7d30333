"""Serving: hot-swapped LoRA adapters vs a merged model, cold loads, LRU churn and a burst with bad ids, in one run.

Builds a store of rank-8 LoRA adapters on the real all-MiniLM-L6-v2 (``minilm-l6``) plus adapter 0 merged into
its base (a full-weight model), serves it locally with ``rayft serve`` (one model replica), and measures over HTTP:

1. warm latency through the hot-swapped adapter vs the merged model, interleaved (goal: p50 ratio <= 1.15);
2. cold adapter load: first request to never-loaded adapters minus their warm latency, and the replica's own
   load path (``ModelPool.load``) timed in-process (goal: <= 150 ms);
3. ``--adapters`` distinct adapters requested round-robin with an LRU of ``--lru`` (< adapters): errors (goal 0)
   and throughput vs one adapter under the same concurrency (goal: ratio >= 0.8);
4. ``--burst`` concurrent requests over 20 adapters with invalid ids mixed in: every valid request must match
   in-process peft predictions, every invalid one must be a 4xx.

Prints JSON with p50/p95 and the ratios.

    python benchmarks/serving.py [--adapters 50] [--lru 8] [--requests 200] [--burst 1000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LABELS = ["rotten", "fresh"]
INVALID = ["../etc/passwd", "/etc/passwd", "no-such-adapter", "a00/../../x", "%2e%2e%2fa00", "..", "x" * 300, ""]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(ms, 0.5), 2), "p95_ms": round(pct(ms, 0.95), 2), "n": len(ms)}


def texts(n: int) -> list[str]:
    from rayft.data.sources import load_source

    df = load_source("rotten_tomatoes")
    return [str(t) for t in df[df.columns[0]].astype(str).head(n)]


def build_store(root: Path, n: int, rank: int) -> tuple[object, str]:
    """``n`` random rank-``rank`` LoRA adapters (a00, a01, ...) on minilm-l6 and ``merged`` = a00 merged in."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rayft.config.schema import ExperimentConfig
    from rayft.models import fingerprint, resolve_model
    from rayft.store import AdapterStore, Manifest

    base_path = resolve_model("minilm-l6")
    raw = {"name": "bench-serve", "model": {"name": "minilm-l6", "max_length": 64},
           "data": {"source": "rotten_tomatoes"}, "method": {"name": "lora", "r": rank, "alpha": 2 * rank,
                                                              "target_modules": ["query", "value"]},
           "tracking": {"wandb": False}}
    cfg = ExperimentConfig.model_validate(raw).model_dump(mode="json")
    store, fp = AdapterStore(root / "store"), fingerprint(base_path)
    base = AutoModelForSequenceClassification.from_pretrained(
        base_path, num_labels=2, id2label=dict(enumerate(LABELS)), label2id={k: i for i, k in enumerate(LABELS)})
    lora = LoraConfig(task_type="SEQ_CLS", r=rank, lora_alpha=2 * rank, target_modules=["query", "value"],
                      init_lora_weights=False)
    for i in range(n):
        torch.manual_seed(i)
        folder = root / f"a{i:02d}"
        get_peft_model(copy.deepcopy(base), copy.deepcopy(lora)).save_pretrained(folder)  # peft edits its config
        store.put(folder, Manifest(f"a{i:02d}", "adapter", "minilm-l6", fp, "lora", "sequence_classification",
                                   LABELS, {}, cfg, max_length=64))
    merged = PeftModel.from_pretrained(copy.deepcopy(base), str(root / "a00")).merge_and_unload()
    merged.save_pretrained(root / "merged")
    AutoTokenizer.from_pretrained(base_path).save_pretrained(root / "merged")
    full = dict(cfg, method={"name": "full"})
    store.put(root / "merged", Manifest("merged", "full", "minilm-l6", fp, "full", "sequence_classification",
                                        LABELS, {}, full, architecture="BertForSequenceClassification",
                                        max_length=64))
    return store, base_path


def post(session, url: str, model: str, inputs: list[str]) -> tuple[float, int, dict]:
    start = time.perf_counter()
    resp = session.post(url + "/v1/classify", json={"model": model, "inputs": inputs}, timeout=300)
    ms = (time.perf_counter() - start) * 1000
    return ms, resp.status_code, resp.json()


def warm_vs_merged(url: str, pool: list[str], rounds: int) -> dict:
    import requests

    s = requests.Session()
    for model in ("a00", "merged"):
        for _ in range(3):
            post(s, url, model, pool[:4])
    times: dict[str, list[float]] = {"a00": [], "merged": []}
    for i in range(rounds):
        for model in (("a00", "merged") if i % 2 == 0 else ("merged", "a00")):  # interleaved: same noise
            times[model].append(post(s, url, model, pool[i % 8:i % 8 + 4])[0])
    out = {"adapter": summary(times["a00"]), "merged": summary(times["merged"])}
    out["p50_ratio"] = round(out["adapter"]["p50_ms"] / out["merged"]["p50_ms"], 3)
    out["p95_ratio"] = round(out["adapter"]["p95_ms"] / out["merged"]["p95_ms"], 3)
    return out


def cold_loads(url: str, store, pool: list[str], ids: list[str]) -> dict:
    import requests

    from rayft.serve import runtime

    s = requests.Session()
    cold, warm = [], []
    for model in ids:
        cold.append(post(s, url, model, pool[:4])[0])
        warm.append(post(s, url, model, pool[:4])[0])
    local = runtime.ModelPool(store)
    local.load("a00@0")  # the base, once (a replica does this at its first request)
    loads = []
    for model in ids:
        start = time.perf_counter()
        local.load(f"{model}@0").close()
        loads.append((time.perf_counter() - start) * 1000)
    return {"first_request": summary(cold), "second_request": summary(warm),
            "load_over_http": summary([c - w for c, w in zip(cold, warm)]), "load_in_replica_code": summary(loads)}


def throughput(url: str, models: list[str], pool: list[str], n: int, workers: int) -> dict:
    import requests

    sessions = [requests.Session() for _ in range(workers)]

    def one(i: int) -> tuple[float, int]:
        ms, status, _ = post(sessions[i % workers], url, models[i % len(models)], [pool[i % len(pool)]])
        return ms, status

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        got = list(ex.map(one, range(n)))
    wall = time.perf_counter() - start
    return {"requests_per_s": round(n / wall, 2), "errors": sum(s != 200 for _, s in got),
            **summary([ms for ms, _ in got])}


def reference(base_path: str, store, ids: list[str], pool: list[str]):
    """In-process predictions of each adapter (plain peft), the ground truth of the burst."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rayft.tasks.sequence_classification import predict_proba

    tok = AutoTokenizer.from_pretrained(base_path)
    base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=2)
    model = PeftModel.from_pretrained(base, str(store.path(ids[0])), adapter_name=ids[0]).eval()
    for i in ids[1:]:
        model.load_adapter(str(store.path(i)), adapter_name=i)
    out = {}
    for i in ids:
        model.set_adapter(i)
        out[i] = predict_proba(model, tok, pool, 64)
    return out


def burst(url: str, ref, pool: list[str], n: int, workers: int) -> dict:
    import requests
    import torch

    ids = sorted(ref)
    sessions = [requests.Session() for _ in range(workers)]

    def one(i: int) -> str:
        bad = i % 10 == 7
        model = INVALID[i % len(INVALID)] if bad else ids[i % len(ids)]
        j = i % len(pool)
        _, status, body = post(sessions[i % workers], url, model, [pool[j]])
        if bad:
            return "invalid_4xx" if 400 <= status < 500 and "error" in body else f"invalid_{status}"
        if status != 200:
            return f"valid_{status}"
        got = torch.tensor([body["data"][0]["probabilities"][k] for k in LABELS])
        return "valid_ok" if torch.allclose(got, ref[model][j], atol=1e-4) else "valid_wrong"

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        outcomes = list(ex.map(one, range(n)))
    counts = {k: outcomes.count(k) for k in sorted(set(outcomes))}
    return {"requests": n, "seconds": round(time.perf_counter() - start, 2), "outcomes": counts,
            "all_correct": set(counts) <= {"valid_ok", "invalid_4xx"}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapters", type=int, default=50)
    p.add_argument("--lru", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--rounds", type=int, default=60, help="interleaved warm requests per model")
    p.add_argument("--requests", type=int, default=200, help="requests per throughput phase")
    p.add_argument("--burst", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="CPUs (torch threads) of the model replica")
    args = p.parse_args()
    if args.lru >= args.adapters:
        p.error("--lru must be smaller than --adapters (the point is churn)")

    import rayft.serve
    from rayft.cluster import free_port, init_ray
    from rayft.paths import quiet_libraries

    quiet_libraries()
    os.environ.setdefault("RAY_ADDRESS", "local")  # a Ray of its own, even where `ray start` runs on this machine
    with tempfile.TemporaryDirectory(prefix="rayft-bench-serve-") as tmp:
        t0 = time.perf_counter()
        store, base_path = build_store(Path(tmp), args.adapters, args.rank)
        pool = texts(64)
        print(f"store of {args.adapters} adapters + merged built in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        init_ray(num_cpus=max(2, args.threads), quiet=True)
        url = rayft.serve.start(str(store.root), port=free_port(), max_adapters=args.lru, num_cpus=args.threads)
        try:
            print("1/4 warm latency", file=sys.stderr)
            warm = warm_vs_merged(url, pool, args.rounds)
            print("2/4 cold loads", file=sys.stderr)
            cold = cold_loads(url, store, pool, [f"a{i:02d}" for i in range(args.adapters - 8, args.adapters)])
            print("3/4 LRU churn", file=sys.stderr)
            single = throughput(url, ["a00"], pool, args.requests, args.concurrency)
            churn = throughput(url, [f"a{i:02d}" for i in range(args.adapters)], pool, args.requests,
                               args.concurrency)
            print("4/4 burst", file=sys.stderr)
            ref = reference(base_path, store, [f"a{i:02d}" for i in range(20)], pool[:16])
            mixed = burst(url, ref, pool[:16], args.burst, max(args.concurrency, 32))
        finally:
            rayft.serve.shutdown()
    report = {
        "setup": {"base": "minilm-l6", "rank": args.rank, "adapters": args.adapters, "lru": args.lru,
                  "replica_cpus": args.threads, "concurrency": args.concurrency},
        "1_warm_adapter_vs_merged": {**warm, "goal_p50_ratio_max": 1.15},
        "2_cold_load": {**cold, "goal_ms_max": 150},
        "3_lru_churn": {"single_adapter": single, "round_robin": churn,
                        "throughput_ratio": round(churn["requests_per_s"] / single["requests_per_s"], 3),
                        "goal_ratio_min": 0.8, "goal_errors": 0},
        "4_burst_with_invalid_ids": mixed,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
