"""Every fine-tuning method side by side: MiniLM-L6 + Rotten Tomatoes, same data, steps and batch, in one run.

One Ray Train run with 2 workers (DeepSpeed ZeRO-2, 1 CPU thread each) trains every registered method in turn
through rayft's own building blocks (model + method, DeepSpeed engine, gated schedule), then scores the held-out
test split. Per method: trainable parameters (count and %), steady-state samples/s (both workers, after
``--warmup`` steps), peak memory per worker while training (resident set, above the worker's idle level), and
held-out accuracy. Ratios are against full fine-tuning measured in the same run. Prints JSON; ``--docs`` also
writes the table to docs/methods.md.

Full size (about 10-15 minutes on 2 shared cores):
    python benchmarks/methods.py --train-size 2000 --steps 60 --docs docs/methods.md
Reduced check (a few minutes):
    python benchmarks/methods.py --train-size 400 --test-size 200 --steps 12 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BASELINE = "full"
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


def experiment(name: str, args: argparse.Namespace, out: str) -> dict:
    params, lr = RECIPES.get(name, ({}, 1e-3))
    return {
        "name": f"bench-{name}", "output_dir": out,
        "model": {"name": "minilm-l6", "max_length": 64},
        "data": {"source": "rotten_tomatoes", "train_size": args.train_size, "validation_size": 64,
                 "test_size": args.test_size},
        "method": {"name": name, **params},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "lr": lr, "warmup_ratio": 0.06,
                  "scheduler": "linear", "eval_batch_size": 64},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1, "zero_stage": 2},
        "tracking": {"wandb": False},
    }


def bench_loop(config: dict) -> None:
    """Ray Train worker: every method in turn; rank 0 writes one JSON line per method."""
    import gc
    import ctypes

    import torch

    from rayft.config.schema import ExperimentConfig
    from rayft.train.worker import driver_worker

    rank, world = driver_worker(threads=1)
    for raw in config["experiments"]:
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give the previous method's memory back before measuring
        cfg = ExperimentConfig.model_validate(raw)
        row = measure(cfg, config["data"], rank, world, config["warmup"])
        rows = [None] * world
        torch.distributed.all_gather_object(rows, row)
        if rank == 0:
            with open(config["out"], "a") as fh:
                fh.write(json.dumps({**row, "peak_mb_per_worker": max(r["peak_mb"] for r in rows)}) + "\n")
            print(f"[bench] {cfg.method.name}: {json.dumps(row)}", flush=True)


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
            loss = engine(**E.model_inputs(batch, engine.device)).loss
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
    return {"method": cfg.method.name, "trainable_params": info["trainable_params"],
            "trainable_pct": info["trainable_pct"], "samples_per_s": samples * world / seconds,
            "peak_mb": (peak[0] - idle) / 2**20, "test_accuracy": test["accuracy"], "lr": cfg.train.lr,
            "final_loss": loss.item()}


def run(args: argparse.Namespace) -> list[dict]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rayft.cluster import init_ray
    from rayft.config import build_config
    from rayft.config.loader import dump_config
    from rayft.data import prepare_data
    from rayft.methods import METHODS

    names = args.methods or [BASELINE] + [n for n in METHODS.names() if n != BASELINE]
    with tempfile.TemporaryDirectory(prefix="rayft-bench-methods-") as tmp:
        cfgs = [build_config(experiment(n, args, tmp)) for n in names]
        data = prepare_data(cfgs[0])  # identical data for every method (same source, sizes and seed)
        init_ray(num_cpus=2, quiet=True)
        out = Path(tmp) / "rows.jsonl"
        out.touch()
        trainer = TorchTrainer(
            bench_loop, train_loop_config={"experiments": [dump_config(c) for c in cfgs], "data": data,
                                           "out": str(out), "warmup": args.warmup},
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name="bench-methods", storage_path=str(Path(tmp) / "ray")))
        finished = threading.Event()
        watcher = threading.Thread(target=_progress, args=(out, len(names), finished), daemon=True)
        watcher.start()
        try:
            trainer.fit()
        finally:
            finished.set()
            watcher.join()
        return [json.loads(line) for line in out.read_text().splitlines()]


def _progress(rows_file: Path, total: int, finished: threading.Event) -> None:
    """Print one line per finished method while the run goes on."""
    done = 0
    while True:
        stop = finished.is_set()
        text = rows_file.read_text()
        for line in text[:text.rfind("\n") + 1].splitlines()[done:]:  # whole lines only
            row = json.loads(line)
            done += 1
            print(f"[{done}/{total}] {row['method']}: {row['samples_per_s']:.1f} samples/s, "
                  f"test accuracy {row['test_accuracy']:.3f}", file=sys.stderr, flush=True)
        if stop:
            return
        finished.wait(2)


def table(rows: list[dict], args: argparse.Namespace) -> str:
    base = next((r for r in rows if r["method"] == BASELINE), rows[0])
    lines = [f"MiniLM-L6 + Rotten Tomatoes: {args.train_size} training reviews, {args.test_size} held out, "
             f"{args.steps} steps x batch {args.batch_size} per worker, 2 workers (Ray Train, DeepSpeed ZeRO-2, "
             f"1 thread each), steady state after step {args.warmup}. Ratios against `{base['method']}` "
             "from the same run.", "",
             "| method | lr | trainable | trainable % | samples/s | x full | peak MB/worker | x full | "
             "test accuracy |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['lr']:g} | {r['trainable_params']:,} | {r['trainable_pct']:.3f} | "
                     f"{r['samples_per_s']:.1f} | {r['samples_per_s'] / base['samples_per_s']:.2f} | "
                     f"{r['peak_mb_per_worker']:.0f} | "
                     f"{r['peak_mb_per_worker'] / max(base['peak_mb_per_worker'], 1):.2f} | "
                     f"{r['test_accuracy']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--methods", nargs="*", help="default: every registered method")
    parser.add_argument("--docs", help="write the markdown table to this file")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = run(args)
    base = next((r for r in rows if r["method"] == BASELINE), rows[0])
    report = {"benchmark": "methods", "baseline": base["method"], "seconds": round(time.perf_counter() - started, 1),
              "setup": {k: v for k, v in vars(args).items() if k != "docs"},
              "methods": {r["method"]: {
                  "trainable_pct": r["trainable_pct"], "samples_per_s": round(r["samples_per_s"], 2),
                  "peak_mb_per_worker": round(r["peak_mb_per_worker"], 1),
                  "test_accuracy": round(r["test_accuracy"], 4),
                  "speed_vs_full": round(r["samples_per_s"] / base["samples_per_s"], 3),
                  "memory_vs_full": round(r["peak_mb_per_worker"] / max(base["peak_mb_per_worker"], 1), 3),
              } for r in rows}}
    print(json.dumps(report, indent=2))
    if args.docs:
        write_docs(Path(args.docs), table(rows, args))
        print(table(rows, args), file=sys.stderr)


def write_docs(path: Path, text: str) -> None:
    """Replace the text between the benchmark markers of ``path`` (or append a section), atomically."""
    start, end = "<!-- bench:methods:start -->", "<!-- bench:methods:end -->"
    doc = path.read_text() if path.is_file() else "# Fine-tuning methods\n"
    block = f"{start}\n{text}\n{end}"
    if start in doc and end in doc:
        doc = doc[:doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n## Benchmark\n\n" + block + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(doc)
    tmp.replace(path)


if __name__ == "__main__":
    main()
