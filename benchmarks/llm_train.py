"""LLM-scale training levers on smollm2-135m SFT (LoRA) over the chatterbot catalog data, side by side in one run.

Both comparisons drive rayft's worker step in this process (:class:`rayft.train.standalone.StepRunner`: the model
with its method, the DeepSpeed engine at ZeRO-2, the training loader) on a one-rank process group, without Ray:

- ``padding``: ``train.packing`` off (``batch_size`` examples a step, padded to the longest) vs on (``rows`` rows
  of ``max_length`` tokens, several examples each), each over one whole epoch of the same ``examples`` training
  examples (after one unmeasured warm-up step), so both train on the same tokens and the ratio does not hang on
  which few batches were drawn (this data has a long tail: a padded batch costs its size times its longest
  example). Real (non-padding) tokens per second, by wall time and by the process's CPU time (which a busy shared
  CPU disturbs less). Goal: packed >= 1.5x padded.
- ``checkpointing``: ``train.gradient_checkpointing`` off vs on, packed rows of ``max_length`` 1024, the same seed;
  the peak memory of each step above what was resident before it (CUDA allocator peak on a GPU, the resident
  high-water mark on a CPU), after a first step that creates the optimizer state, and the losses of ``steps`` steps.
  Goals: the step's peak memory >= 40% lower; losses equal to 1e-5.

Prints JSON with the figures, the ratios and whether each goal is met.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

import torch

from rayft.config import build_config
from rayft.data import prepare_data
from rayft.train.standalone import StepRunner, one_process_group


def experiment(args: argparse.Namespace, *, packing: bool, checkpointing: bool, max_length: int,
               batch_size: int) -> Any:
    raw = {"name": "llm-train", "model": {"name": args.model, "max_length": max_length, "dtype": args.dtype},
           "data": {"source": "chatterbot", "seed": args.seed, "train_size": args.examples}, "task": {"name": "sft"},
           "method": {"name": "lora", "r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
           "train": {"batch_size": batch_size, "lr": 2e-4, "packing": packing, "gradient_checkpointing": checkpointing,
                     "seed": args.seed},
           "scaling": {"zero_stage": 2, "gpus_per_worker": 1 if torch.cuda.is_available() else 0},
           "tracking": {"wandb": False}}
    return build_config(raw)


def measure(cfg: Any, data: Any, steps: int | None) -> list[Any]:
    """One warm-up step and ``steps`` more; ``None``: as many more as one epoch of the loader has (the warm-up
    step's batch comes round again as the epoch restarts, so the measured steps are exactly one epoch)."""
    runner = StepRunner(cfg, data, None if steps is None else 1 + steps)
    measured = runner.run()  # as many steps as the schedule spans
    del runner
    print(json.dumps({"packing": cfg.train.packing, "checkpointing": cfg.train.gradient_checkpointing,
                      "max_length": cfg.model.max_length, "steps": [vars(s) for s in measured]}),
          file=sys.stderr, flush=True)  # each case as it ends: a long run that is cut short still tells
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return measured


def tokens_per_s(steps: list[Any], clock: str = "seconds") -> float:
    """Real tokens per second of wall time (``seconds``) or of the process's CPU time (``cpu_seconds``)."""
    timed = steps[1:]  # the first step builds the optimizer state and warms up
    return sum(s.tokens for s in timed) / sum(getattr(s, clock) for s in timed)


def padding_report(args: argparse.Namespace, padded: list[Any], packed: list[Any]) -> dict[str, Any]:
    padded_tps, packed_tps = tokens_per_s(padded), tokens_per_s(packed)
    return {
        "examples": args.examples,
        "padded": {"batch_size": args.batch_size, "steps": len(padded) - 1,
                   "real_tokens": sum(s.tokens for s in padded[1:]), "tokens_per_s": round(padded_tps, 1),
                   "real_tokens_per_step": statistics.mean(s.tokens for s in padded[1:]),
                   "examples_per_step": statistics.mean(s.examples for s in padded[1:]),
                   "s_per_step": round(statistics.mean(s.seconds for s in padded[1:]), 3)},
        "packed": {"rows": args.rows, "max_length": args.pack_length, "steps": len(packed) - 1,
                   "real_tokens": sum(s.tokens for s in packed[1:]), "tokens_per_s": round(packed_tps, 1),
                   "real_tokens_per_step": statistics.mean(s.tokens for s in packed[1:]),
                   "examples_per_step": statistics.mean(s.examples for s in packed[1:]),
                   "s_per_step": round(statistics.mean(s.seconds for s in packed[1:]), 3)},
        "packed_over_padded_tokens_per_s": round(packed_tps / padded_tps, 3),
        "packed_over_padded_tokens_per_cpu_s": round(tokens_per_s(packed, "cpu_seconds")
                                                     / tokens_per_s(padded, "cpu_seconds"), 3),
        "goal_1_5x_met": packed_tps / padded_tps >= 1.5,
    }


def checkpointing_report(long: dict[str, int], kept: list[Any], recomputed: list[Any]) -> dict[str, Any]:
    kept_peak = statistics.median(s.peak_bytes for s in kept[1:])
    recomputed_peak = statistics.median(s.peak_bytes for s in recomputed[1:])
    loss_gap = max(abs(a.loss - b.loss) for a, b in zip(kept, recomputed))
    return {
        **long, "steps": len(kept),
        "peak_mib_off": round(kept_peak / 2**20, 1), "peak_mib_on": round(recomputed_peak / 2**20, 1),
        "peak_on_over_off": round(recomputed_peak / max(kept_peak, 1), 3),
        "s_per_step_off": round(statistics.mean(s.seconds for s in kept[1:]), 3),
        "s_per_step_on": round(statistics.mean(s.seconds for s in recomputed[1:]), 3),
        "losses_off": [round(s.loss, 6) for s in kept], "losses_on": [round(s.loss, 6) for s in recomputed],
        "max_loss_gap": loss_gap,
        "goal_40pct_lower_met": recomputed_peak <= 0.6 * kept_peak, "goal_losses_1e-5_met": loss_gap <= 1e-5,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--steps", type=int, default=5, help="checkpointing: measured steps per case (after one more)")
    parser.add_argument("--examples", type=int, default=320,
                        help="padding: the training examples both cases train one epoch over")
    parser.add_argument("--batch-size", type=int, default=16, help="padded: examples per step")
    parser.add_argument("--rows", type=int, default=2, help="packed: rows of max_length tokens per step")
    parser.add_argument("--pack-length", type=int, default=1024, help="padding comparison: model.max_length")
    parser.add_argument("--long-length", type=int, default=1024, help="checkpointing comparison: model.max_length")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="the data split's and the training's seed")
    parser.add_argument("--only", choices=["padding", "checkpointing"], help="one comparison (default: both)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU x{torch.get_num_threads()}"

    report: dict[str, Any] = {"device": device, "model": args.model, "dtype": args.dtype, "zero_stage": 2,
                              "method": "lora r=16", "seed": args.seed}
    with one_process_group("nccl" if torch.cuda.is_available() else "gloo"):
        data = None
        if args.only != "checkpointing":
            base = experiment(args, packing=False, checkpointing=False, max_length=args.pack_length,
                              batch_size=args.batch_size)
            data = prepare_data(base)
            padded = measure(base, data, None)
            packed = measure(experiment(args, packing=True, checkpointing=False, max_length=args.pack_length,
                                        batch_size=args.rows), data, None)
            report["padding"] = padding_report(args, padded, packed)
        if args.only != "padding":
            long = {"max_length": args.long_length, "batch_size": args.rows}
            long_data = data if data is not None and args.long_length == args.pack_length else prepare_data(
                experiment(args, packing=True, checkpointing=False, **long))
            kept = measure(experiment(args, packing=True, checkpointing=False, **long), long_data, args.steps)
            recomputed = measure(experiment(args, packing=True, checkpointing=True, **long), long_data, args.steps)
            report["checkpointing"] = checkpointing_report(long, kept, recomputed)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
