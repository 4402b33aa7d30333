"""DeepSpeed's engine against a plain loop, in one process and no Ray: what the engine itself costs per step.

``benchmarks/train_overhead.py`` compares whole runs minutes apart, and a host whose speed drifts by several
percent between minutes hides a 1-3 % effect. Here both train side by side in one process: four copies of the
same model (minilm-l6 + LoRA r=8, the overhead benchmark's setting), built in the order plain, engine, engine,
plain so that which copy got its memory first favours neither side, train on the same ``--block-steps``
batches in turn, one block each, ``--blocks`` times over. The engine is rayft's own (``rayft.train.engine``:
DeepSpeed ZeRO-2 on a gloo process group of one, torch AdamW, the same schedule); the plain loop is the
overhead benchmark's :class:`PlainTrainer`. A block pair is the engine's two blocks against the plain loop's
two blocks of the same pass, so drift over a pass cancels; the report gives the median of those ratios, the
time per step of forward, backward and optimizer step on each side, and how much of the engine's step is
DeepSpeed's own Python (profiled over ``--profile-steps`` extra steps; cProfile's own cost included).

    python benchmarks/engine_overhead.py [--blocks 8] [--block-steps 10] [--threads 2] [--zero-stage 2]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayft.cluster import free_port  # noqa: E402
from train_overhead import PlainTrainer, experiment  # noqa: E402

PHASES = ("forward", "backward", "step")
ORDER = ("plain", "engine", "engine", "plain")  # build order (ABBA) and the order of each pass


def timed_step(trainer, inputs: dict, times: dict[str, float]) -> None:
    """One training step of ``trainer`` (an engine or a :class:`PlainTrainer`), each phase's seconds added up."""
    t0 = time.perf_counter()
    loss = trainer(**inputs).loss
    t1 = time.perf_counter()
    trainer.backward(loss)
    t2 = time.perf_counter()
    trainer.step()
    t3 = time.perf_counter()
    for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2)):
        times[phase] += seconds


def pair_ratios(blocks: list[dict[str, float]]) -> list[float]:
    """Per pass (one block of each copy, in ORDER): the plain copies' seconds over the engines' — the engine's
    speed relative to the plain loop's over the same batches and the same stretch of time."""
    ratios = []
    for start in range(0, len(blocks) - len(ORDER) + 1, len(ORDER)):
        seconds = collections.Counter()
        for kind, block in zip(ORDER, blocks[start:start + len(ORDER)]):
            seconds[kind] += sum(block[p] for p in PHASES)
        ratios.append(seconds["plain"] / seconds["engine"])
    return ratios


def deepspeed_python_ms(trainer, batches: list[dict], steps: int) -> dict[str, float]:
    """Profile ``steps`` engine steps; milliseconds per step spent in DeepSpeed's Python and in all, profiled."""
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    for i in range(steps):
        timed_step(trainer, batches[i % len(batches)], collections.Counter())
    profile.disable()
    total = time.perf_counter() - start
    own = sum(stat[2] for (path, _, _), stat in pstats.Stats(profile).stats.items()
              if f"{os.sep}deepspeed{os.sep}" in path)
    return {"deepspeed_python_ms_per_step": round(1000 * own / steps, 2),
            "profiled_step_ms": round(1000 * total / steps, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=8, help="passes over the four copies")
    parser.add_argument("--block-steps", type=int, default=10, help="steps per block (the same batches each time)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--zero-stage", type=int, default=2, choices=(0, 1, 2, 3))
    parser.add_argument("--profile-steps", type=int, default=10)
    args = parser.parse_args()

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0",
                      WORLD_SIZE="1")
    from rayft.paths import quiet_libraries, setup_env

    setup_env()
    quiet_libraries()
    import torch
    import torch.distributed as dist

    from rayft.config import build_config
    from rayft.data import prepare_data
    from rayft.train import engine as E
    from rayft.train.recipe import Recipe

    steps = (args.blocks + 1) * args.block_steps + args.profile_steps  # the most one copy trains, warm-up included
    # stdout carries only the JSON report (DeepSpeed announces its op builds there)
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory(prefix="rayft-bench-") as tmp:
        spec = experiment(steps, args.block_steps, args.threads, tmp)
        spec["scaling"]["zero_stage"] = args.zero_stage
        cfg = build_config(spec)
        recipe = Recipe.of(cfg)
        data = prepare_data(cfg)
        torch.set_num_threads(args.threads)
        dist.init_process_group("gloo", rank=0, world_size=1)
        loader = E.make_loader(data.splits["train"], recipe, data.pad_id, 0, 1, train=True)
        batches = [E.model_inputs(b, torch.device("cpu")) for _, b in zip(range(args.block_steps), loader)]
        copies = []
        for kind in ORDER:  # every copy starts from the same weights
            torch.manual_seed(cfg.train.seed)
            model = E.build_model(recipe, data).train()
            copies.append(E.build_engine(model, recipe, steps) if kind == "engine" else PlainTrainer(cfg, model, steps))
        print(f"# {len(ORDER)} copies (plain, engine, engine, plain), {args.blocks} passes of {args.block_steps} "
              f"steps x batch {cfg.train.batch_size}, ZeRO-{args.zero_stage}, {args.threads} threads",
              file=sys.stderr, flush=True)
        for trainer in copies:  # warm-up: one block each, not counted
            for inputs in batches:
                timed_step(trainer, inputs, collections.Counter())
        blocks = []
        for i in range(args.blocks):
            for trainer in copies:
                times = collections.Counter()
                for inputs in batches:
                    timed_step(trainer, inputs, times)
                blocks.append(times)
            print(f"# pass {i + 1}: engine at {pair_ratios(blocks)[-1]:.3f} of the plain loop's speed",
                  file=sys.stderr, flush=True)
        profiled = deepspeed_python_ms(copies[1], batches, args.profile_steps)
        dist.destroy_process_group()

    per_step = {}
    for kind in ("plain", "engine"):
        mine = [b for k, b in zip(ORDER * args.blocks, blocks) if k == kind]
        n = len(mine) * args.block_steps
        per_step[kind] = {f"{p}_ms": round(1000 * sum(b[p] for b in mine) / n, 2) for p in PHASES}
        per_step[kind]["samples_per_s"] = round(
            n * cfg.train.batch_size / sum(b[p] for b in mine for p in PHASES), 2)
    ratios = pair_ratios(blocks)
    print(json.dumps({
        "benchmark": "engine_overhead",
        "setup": {"model": "minilm-l6", "method": "lora r=8 (query,value)", "batch_size": cfg.train.batch_size,
                  "zero_stage": args.zero_stage, "threads": args.threads, "passes": args.blocks,
                  "block_steps": args.block_steps, "process_group": "gloo, world size 1", "ray": False},
        "plain": per_step["plain"],
        "engine": per_step["engine"],
        "ratio_engine_over_plain": round(statistics.median(ratios), 3),
        "ratio_per_pass": [round(r, 3) for r in ratios],
        **profiled,
    }, indent=2))


if __name__ == "__main__":
    main()
