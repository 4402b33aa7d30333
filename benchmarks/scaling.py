"""Scaling over nodes: the same sweep on 1, 2 and 3 simulated Ray nodes with the same total CPUs, and the time
a trial loses when its node is removed.

Nodes are real Ray nodes on this machine (``rayft.cluster.LocalCluster``: one raylet and object store each), so
the figures measure Ray's scheduling, cross-node data transfer (object store) and recovery, not a faster network.
For each layout: wall time, trials/hour, and the fraction of trial time the workers spend training (after their
first step) rather than waiting (scheduling, start-up, model build, evaluation/checkpointing). Then, on two
nodes, one trial is run twice: undisturbed, and with its worker's node removed right after its first
checkpoint; the difference is the time the fault cost. Ratios are against the 1-node layout of the same run.

Full size (MiniLM-L6 + LoRA on Rotten Tomatoes; ~1 h on 2 shared cores):

    python benchmarks/scaling.py --cpus 6 --trials 6 --train-size 2000 --steps 120 --eval-every 30

Reduced (a check that it works, minutes):

    python benchmarks/scaling.py --cpus 6 --trials 3 --train-size 256 --steps 12 --eval-every 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayft.config import build_config  # noqa: E402


def experiment(args: argparse.Namespace, out: str, trials: int, name: str) -> dict:
    return {
        "name": name, "output_dir": out,
        "model": {"name": args.model, "max_length": 64},
        "data": {"source": "rotten_tomatoes", "train_size": args.train_size, "validation_size": 64, "test_size": 0},
        "method": {"name": "lora", "r": 8, "alpha": 16, "target_modules": ["query", "value"]},
        "train": {"max_steps": args.steps, "eval_every": args.eval_every, "batch_size": 16, "lr": 1e-3,
                  "log_every": 1000},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "zero_stage": 2, "torch_threads": 1,
                    "resources_per_worker": {"trainer": 1}, "placement_strategy": "SPREAD"},
        "sweep": {"num_trials": trials, "searcher": "random", "scheduler": "none", "export_best": False,
                  "space": {"train.lr": {"loguniform": [3e-4, 3e-3]}}},
        "tracking": {"wandb": False},
    }


def start_cluster(nodes: int, total_cpus: int):
    """``nodes`` Ray nodes splitting ``total_cpus``; trial workers may run on any of them."""
    from rayft.cluster import LocalCluster

    per_node = total_cpus // nodes
    cluster = LocalCluster(head_cpus=per_node, head_resources={"trainer": per_node})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=per_node, resources={"trainer": per_node})
    return cluster


def run_layout(args: argparse.Namespace, nodes: int, out: str) -> dict:
    import ray

    from rayft.sweep import run_sweep

    cluster = start_cluster(nodes, args.cpus)
    try:
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        cfg = build_config(experiment(args, out, args.trials, f"scale-{nodes}"))
        start = time.perf_counter()
        outcome = run_sweep(cfg, address=cluster.address, verbose=0)
        wall = time.perf_counter() - start
    finally:
        ray.shutdown()
        cluster.shutdown()
    done = [t for t in outcome.trials if t.status == "DONE"]
    fractions = [_train_fraction(Path(outcome.path), t.trial_id) for t in outcome.trials]
    return {"nodes": nodes, "cpus_per_node": args.cpus // nodes, "trials": len(outcome.trials), "done": len(done),
            "wall_s": round(wall, 1), "trials_per_hour": round(3600 * len(done) / wall, 1),
            "train_fraction": round(statistics.mean(f for f in fractions if f is not None), 3)}


def _train_fraction(sweep_dir: Path, trial_id: str) -> float | None:
    """Share of a trial's time after its worker's first training step (the rest is waiting and start-up).

    Evaluation and checkpointing after the first step count as training time here.
    """
    found = [p for p in sweep_dir.glob(f"*{trial_id}*/result.json")]
    if not found:
        return None
    rows = [json.loads(line) for line in found[0].read_text().splitlines() if line]
    total = rows[-1].get("time_total_s") or 0
    startup = rows[0].get("startup_s") or 0  # trial start to the worker's first optimizer step
    return max(0.0, (total - startup) / total) if total else None


def node_loss(args: argparse.Namespace, out: str, fault: bool) -> dict:
    """One trial on two nodes; with ``fault``, remove its worker's node after the first checkpoint."""
    import ray
    from ray.util.state import list_actors

    from rayft.sweep import run_sweep

    removed: dict = {}

    def remove_after_first_checkpoint(root: Path) -> None:
        while not any(root.glob("**/checkpoint_*/rayft_state.json")):
            time.sleep(0.5)
        workers = [a for a in list_actors(address=cluster.dashboard_url, filters=[
            ("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])]
        node = cluster.node_of(workers[0]["node_id"]) if workers else None
        if node is not None and node is not cluster.head:
            removed["at_s"] = time.perf_counter() - start
            cluster.remove_node(node)
        else:
            removed["skipped"] = "the worker ran on the head node"

    name = "loss-fault" if fault else "loss-clean"
    cfg = build_config(experiment(args, out, 1, name))
    # Keep the worker off the head so that removing its node leaves the driver alive.
    cfg.scaling.resources_per_worker = {"worker_node": 1}
    cluster = _two_nodes_with_worker_resource(args.cpus)
    try:
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        start = time.perf_counter()
        if fault:
            threading.Thread(target=remove_after_first_checkpoint, args=(Path(out) / name,), daemon=True).start()
        outcome = run_sweep(cfg, address=cluster.address, verbose=0)
        wall = time.perf_counter() - start
    finally:
        ray.shutdown()
        cluster.shutdown()
    trial = outcome.trials[0]
    return {"wall_s": round(wall, 1), "status": trial.status, "step": trial.metrics.get("step"), **removed}


def _two_nodes_with_worker_resource(total_cpus: int):
    from rayft.cluster import LocalCluster

    cluster = LocalCluster(head_cpus=1)
    for _ in range(2):
        cluster.add_node(num_cpus=max(1, (total_cpus - 1) // 2), resources={"worker_node": 1})
    return cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", type=int, default=6, help="total CPUs, split evenly over the nodes")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--eval-every", type=int, default=30)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--layouts", default="1,2,3")
    parser.add_argument("--skip-node-loss", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    with tempfile.TemporaryDirectory(prefix="rayft-scaling-") as out:
        layouts = []
        for nodes in [int(n) for n in args.layouts.split(",")]:
            layouts.append(run_layout(args, nodes, out))
            print(json.dumps(layouts[-1]), file=sys.stderr, flush=True)
        base = layouts[0]
        for row in layouts:
            row["wall_vs_1_node"] = round(row["wall_s"] / base["wall_s"], 3)
            row["throughput_vs_1_node"] = round(row["trials_per_hour"] / max(base["trials_per_hour"], 1e-9), 3)
        report: dict = {"layouts": layouts, "config": vars(args)}
        if not args.skip_node_loss:
            clean, faulty = node_loss(args, out, fault=False), node_loss(args, out, fault=True)
            report["node_loss"] = {"clean": clean, "fault": faulty,
                                   "seconds_lost": round(faulty["wall_s"] - clean["wall_s"], 1),
                                   "wall_ratio": round(faulty["wall_s"] / clean["wall_s"], 3)}
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
