"""Every fine-tuning method side by side, same data, steps, batch and max_length, in one run; and ZeRO-3 against ZeRO-0.

Methods (default): one Ray Train run with 2 workers (DeepSpeed ZeRO-2, 1 CPU thread each) trains every registered
method in turn through rayft's own building blocks (model + method, DeepSpeed engine, gated schedule), then scores
the held-out test split. Per method: trainable parameters (count and %), steady-state samples/s (both workers,
after ``--warmup`` steps), peak memory per worker while training (resident set, above the worker's idle level), and
held-out quality as the task reports it. Ratios are against full fine-tuning measured in the same run. Two suites:

- ``--task sequence_classification`` (default): MiniLM-L6 + Rotten Tomatoes (the quickstart's data); test accuracy,
  higher is better.
- ``--task sft``: SmolLM2-135M instruction tuning on ChatterBot prompt/response pairs (experiments/chat_sft.yaml);
  test loss over the response tokens, lower is better. Methods the task refuses
  (:func:`rayft.tasks.method_problem`, or the config checks) are skipped and listed with the reason.

``--zero-memory``: a 2-worker full fine-tune of the suite's model, same data and steps, once at ZeRO-0 and once at
ZeRO-3 (two Ray Train runs, so that each stage starts from fresh worker processes); peak memory per worker and the
ratio ZeRO-3 / ZeRO-0 against the goal (<= 0.6). ZeRO partitions the model states (weights, gradients, optimizer
state), not the activations, so the ratio is ZeRO's where the states dominate: a decoder with
``--gradient-checkpointing`` and a small batch. The workers run with ``MALLOC_MMAP_THRESHOLD_`` set (see ``main``).

Memory: each worker first takes one unmeasured step of the first experiment (lazy imports and first-use buffers
would otherwise count against whichever experiment runs first), then every experiment's peak resident set is taken
above the level it starts from.

Prints JSON; ``--docs`` also writes the table to docs/methods.md (one marked block per suite and mode).

Full size (estimates for an idle 2-core machine). 150 steps on MiniLM-L6 is the smallest budget tried where the
methods differ (2.4 epochs of the 2,000 reviews); at 60 steps every method still predicted the majority class:
    python benchmarks/methods.py --docs docs/methods.md                       # about 30 minutes
    python benchmarks/methods.py --task sft --docs docs/methods.md            # about 80 minutes
    python benchmarks/methods.py --zero-memory --docs docs/methods.md         # about 5-8 minutes
    python benchmarks/methods.py --zero-memory --task sft --batch-size 2 --gradient-checkpointing \
        --train-size 64 --test-size 32 --steps 4 --warmup 1                    # ZeRO on SmolLM2: about 10 minutes
Reduced checks (the last two took about 10 and 3 minutes on a 2-core machine under a load average of 20-37):
    python benchmarks/methods.py --train-size 400 --test-size 200 --steps 12 --warmup 2
    python benchmarks/methods.py --task sft --train-size 64 --test-size 32 --steps 3 --warmup 1 --batch-size 4 \
        --eval-batch-size 8
    python benchmarks/methods.py --zero-memory --train-size 64 --test-size 32 --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BASELINE = "full"
ZERO_GOAL = 0.6  # ZeRO-3's peak memory per worker at most this fraction of ZeRO-0's (2 workers, full fine-tune)
# Each method at a learning rate that suits it (methods training few parameters need larger steps).
RECIPES = {
    "full": ({"layer_decay": 0.9}, 5e-5),
    "unfreeze": ({"every": 10, "unit": "step", "start_blocks": 1}, 1e-4),
    "bitfit": ({}, 1e-3),
    "lora": ({"r": 8, "alpha": 16, "target_modules": ["query", "value"]}, 1e-3),
    "dora": ({"r": 8, "alpha": 16, "target_modules": ["query", "value"]}, 1e-3),
    "qlora": ({"r": 8, "alpha": 16, "target_modules": ["query", "value"]}, 1e-3),
    "ia3": ({}, 5e-3),
    "adapter": ({"placement": "pfeiffer", "size": 64}, 1e-3),
    "prefix": ({"num_virtual_tokens": 20}, 1e-2),
    "prompt": ({"num_virtual_tokens": 20}, 3e-2),
    "ptuning": ({"num_virtual_tokens": 20}, 1e-2),
}
# SmolLM2 (Llama): attention projections are q_proj/v_proj, it has no bias terms (BitFit trains the RMSNorm weights
# instead), and LoRA-like methods take experiments/chat_sft.yaml's learning rate.
_LLAMA_ATTENTION = {"target_modules": ["q_proj", "v_proj"]}
SFT_RECIPES = {
    **RECIPES,
    "full": ({}, 5e-5),
    "bitfit": ({"norms": True}, 1e-3),
    "lora": ({"r": 8, "alpha": 16, **_LLAMA_ATTENTION}, 5e-4),
    "dora": ({"r": 8, "alpha": 16, **_LLAMA_ATTENTION}, 5e-4),
    "qlora": ({"r": 8, "alpha": 16, **_LLAMA_ATTENTION}, 5e-4),
}


class Suite(NamedTuple):
    """One model + data + task the methods are compared on, with the budget every method gets by default."""

    task: str
    title: str  # for the table
    model: str
    data: dict
    recipes: dict
    metric: str  # the task's held-out figure (without prefix)
    higher_is_better: bool
    defaults: dict  # train_size, test_size, steps, batch_size, max_length, eval_batch
    task_section: dict | None = None
    unit: str = "examples"


SUITES = {
    "sequence_classification": Suite(
        task="sequence_classification", title="MiniLM-L6 + Rotten Tomatoes", model="minilm-l6",
        data={"source": "rotten_tomatoes"}, recipes=RECIPES, metric="accuracy", higher_is_better=True,
        defaults={"train_size": 2000, "test_size": 500, "steps": 150, "batch_size": 16, "max_length": 64,
                  "eval_batch_size": 64}, unit="training reviews"),
    "sft": Suite(
        task="sft", title="SmolLM2-135M SFT on ChatterBot", model="smollm2-135m",
        data={"source": "chatterbot", "system_prompt": "You are a friendly, concise assistant."},
        recipes=SFT_RECIPES, metric="loss", higher_is_better=False,
        defaults={"train_size": 800, "test_size": 200, "steps": 40, "batch_size": 8, "max_length": 128,
                  "eval_batch_size": 16}, task_section={"name": "sft"}, unit="prompt/response pairs"),
}


def experiment(name: str, args: argparse.Namespace, out: str, zero_stage: int = 2) -> dict:
    suite = SUITES[args.task]
    params, lr = suite.recipes.get(name, ({}, 1e-3))
    raw = {
        "name": f"bench-{name}", "output_dir": out,
        "model": {"name": suite.model, "max_length": args.max_length},
        "data": {**suite.data, "train_size": args.train_size, "validation_size": 64, "test_size": args.test_size},
        "method": {"name": name, **params},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "lr": lr, "warmup_ratio": 0.06,
                  "scheduler": "linear", "eval_batch_size": args.eval_batch_size,
                  "gradient_checkpointing": args.gradient_checkpointing},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1, "zero_stage": zero_stage},
        "tracking": {"wandb": False},
    }
    if suite.task_section:
        raw["task"] = dict(suite.task_section)
    return raw


def refusal(name: str, args: argparse.Namespace, out: str) -> str | None:
    """Why the suite's task (or the config checks) refuse ``name`` at this size, or None when it can run."""
    from rayft.config import build_config
    from rayft.errors import ConfigError
    from rayft.tasks import get_task, method_problem

    why = method_problem(get_task(args.task), name)
    if why:
        return why
    try:
        build_config(experiment(name, args, out))
    except ConfigError as exc:
        return str(exc).strip().replace("\n", "; ")
    return None


def bench_loop(config: dict) -> None:
    """Ray Train worker: every experiment in turn; rank 0 writes one JSON line per experiment."""
    import gc
    import ctypes

    import torch

    from rayft.config.schema import ExperimentConfig
    from rayft.train.worker import driver_worker

    rank, world = driver_worker(threads=1)
    warm_up(ExperimentConfig.model_validate(config["experiments"][0]), config["data"], rank, world)
    for raw in config["experiments"]:
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give the previous method's memory back before measuring
        cfg = ExperimentConfig.model_validate(raw)
        row = measure(cfg, config["data"], rank, world, config["warmup"])
        rows = [None] * world
        torch.distributed.all_gather_object(rows, row)
        if rank == 0:
            peaks = [r["peak_mb"] for r in rows]
            with open(config["out"], "a") as fh:
                fh.write(json.dumps({**row, "peak_mb_per_worker": max(peaks), "peak_mb_workers": peaks}) + "\n")
            print(f"[bench] {cfg.method.name}: {json.dumps(row)}", flush=True)


def warm_up(cfg, data, rank: int, world: int) -> None:
    """One untimed, unmeasured training step of ``cfg``: pays the lazy imports and first-use allocations (model
    code, DeepSpeed, collectives, thread pools) that would otherwise count in the first experiment's peak memory."""
    import ctypes
    import gc

    from rayft.train import engine as E
    from rayft.train.recipe import Recipe

    recipe = Recipe.of(cfg)
    model = E.build_model(recipe, data)
    engine = E.build_engine(model, recipe, cfg.train.max_steps)
    batch = next(iter(E.make_loader(data.splits["train"], recipe, data.pad_id, rank, world, train=True)))
    engine.backward(E.train_loss(engine, recipe, batch))
    engine.step()
    del engine, model, batch
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(cfg, data, rank: int, world: int, warmup: int) -> dict:
    """Train one method for ``max_steps`` steps and score it on the test split."""
    import threading

    import psutil
    import torch

    from rayft.methods import method_summary
    from rayft.train import engine as E
    from rayft.train.recipe import Recipe

    proc, peak, stop = psutil.Process(), [0], threading.Event()
    idle = proc.memory_info().rss

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], proc.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    torch.manual_seed(cfg.train.seed)
    recipe = Recipe.of(cfg)
    model = E.build_model(recipe, data)
    info = method_summary(recipe.method, model, recipe.method_params)
    loader = E.make_loader(data.splits["train"], recipe, data.pad_id, rank, world, train=True)
    engine = E.build_engine(model, recipe, cfg.train.max_steps, steps_per_epoch=len(loader))
    samples, t0, epoch = 0, None, 0
    while engine.global_steps < cfg.train.max_steps:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            loss = E.train_loss(engine, recipe, batch)  # the task's own loss (sft: response tokens only)
            engine.backward(loss)
            engine.step()
            if engine.global_steps == warmup:
                t0 = time.perf_counter()
            elif engine.global_steps > warmup:
                samples += len(batch["input_ids"])
            if engine.global_steps >= cfg.train.max_steps:
                break
        epoch += 1
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    test = E.evaluate(engine, recipe, E.make_loader(data.splits["test"], recipe, data.pad_id, rank, world,
                                                    train=False))
    del engine, model
    return {"method": cfg.method.name, "zero_stage": cfg.scaling.zero_stage,
            "trainable_params": info["trainable_params"], "trainable_pct": info["trainable_pct"],
            "samples_per_s": samples * world / seconds, "peak_mb": (peak[0] - idle) / 2**20,
            "test": {k: float(v) for k, v in test.items() if isinstance(v, (int, float))}, "lr": cfg.train.lr,
            "final_loss": loss.item()}


def run(args: argparse.Namespace, experiments: list[dict], label: str) -> list[dict]:
    """One Ray Train run (2 workers, 1 CPU each) over ``experiments`` (raw configs), one row per experiment."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rayft.cluster import init_ray
    from rayft.config import build_config
    from rayft.config.loader import dump_config
    from rayft.data import prepare_data

    metric = SUITES[args.task].metric
    with tempfile.TemporaryDirectory(prefix="rayft-bench-methods-") as tmp:
        cfgs = [build_config(raw) for raw in experiments]
        data = prepare_data(cfgs[0])  # identical data for every experiment (same source, sizes and seed)
        init_ray(num_cpus=2, quiet=True)
        out = Path(tmp) / "rows.jsonl"
        out.touch()
        trainer = TorchTrainer(
            bench_loop, train_loop_config={"experiments": [dump_config(c) for c in cfgs], "data": data,
                                           "out": str(out), "warmup": args.warmup},
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name=label, storage_path=str(Path(tmp) / "ray")))
        finished = threading.Event()
        watcher = threading.Thread(target=_progress, args=(out, len(cfgs), metric, finished), daemon=True)
        watcher.start()
        try:
            trainer.fit()
        finally:
            finished.set()
            watcher.join()
        return [json.loads(line) for line in out.read_text().splitlines()]


def _progress(rows_file: Path, total: int, metric: str, finished: threading.Event) -> None:
    """Print one line per finished experiment while the run goes on."""
    done = 0
    while True:
        stop = finished.is_set()
        text = rows_file.read_text()
        for line in text[:text.rfind("\n") + 1].splitlines()[done:]:  # whole lines only
            row = json.loads(line)
            done += 1
            print(f"[{done}/{total}] {row['method']} (ZeRO-{row['zero_stage']}): {row['samples_per_s']:.1f} "
                  f"samples/s, peak {row['peak_mb_per_worker']:.0f} MB/worker, "
                  f"test {metric} {row['test'].get(metric, float('nan')):.3f}", file=sys.stderr, flush=True)
        if stop:
            return
        finished.wait(2)


def _budget(args: argparse.Namespace, suite: Suite) -> str:
    return (f"{suite.title}: {args.train_size} {suite.unit}, {args.test_size} held out, max_length "
            f"{args.max_length}, {args.steps} steps x batch {args.batch_size} per worker, 2 workers (Ray Train, "
            f"1 thread each), steady state after step {args.warmup}"
            + (", gradient checkpointing" if args.gradient_checkpointing else ""))


def methods_report(rows: list[dict], skipped: dict[str, str], args: argparse.Namespace, seconds: float) -> dict:
    """The JSON report of a methods run: per method its figures and ratios against the baseline of the same run."""
    suite = SUITES[args.task]
    base = next((r for r in rows if r["method"] == BASELINE), rows[0])
    key = f"test_{suite.metric}"
    return {
        "benchmark": "methods", "task": suite.task, "model": suite.model, "data": suite.data["source"],
        "baseline": base["method"], "seconds": round(seconds, 1),
        "quality": {"metric": key, "better": "higher" if suite.higher_is_better else "lower"},
        "setup": {k: v for k, v in vars(args).items() if k not in ("docs", "zero_memory")},
        "methods": {r["method"]: {
            "trainable_pct": r["trainable_pct"], "samples_per_s": round(r["samples_per_s"], 2),
            "peak_mb_per_worker": round(r["peak_mb_per_worker"], 1),
            key: round(r["test"][suite.metric], 4),
            **({"test_perplexity": round(r["test"]["perplexity"], 3)} if "perplexity" in r["test"] else {}),
            "speed_vs_full": round(r["samples_per_s"] / base["samples_per_s"], 3),
            "memory_vs_full": round(r["peak_mb_per_worker"] / max(base["peak_mb_per_worker"], 1), 3),
            f"{key}_minus_full": round(r["test"][suite.metric] - base["test"][suite.metric], 4),
        } for r in rows},
        "skipped": skipped,
    }


def table(rows: list[dict], skipped: dict[str, str], args: argparse.Namespace) -> str:
    suite = SUITES[args.task]
    base = next((r for r in rows if r["method"] == BASELINE), rows[0])
    arrow = "higher is better" if suite.higher_is_better else "lower is better"
    quality = f"test {suite.metric} ({'↑' if suite.higher_is_better else '↓'})"
    lines = [f"{_budget(args, suite)}; DeepSpeed ZeRO-2. Held-out quality: test {suite.metric}, {arrow}. Ratios "
             f"against `{base['method']}` from the same run.", "",
             f"| method | lr | trainable | trainable % | samples/s | x full | peak MB/worker | x full | {quality} |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['lr']:g} | {r['trainable_params']:,} | {r['trainable_pct']:.3f} | "
                     f"{r['samples_per_s']:.1f} | {r['samples_per_s'] / base['samples_per_s']:.2f} | "
                     f"{r['peak_mb_per_worker']:.0f} | "
                     f"{r['peak_mb_per_worker'] / max(base['peak_mb_per_worker'], 1):.2f} | "
                     f"{r['test'][suite.metric]:.3f} |")
    for name, why in skipped.items():
        lines.append(f"| {name} | skipped: {why} | | | | | | | |")
    return "\n".join(lines)


def zero_report(zero0: dict, zero3: dict, args: argparse.Namespace, seconds: float) -> dict:
    """ZeRO-3 against ZeRO-0 for the same full fine-tune: peak memory per worker and its ratio against the goal."""
    suite = SUITES[args.task]
    ratio = zero3["peak_mb_per_worker"] / max(zero0["peak_mb_per_worker"], 1e-9)

    def stage(r: dict) -> dict:
        return {"peak_mb_per_worker": round(r["peak_mb_per_worker"], 1),
                "peak_mb_workers": [round(x, 1) for x in r.get("peak_mb_workers", [r["peak_mb_per_worker"]])],
                "samples_per_s": round(r["samples_per_s"], 2), "final_loss": round(r["final_loss"], 4),
                f"test_{suite.metric}": round(r["test"][suite.metric], 4)}

    return {"benchmark": "methods-zero-memory", "task": suite.task, "model": suite.model,
            "data": suite.data["source"], "method": BASELINE, "workers": 2, "seconds": round(seconds, 1),
            "setup": {k: v for k, v in vars(args).items() if k not in ("docs", "zero_memory", "methods")},
            "stages": {"0": stage(zero0), "3": stage(zero3)},
            "zero3_over_zero0": round(ratio, 3), "goal": f"<= {ZERO_GOAL}", "goal_met": ratio <= ZERO_GOAL,
            "speed_zero3_over_zero0": round(zero3["samples_per_s"] / max(zero0["samples_per_s"], 1e-9), 3)}


def zero_table(report: dict, args: argparse.Namespace) -> str:
    suite = SUITES[args.task]
    lines = [f"{_budget(args, suite)}; full fine-tune, one Ray Train run per stage. Peak memory per worker is "
             f"the resident set above the worker's idle level while training (glibc giving blocks of 128 KiB and "
             f"more back when freed). Goal: ZeRO-3 <= {ZERO_GOAL}x ZeRO-0.",
             "", f"| ZeRO stage | peak MB/worker (max) | per worker | x ZeRO-0 | samples/s | test {suite.metric} |",
             "|---|---|---|---|---|---|"]
    base = report["stages"]["0"]["peak_mb_per_worker"]
    for stage, r in report["stages"].items():
        lines.append(f"| {stage} | {r['peak_mb_per_worker']:.0f} | "
                     f"{' / '.join(f'{x:.0f}' for x in r['peak_mb_workers'])} | "
                     f"{r['peak_mb_per_worker'] / max(base, 1e-9):.2f} | {r['samples_per_s']:.1f} | "
                     f"{r[f'test_{suite.metric}']:.3f} |")
    lines += ["", f"ZeRO-3 / ZeRO-0: {report['zero3_over_zero0']:.2f} "
                  f"(goal <= {ZERO_GOAL}: {'met' if report['goal_met'] else 'not met'})."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(SUITES), default="sequence_classification",
                        help="the suite: minilm-l6 on rotten_tomatoes (default) or smollm2-135m SFT on chatterbot")
    parser.add_argument("--zero-memory", action="store_true",
                        help="full fine-tune at ZeRO-0 and at ZeRO-3 instead of the methods (the suite's model)")
    parser.add_argument("--train-size", type=int, help="default: the suite's (2000 / 800)")
    parser.add_argument("--test-size", type=int, help="default: the suite's (500 / 200)")
    parser.add_argument("--steps", type=int, help="default: the suite's (150 / 40)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, help="per worker; default: the suite's (16 / 8)")
    parser.add_argument("--max-length", type=int, help="default: the suite's (64 / 128)")
    parser.add_argument("--eval-batch-size", type=int, help="default: the suite's (64 / 16)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="train.gradient_checkpointing for every experiment (activation memory down)")
    parser.add_argument("--methods", nargs="*", help="default: every registered method")
    parser.add_argument("--docs", help="write the markdown table to this file")
    args = parser.parse_args()
    for key, value in SUITES[args.task].defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 1 <= args.warmup < args.steps:
        parser.error(f"--warmup ({args.warmup}) must be at least 1 and below --steps ({args.steps})")
    started = time.perf_counter()
    if args.zero_memory:
        # glibc keeps freed blocks under its adaptive mmap threshold (up to 32 MiB) in the heap, so a process's
        # resident set stays at its high-water mark; ZeRO-3 gathers and frees every layer's weights in each step.
        # Blocks of 128 KiB and more are mmapped and given back when freed, for both stages alike, so the resident
        # set follows the live tensors (as a GPU allocator's peak does). The workers inherit it from this process.
        os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
        zero0, zero3 = (run(args, [experiment(BASELINE, args, tempfile.gettempdir(), zero_stage=stage)],
                            f"bench-methods-zero{stage}")[0] for stage in (0, 3))
        report = zero_report(zero0, zero3, args, time.perf_counter() - started)
        text, marker = zero_table(report, args), f"methods-zero-{args.task}"
    else:
        from rayft.methods import METHODS

        names = args.methods or [BASELINE] + [n for n in METHODS.names() if n != BASELINE]
        with tempfile.TemporaryDirectory(prefix="rayft-bench-methods-") as tmp:
            skipped = {n: why for n in names if (why := refusal(n, args, tmp))}
        for name, why in skipped.items():
            print(f"[skip] {name}: {why}", file=sys.stderr, flush=True)
        ran = [n for n in names if n not in skipped]
        if not ran:
            parser.error("every method was refused: " + json.dumps(skipped))
        rows = run(args, [experiment(n, args, tempfile.gettempdir()) for n in ran], "bench-methods")
        report = methods_report(rows, skipped, args, time.perf_counter() - started)
        text, marker = table(rows, skipped, args), ("methods" if args.task == "sequence_classification"
                                                    else f"methods-{args.task}")
    print(json.dumps(report, indent=2))
    if args.docs:
        write_docs(Path(args.docs), text, marker)
        print(text, file=sys.stderr)


def write_docs(path: Path, text: str, marker: str = "methods") -> None:
    """Replace the text between the ``marker`` benchmark markers of ``path`` (or append a section), atomically."""
    start, end = f"<!-- bench:{marker}:start -->", f"<!-- bench:{marker}:end -->"
    doc = path.read_text() if path.is_file() else "# Fine-tuning methods\n"
    block = f"{start}\n{text}\n{end}"
    if start in doc and end in doc:
        doc = doc[:doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + f"\n\n## Benchmark ({marker})\n\n" + block + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(doc)
    tmp.replace(path)


if __name__ == "__main__":
    main()
