"""Generation over HTTP: ``rayft serve`` under concurrent streaming clients, one adapter and many, against the same
requests one after another and plain batched ``generate``, in one run.

On ``smollm2-135m``, the prompts of ``generation_engine.py`` (8 to about 120 tokens, mixed), greedy,
``--max-tokens`` new tokens each. A store of ``--adapters`` SFT LoRA adapters (random, B not zero, so each answers
differently) is exported through ``rayft.store.export_checkpoint`` and served by ``rayft.serve.start`` on
127.0.0.1 (one model replica with ``--threads`` CPUs). Every request is a streamed ``/v1/completions``
(``stream_options.include_usage``), timed by its client: time to first token is the time to the first chunk with
text, inter-token latency the gaps between later text chunks, tokens the ``usage`` the server reports.

(a) ``--clients`` concurrent clients, one request each, all on adapter ``a00``;
(b) the same over the adapters round-robin;
(c) the same requests one after another (one client);
(d) plain transformers ``generate`` of the same prompts as one left-padded batch in this process, no server
    (``--threads`` torch threads, like the replica; measured before Ray starts): the machine's reference;
idle: each prompt alone on the idle server (``--idle-repeats`` times, ``--idle-tokens`` new tokens), the
    baseline of the time-to-first-token goal.

Prints one JSON object: per case tokens/s, time to first token p50/p95, inter-token latency p50/p95, completion
tokens and wall seconds; the ratios ``a_over_c``, ``a_over_d``, ``b_over_a``, ``ttft_p95_loaded_over_idle``; and
``goals`` (a >= 5x c, a >= 0.8x d, b >= 0.8x a, loaded TTFT p95 <= 3x idle).

    python benchmarks/generation.py [--clients 16] [--adapters 8] [--max-tokens 64] [--threads 1] [--json-out F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generation_common import load, pct, prompt_texts, run_generate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SFT_EXPERIMENT = REPO / "experiments" / "chat_sft.yaml"  # the adapters' recorded config: the shipped SFT example
TIMEOUT_S = 900.0  # a queued request may wait for every request before it on a one-at-a-time server
MAX_RETRIES = 20  # 429 (replica full) answers a client waits out before giving up on a request
GOALS = {"a_over_c": (">=", 5.0), "a_over_d": (">=", 0.8), "b_over_a": (">=", 0.8),
         "ttft_p95_loaded_over_idle": ("<=", 3.0)}


# ---------------------------------------------------------------- the store


def experiment(model: str):
    """The shipped SFT experiment on ``model``: what the adapters' manifests record."""
    from rayft.config import load_config

    return load_config(SFT_EXPERIMENT, [f"model.name={model}", "name=bench-generation"])


def build_store(root: Path, count: int, cfg) -> Any:
    """``count`` LoRA adapters ``a00``, ``a01``, ... of ``cfg``'s method on its base, each with its own random B
    (seeded by its number), saved as a checkpoint's model folder and exported into ``root/store``."""
    import torch

    from rayft.methods import get_method
    from rayft.models import resolve_model
    from rayft.store import AdapterStore, export_checkpoint
    from rayft.tasks import get_task
    from rayft.train.handoff import MODEL_DIR

    method, task = get_method(cfg.method.name), get_task(cfg.task.name)
    base = task.build_model(resolve_model(cfg.model.name), cfg, None)
    model = method.apply(base, method.params.model_validate(cfg.method_params()), task.peft_task_type)
    store = AdapterStore(root / "store")
    for i in range(count):
        torch.manual_seed(i)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
        checkpoint = root / "checkpoints" / f"a{i:02d}"
        model.save_pretrained(checkpoint / MODEL_DIR)
        export_checkpoint(str(checkpoint), cfg, store, adapter_id=f"a{i:02d}")
    return store


# ---------------------------------------------------------------- one streamed request


def completion_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}


def read_stream(lines: Iterable[str], clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """From the server-sent event lines of one answer: when each chunk with text arrived, the usage, any error."""
    stamps: list[float] = []
    usage, error = None, None
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            error = str(chunk["error"].get("message", chunk["error"]))
        if any(c.get("text") for c in chunk.get("choices") or []):
            stamps.append(clock())
        usage = chunk.get("usage") or usage
    return {"stamps": stamps, "usage": usage, "error": error}


def request_result(start: float, read: dict[str, Any], retries: int = 0) -> dict[str, Any]:
    """Time to first token, inter-token gaps and completion tokens of one request sent at ``start``."""
    stamps, usage = read["stamps"], read["usage"]
    error = read["error"] or (None if stamps and usage else "no text" if not stamps else "no usage chunk")
    return {"ttft_s": stamps[0] - start if stamps else None, "gaps_s": [b - a for a, b in zip(stamps, stamps[1:])],
            "tokens": int((usage or {}).get("completion_tokens", 0)), "error": error, "retries": retries}


def stream_request(http, url: str, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One streamed completion; a 429 (replica full) is waited out (``Retry-After``) and retried, the time to first
    token still counting from the first try."""
    import httpx

    start, retries = time.perf_counter(), 0
    try:
        while True:
            with http.stream("POST", url + "/v1/completions", json=completion_body(model, prompt, max_tokens)) as r:
                if r.status_code == 429 and retries < MAX_RETRIES:
                    retries += 1
                    time.sleep(float(r.headers.get("retry-after") or 1))
                    continue
                if r.status_code != 200:
                    r.read()
                    return request_result(start, {"stamps": [], "usage": None,
                                                  "error": f"HTTP {r.status_code}: {r.text[:300]}"}, retries)
                return request_result(start, read_stream(r.iter_lines()), retries)
    except httpx.HTTPError as exc:
        return request_result(start, {"stamps": [], "usage": None, "error": f"{type(exc).__name__}: {exc}"}, retries)


# ---------------------------------------------------------------- a case: requests over some clients


def summarize(results: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """Aggregate tokens per second of wall time and the time-to-first-token / inter-token-latency percentiles."""
    ok = [r for r in results if not r["error"]]
    ttft = [r["ttft_s"] for r in ok]
    gaps = [g for r in ok for g in r["gaps_s"]]
    tokens = sum(r["tokens"] for r in ok)
    out = {"requests": len(results), "errors": len(results) - len(ok), "completion_tokens": tokens,
           "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 2) if wall > 0 else float("nan"),
           "ttft_p50_s": round(pct(ttft, 0.5), 3), "ttft_p95_s": round(pct(ttft, 0.95), 3),
           "itl_p50_ms": round(1000 * pct(gaps, 0.5), 1), "itl_p95_ms": round(1000 * pct(gaps, 0.95), 1)}
    if sum(r["retries"] for r in results):
        out["retries_429"] = sum(r["retries"] for r in results)
    if len(ok) < len(results):
        out["first_error"] = next(r["error"] for r in results if r["error"])
    return out


def run_case(url: str, jobs: list[tuple[str, str]], clients: int, max_tokens: int) -> dict[str, Any]:
    """``jobs`` ((model, prompt) pairs) over ``clients`` clients, each sending its share one after another;
    every client opens its connection before the clock starts."""
    import httpx

    results: list[dict[str, Any] | None] = [None] * len(jobs)
    ready = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        with httpx.Client(timeout=TIMEOUT_S) as http:
            try:
                http.get(url + "/healthz").raise_for_status()
            except httpx.HTTPError:
                ready.abort()
                raise
            ready.wait()
            for i in range(k, len(jobs), clients):
                try:
                    results[i] = stream_request(http, url, *jobs[i], max_tokens)
                except Exception as exc:  # noqa: BLE001 - a bad answer counts as a failed request
                    results[i] = request_result(time.perf_counter(), {"stamps": [], "usage": None,
                                                                      "error": f"{type(exc).__name__}: {exc}"})

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lost = {"stamps": [], "usage": None, "error": "its client stopped"}
    return summarize([r or request_result(start, lost) for r in results], wall)


# ---------------------------------------------------------------- the report


def ratios_and_goals(report: dict[str, Any]) -> tuple[dict[str, float | None], dict[str, bool]]:
    """The issue's ratios from the cases of ``report`` (None where a case has no figure) and whether each meets
    its goal (judged on the rounded figure the report shows)."""
    tps = {case: report[case]["tokens_per_s"] for case in ("a", "b", "c", "d")}
    ratios = {"a_over_c": _ratio(tps["a"], tps["c"]), "a_over_d": _ratio(tps["a"], tps["d"]),
              "b_over_a": _ratio(tps["b"], tps["a"]),
              "ttft_p95_loaded_over_idle": _ratio(report["a"]["ttft_p95_s"], report["idle"]["ttft_p95_s"])}
    goals = {f"{k}_{'min' if op == '>=' else 'max'}_{limit:g}":
             ratios[k] is not None and (ratios[k] >= limit if op == ">=" else ratios[k] <= limit)
             for k, (op, limit) in GOALS.items()}
    return ratios, goals


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 3) if den and num == num and den == den else None  # x == x: not NaN


def reference(args: argparse.Namespace) -> tuple[list[str], list[int], dict[str, Any]]:
    """(d): the prompts, their token counts as the server will see them, and plain batched ``generate``."""
    import torch

    torch.set_num_threads(args.threads)
    name, model, tok = load(args.model)
    if name != args.model:
        raise SystemExit(f"{args.model} did not load; the server could not serve it either")
    texts = prompt_texts(tok, args.clients)
    batch = [tok(t, add_special_tokens=True)["input_ids"] for t in texts]  # as the server tokenizes a prompt
    run_generate(model, tok, batch[:2], 4)  # warm-up: first-call allocations and kernels
    return texts, [len(b) for b in batch], run_generate(model, tok, batch, args.max_tokens)


def serve_cases(args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    """Build the store, start ``rayft serve`` and run the idle, (c), (a) and (b) cases over HTTP."""
    import ray

    import rayft.serve
    from rayft.cluster import free_port, init_ray

    adapters = [f"a{i:02d}" for i in range(args.adapters)]
    with tempfile.TemporaryDirectory(prefix="rayft-bench-gen-") as tmp:
        t0 = time.perf_counter()
        store = build_store(Path(tmp), args.adapters, experiment(args.model))
        print(f"store of {args.adapters} adapters built in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        os.environ.setdefault("RAY_ADDRESS", "local")  # a Ray of its own, even where `ray start` runs here
        init_ray(num_cpus=max(2, args.threads), quiet=True)
        try:
            url = rayft.serve.start(str(store.root), port=free_port(), max_adapters=args.adapters + 1,
                                    num_cpus=args.threads)
            warm = run_case(url, [(a, texts[0]) for a in adapters], 1, 4)
            if warm["errors"]:
                raise SystemExit(f"warm-up failed: {warm['first_error']}")
            out = {}
            for case, jobs, clients, tokens in [
                ("idle", [("a00", t) for t in texts] * args.idle_repeats, 1, args.idle_tokens),
                ("c", [("a00", t) for t in texts], 1, args.max_tokens),
                ("a", [("a00", t) for t in texts], args.clients, args.max_tokens),
                ("b", [(adapters[i % len(adapters)], t) for i, t in enumerate(texts)], args.clients,
                 args.max_tokens),
            ]:
                print(f"case {case}: {len(jobs)} requests over {clients} client(s)", file=sys.stderr, flush=True)
                out[case] = run_case(url, jobs, clients, tokens)
            return out
        finally:
            rayft.serve.shutdown()
            ray.shutdown()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    print("case d: plain batched generate", file=sys.stderr, flush=True)
    texts, prompt_tokens, d = reference(args)
    report: dict[str, Any] = {
        "setup": {"model": args.model, "threads": args.threads, "clients": args.clients, "adapters": args.adapters,
                  "max_tokens": args.max_tokens, "prompt_tokens": prompt_tokens, "idle_repeats": args.idle_repeats,
                  "idle_tokens": args.idle_tokens},
        "d": d, **serve_cases(args, texts)}
    report["ratios"], report["goals"] = ratios_and_goals(report)
    names = {"a": "a_concurrent_one_adapter", "b": "b_concurrent_adapters_round_robin", "c": "c_sequential",
             "d": "d_generate_batched_no_server", "idle": "idle_server"}
    return {names.get(k, k): v for k, v in report.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients, and requests per case")
    p.add_argument("--adapters", type=int, default=8, help="adapters of case (b), round-robin")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the model replica and of case (d)")
    p.add_argument("--idle-repeats", type=int, default=2, help="passes over the prompts on the idle server")
    p.add_argument("--idle-tokens", type=int, default=8, help="new tokens of each idle request")
    p.add_argument("--json-out", type=Path, help="also write the JSON here")
    args = p.parse_args()
    from rayft.paths import quiet_libraries

    quiet_libraries()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON (Ray and DeepSpeed log there)
        report = measure(args)
    text = json.dumps(report, indent=1)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
