"""The driver's peak memory and wall time of a short training run, data.engine ray against memory, on one generated
parquet file (tiny BERT, LoRA, a few steps), each driver a fresh process with a local Ray of its own.

    .venv/bin/python benchmarks/data_engine.py --rows 1000000 --steps 6

Prints one JSON object: per engine the driver's peak resident memory (``VmHWM``), the run's wall seconds and its
last metrics, and the ratios memory / ray. ``--memory-rows`` runs the in-memory engine on the first rows of the file
only (a smaller file, for machines where the whole file does not fit in the driver).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import tiny  # noqa: E402
from tests.support.streaming import run_driver, stream_config, write_parquet  # noqa: E402


def run(engine: str, model: Path, source: Path, tmp: Path, steps: int) -> dict:
    raw = stream_config(model, source, tmp, name=f"bench-{engine}",
                        data={"engine": engine, "validation_size": 0.002, "test_size": 0.001},
                        train={"max_steps": steps, "eval_every": steps, "batch_size": 16, "lr": 5e-2})
    started = time.perf_counter()
    out = run_driver(raw, tmp, timeout=3600)
    keep = ("step", "eval_accuracy", "startup_s", "startup_data_s", "startup_first_step_s")
    return {"peak_rss_mb": round(out["peak_rss_mb"], 1), "wall_s": round(time.perf_counter() - started, 1),
            "metrics": {k: out["metrics"].get(k) for k in keep}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--memory-rows", type=int, default=None, help="rows for the in-memory engine (default: all)")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rayft-data-engine-") as folder:
        tmp = Path(folder)
        model = tiny.make_bert(tmp / "bert")
        source = write_parquet(tmp / "rows.parquet", args.rows)
        memory_rows = args.memory_rows or args.rows
        small = write_parquet(tmp / "memory.parquet", memory_rows) if memory_rows != args.rows else source
        results = {"rows": args.rows, "memory_rows": memory_rows, "steps": args.steps,
                   "ray": run("ray", model, source, tmp, args.steps),
                   "memory": run("memory", model, small, tmp, args.steps)}
    results["ratios"] = {"peak_rss_memory_over_ray": round(results["memory"]["peak_rss_mb"]
                                                           / results["ray"]["peak_rss_mb"], 2),
                         "wall_memory_over_ray": round(results["memory"]["wall_s"] / results["ray"]["wall_s"], 2)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
