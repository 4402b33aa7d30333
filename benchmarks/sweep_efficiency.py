"""Sweep efficiency: Optuna TPE + ASHA versus random search with no early stopping, in one run.

Same model (minilm-l6 + LoRA), same data (rotten_tomatoes), same search space, same number of trials
and the same maximum epochs per trial. For each sweep it replays every evaluation in time order and
reports the trial-epochs (epochs trained by all trials so far) and the wall time each needed to reach
the best held-out (validation) accuracy the random search found; goal: TPE + ASHA needs <= 1/3.

TPE and ASHA rank trials by validation loss (``--metric``; the target stays validation accuracy): on small
data a classifier's accuracy sits at the majority class for the first part of most trials, so at an early ASHA
rung most trials tie on accuracy and ASHA, which stops only trials strictly below its cutoff, promotes them all;
the loss already separates them there.

It also measures the per-trial start-up (trial start → first training step) with rayft's lean start-up
(the sweep's hub, no placement-group cleaner, queue or dataset actor per trial, torch only in the workers,
later trials in processes prestarted with the training stack imported) against Ray's stock Train-in-Tune path
(``stock_trainer.py``: ``TorchTrainer`` with ``TuneReportCallback``) on the same short trials (in the order
before, after, after, before), and where the time goes (``startup_*`` phases); goal: <= 10 s.

Full size (about 2 h on 2 cores; ``--no-startup`` skips the start-up part, whose figures it also gives
for the random sweep's own trials; ``--seeds 0 1 2`` runs one pair of sweeps per seed and reports the median ratio):
    python benchmarks/sweep_efficiency.py --trials 20 --epochs 2 --train-size 1000 --val-size 300 --grace 2
TPE's random start against a shorter one, each TPE + ASHA sweep against the same random search per seed:
    python benchmarks/sweep_efficiency.py --no-startup --trials 20 --epochs 2 --train-size 800 --val-size 300 \
        --grace 2 --seeds 5 6 7 --tpe-startup 0 3
Start-up only (before/after, 6 short trials per sweep, 2 at a time):
    python benchmarks/sweep_efficiency.py --startup-only --train-size 400 --val-size 200
Quick check:
    python benchmarks/sweep_efficiency.py --trials 4 --epochs 1 --train-size 400 --val-size 200 --startup-trials 2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayft.config import build_config  # noqa: E402

PHASES = ("startup_launch_s", "startup_import_s", "startup_data_s", "startup_model_s", "startup_engine_s",
          "startup_first_step_s")


def experiment(args: argparse.Namespace, out: str, name: str, searcher: str, scheduler: str,
               trials: int, epochs: float, metric: str = "eval_accuracy", seed: int = 0,
               startup_trials: int | None = None) -> dict[str, Any]:
    evals_per_epoch = args.evals_per_epoch
    steps_per_epoch = -(-args.train_size // 16)
    return {
        "name": name, "output_dir": out,
        "model": {"name": "minilm-l6", "max_length": 64},
        "data": {"source": "rotten_tomatoes", "train_size": args.train_size, "validation_size": args.val_size,
                 "test_size": 0},
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "value"]},
        "train": {"epochs": epochs, "batch_size": 16, "lr": 1e-3, "warmup_ratio": 0.06, "log_every": 1000,
                  "eval_every": max(1, steps_per_epoch // evals_per_epoch), "eval_batch_size": 128},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "zero_stage": 2},
        "sweep": {"num_trials": trials, "searcher": searcher, "scheduler": scheduler, "metric": metric,
                  "mode": "min" if metric.endswith("loss") else "max", "grace_period": args.grace,
                  "reduction_factor": args.reduction, "seed": seed, "export_best": False,
                  **({"asha_promotion": args.asha_promotion} if scheduler == "asha" else {}),
                  **({"startup_trials": startup_trials} if startup_trials else {}),
                  "space": {"train.lr": {"loguniform": [1e-5, 1e-2]}, "method.r": {"choice": [2, 8, 16]},
                            "train.scheduler": {"choice": ["linear", "cosine"]},
                            "train.warmup_ratio": {"uniform": [0.0, 0.2]}}},
        "tracking": {"wandb": False},
    }


def replay(outcome: Any, target: float, started_at: float) -> dict[str, Any]:
    """Walk every evaluation of every trial in time order; cost until the best-so-far reaches ``target``.

    Two best accuracies come back: at a trial's last evaluation (the target's measure) and at any evaluation."""
    events = []
    for t in outcome.trials:
        for point in t.curve:
            if "eval_accuracy" in point and "timestamp" in point:
                events.append((point["timestamp"], t.trial_id, point.get("epoch", 0.0), point["eval_accuracy"]))
    events.sort()
    epochs: dict[str, float] = {}
    best = -1.0
    reached = None
    for stamp, tid, epoch, acc in events:
        epochs[tid] = max(epochs.get(tid, 0.0), epoch)
        best = max(best, acc)
        if reached is None and acc >= target - 1e-9:
            reached = {"trial_epochs": round(sum(epochs.values()), 3), "wall_s": round(stamp - started_at, 1)}
    total_epochs = round(sum(max((p.get("epoch", 0.0) for p in t.curve), default=0.0) for t in outcome.trials), 3)
    return {"best_final_eval_accuracy": round(best_final_accuracy(outcome), 4),
            "best_eval_accuracy_any_evaluation": round(best, 4), "to_target": reached,
            "total_trial_epochs": total_epochs,
            "sweep_wall_s": round(outcome.seconds, 1),
            "stopped_early": sum(t.status == "STOPPED" for t in outcome.trials), "trials": len(outcome.trials)}


def best_final_accuracy(outcome: Any) -> float:
    """The best validation accuracy at a trial's last evaluation: random search's is the target."""
    return max((t.metrics.get("eval_accuracy", 0.0) for t in outcome.trials), default=0.0)


def expected_random_cost(curves: list[list[tuple[float, float]]], target: float) -> dict[str, Any]:
    """Trial-epochs random search needs to reach ``target``, in expectation over the order of its trials.

    Random search draws its trials independently, so where in the sweep its best draw lands is luck: the replay
    above measures one order. Over all orders, with ``m`` of the trials reaching the target, each of the others
    comes before the first one that does with probability 1 / (m + 1) and then costs all its epochs, and the first
    one that does is any of the ``m`` alike and costs its epochs up to that evaluation. Trials counted one after
    another (none alongside), which can only favour random search. ``curves``: per trial, (epoch, accuracy) points.
    """
    first = [next((epoch for epoch, acc in c if acc >= target - 1e-9), None) for c in curves]  # epoch it hits
    hits = [epoch for epoch in first if epoch is not None]
    misses = [max((epoch for epoch, _ in c), default=0.0) for c, hit in zip(curves, first) if hit is None]
    if not hits:
        return {"trials_reaching_target": 0, "expected_trial_epochs": None}
    return {"trials_reaching_target": len(hits),
            "expected_trial_epochs": round(sum(misses) / (len(hits) + 1) + sum(hits) / len(hits), 3)}


def accuracy_curves(outcome: Any) -> list[list[tuple[float, float]]]:
    return [[(p.get("epoch", 0.0), p["eval_accuracy"]) for p in t.curve if "eval_accuracy" in p] for t in outcome.trials]


def trial_rows(outcome: Any) -> list[dict[str, Any]]:
    """Per trial: status, sampled values, last validation accuracy, epochs trained, start-up."""
    return [{"trial": t.trial_id, "status": t.status, "params": t.params,
             "eval_accuracy": round(t.metrics.get("eval_accuracy", 0.0), 4),
             "eval_loss": round(t.metrics.get("eval_loss", float("nan")), 4), "epoch": t.metrics.get("epoch"),
             "trial_startup_s": t.metrics.get("trial_startup_s"), "warm": t.metrics.get("startup_warm")}
            for t in outcome.trials]


def startup(outcomes: list[Any]) -> dict[str, Any]:
    """Median start-up of all trials, and apart for trials whose worker process was prestarted with the training
    stack imported ("warm": every trial after a sweep's first ``concurrent`` ones) and the others ("cold")."""
    rows = [t.metrics for o in outcomes for t in o.trials if "trial_startup_s" in t.metrics]
    out = {"trial_startup_s_median": round(statistics.median(r["trial_startup_s"] for r in rows), 2),
           "trial_startup_s": [round(r["trial_startup_s"], 2) for r in rows]}
    out.update({p: round(statistics.median(r[p] for r in rows if p in r), 2) for p in PHASES
                if any(p in r for r in rows)})
    for kind, group in (("warm", [r for r in rows if r.get("startup_warm")]),
                        ("cold", [r for r in rows if not r.get("startup_warm")])):
        out[f"{kind}_trials"] = len(group)
        if group:
            out[f"trial_startup_s_median_{kind}"] = round(statistics.median(r["trial_startup_s"] for r in group), 2)
            out[f"startup_launch_s_median_{kind}"] = round(statistics.median(r["startup_launch_s"] for r in group), 2)
    return out


def startup_ratio(before: dict[str, Any] | None, after: dict[str, Any] | None) -> float | None:
    """Median start-up after over before (None when the start-up part was skipped)."""
    if not before or not after:
        return None
    return round(after["trial_startup_s_median"] / before["trial_startup_s_median"], 3)


def measure_startup(args: argparse.Namespace, tmp: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Short trials through Ray's stock path and rayft's, in the order before, after, after, before: a machine
    that gets busier or quieter meanwhile favours neither."""
    from rayft.cluster import init_ray

    # The baseline is Ray's stock Train-in-Tune path, whose placement-group cleaner needs the state API.
    init_ray(num_cpus=args.cpus, quiet=True, dashboard=True)
    t0 = time.perf_counter()
    short = dict(trials=args.startup_trials, epochs=0.05)
    runs: dict[bool, list[Any]] = {False: [], True: []}
    for i, lean in enumerate((False, True, True, False)):
        name = f"startup-{'after' if lean else 'before'}-{i}"
        runs[lean].append(run(experiment(args, tmp, name, "random", "none", **short), lean=lean)[0])
    print(f"# start-up measured in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return startup(runs[False]), startup(runs[True])


def run(cfg_raw: dict[str, Any], lean: bool) -> tuple[Any, float]:
    import contextlib

    from stock_trainer import stock_sweep

    from rayft.options import startup_options
    from rayft.sweep import run_sweep

    started_at = time.time()  # wall time to a target counts from the sweep's start (data, Ray, every trial)
    trials = contextlib.nullcontext() if lean else stock_sweep()  # stock trials start cold
    with contextlib.redirect_stdout(sys.stderr), trials:  # stdout carries only the JSON report
        options = startup_options(warm_pool=None if lean else False)
        return run_sweep(build_config(cfg_raw), verbose=0, options=options), started_at


def compare(args: argparse.Namespace, tmp: str, seed: int, default_start: int) -> list[dict[str, Any]]:
    """One seed: random search with no early stopping, then TPE + ASHA once per ``--tpe-startup`` value, all seeded
    with ``seed``; per TPE + ASHA sweep, the trial-epochs and wall time each needed to reach the best validation
    accuracy the random search found, and their ratios. ``default_start``: TPE's start when the config leaves it
    unset, the value a ``--tpe-startup 0`` sweep is reported under."""
    rand, rand_t0 = run(experiment(args, tmp, f"random-{seed}", "random", "none", args.trials, args.epochs,
                                   seed=seed), lean=True)
    target = best_final_accuracy(rand)
    r = {**replay(rand, target, rand_t0), "any_order": expected_random_cost(accuracy_curves(rand), target)}
    # Each part as soon as it is measured (stderr), so a run cut short keeps what it found.
    print(f"# seed {seed} random " + json.dumps({**r, "trials_detail": trial_rows(rand)}), file=sys.stderr, flush=True)
    pairs = []
    for startup_trials in args.tpe_startup:
        label = f"tpe-asha-{seed}" + (f"-startup{startup_trials}" if startup_trials else "")
        tpe, tpe_t0 = run(experiment(args, tmp, label, "tpe", "asha", args.trials, args.epochs, args.metric,
                                     seed=seed, startup_trials=startup_trials), lean=True)
        a = replay(tpe, target, tpe_t0)
        print(f"# seed {seed} {label} " + json.dumps({**a, "trials_detail": trial_rows(tpe)}), file=sys.stderr,
              flush=True)
        pair = {"seed": seed, "tpe_startup_trials": startup_trials or default_start,
                "target_eval_accuracy": round(target, 4), "random_no_stopping": r, "tpe_asha": a,
                **ratios(a, r)}
        print(f"# seed {seed} {label}: trial-epochs ratio {pair['trial_epochs_ratio']} (against random search's "
              f"expectation over orders {pair['trial_epochs_ratio_any_order']}), wall ratio {pair['wall_ratio']}",
              file=sys.stderr, flush=True)
        pairs.append(pair)
    pairs[0]["random_outcome"] = rand
    return pairs


def ratios(a: dict[str, Any], r: dict[str, Any]) -> dict[str, float | None]:
    """TPE + ASHA's cost to the target over random search's: in the order random search drew its trials, in wall
    time, and against random search's expected cost over every order of its trials (see above); None when TPE +
    ASHA never reached it."""
    reached = a["to_target"] and r["to_target"]
    expected = r["any_order"]["expected_trial_epochs"]
    return {"trial_epochs_ratio": (round(a["to_target"]["trial_epochs"] / r["to_target"]["trial_epochs"], 3)
                                   if reached else None),
            "wall_ratio": (round(a["to_target"]["wall_s"] / r["to_target"]["wall_s"], 3)
                           if reached and r["to_target"]["wall_s"] > 0 else None),
            "trial_epochs_ratio_any_order": (round(a["to_target"]["trial_epochs"] / expected, 3)
                                             if a["to_target"] and expected else None)}


def default_startup(args: argparse.Namespace) -> int:
    """TPE's random start when the config leaves it unset (rayft.sweep.search.tpe_startup_trials)."""
    from rayft.sweep.search import tpe_startup_trials

    return tpe_startup_trials(build_config(experiment(args, "/tmp", "probe", "tpe", "asha", args.trials,
                                                      args.epochs, args.metric)))


def medians(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over seeds of each ratio; a seed whose TPE + ASHA sweep never reached the target counts as infinitely
    slow."""
    def median(key: str) -> float | None:
        value = statistics.median(math.inf if p[key] is None else p[key] for p in pairs)
        return round(value, 3) if math.isfinite(value) else None

    return {"trial_epochs_ratio_median": median("trial_epochs_ratio"), "wall_ratio_median": median("wall_ratio"),
            "trial_epochs_ratios": [p["trial_epochs_ratio"] for p in pairs],
            "trial_epochs_ratio_any_order_median": median("trial_epochs_ratio_any_order"),
            "trial_epochs_ratios_any_order": [p["trial_epochs_ratio_any_order"] for p in pairs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--startup-trials", type=int, default=6,
                        help="short trials per start-up measurement (the first 2 of each sweep start cold)")
    parser.add_argument("--evals-per-epoch", type=int, default=4, help="evaluations (ASHA rungs) per epoch")
    parser.add_argument("--grace", type=int, default=3, help="ASHA grace period, in evaluations")
    parser.add_argument("--reduction", type=int, default=3, help="ASHA reduction factor")
    parser.add_argument("--asha-promotion", default="deferred", choices=("deferred", "eager"),
                        help="deferred: a trial waits at a rung until it has reduction-factor results to compare "
                             "(rayft.sweep.asha); eager: Ray's ASHA, which continues the first trials at a rung")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one pair of sweeps (random, TPE + ASHA) per seed; the report gives each seed's ratios "
                             "and their median")
    parser.add_argument("--tpe-startup", type=int, nargs="+", default=[0], metavar="N",
                        help="TPE's random start (sweep.startup_trials; 0: the config's default); several values run "
                             "one TPE + ASHA sweep each against the same random search, and the report gives each "
                             "value's medians")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--metric", default="eval_loss", choices=("eval_loss", "eval_accuracy"),
                        help="what TPE and ASHA optimize (the target is validation accuracy either way); validation "
                             "loss ranks trials while their accuracy still ties at the majority class")
    parser.add_argument("--startup-only", action="store_true", help="measure only the per-trial start-up")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up measurement")
    args = parser.parse_args()
    if args.startup_only and args.no_startup:
        parser.error("--startup-only and --no-startup exclude each other")
    import ray

    from rayft.cluster import init_ray

    with tempfile.TemporaryDirectory(prefix="rayft-bench-sweep-") as tmp:
        before = after = None
        if not args.no_startup:
            before, after = measure_startup(args, tmp)
            ray.shutdown()
        if args.startup_only:
            print(json.dumps({"benchmark": "sweep_startup", "startup_before": before, "startup_after": after,
                              "startup_ratio_after_over_before": startup_ratio(before, after),
                              "goal_startup_s": 10}, indent=2))
            return
        init_ray(num_cpus=args.cpus, quiet=True)  # the sweeps themselves on a local Ray as rayft starts it
        default_start = default_startup(args)
        pairs = [pair for seed in args.seeds for pair in compare(args, tmp, seed, default_start)]
        in_random = startup([p.pop("random_outcome") for p in pairs if "random_outcome" in p])
    by_startup = {n: [p for p in pairs if p["tpe_startup_trials"] == n] for n in dict.fromkeys(
        p["tpe_startup_trials"] for p in pairs)}
    report = {
        "benchmark": "sweep_efficiency",
        "setup": {"model": "minilm-l6", "method": "lora",
                  "data": f"rotten_tomatoes {args.train_size} train / {args.val_size} val",
                  "trials": args.trials, "max_epochs_per_trial": args.epochs, "cpus": args.cpus, "seeds": args.seeds,
                  "asha": {"evals_per_epoch": args.evals_per_epoch, "grace_evals": args.grace,
                           "reduction_factor": args.reduction, "promotion": args.asha_promotion},
                  "space": "lr, lora r, schedule, warmup", "tpe_asha_metric": args.metric,
                  "tpe_startup_trials": list(by_startup)},
        **medians(next(iter(by_startup.values()))),  # the first --tpe-startup value's
        "by_tpe_startup_trials": ({n: medians(group) for n, group in by_startup.items()} if len(by_startup) > 1
                                  else None),
        "goal_ratio": 0.333,
        "per_seed": pairs,
        "startup_before": before, "startup_after": after,
        "startup_ratio_after_over_before": startup_ratio(before, after),
        "startup_in_random_sweeps": in_random,
        "goal_startup_s": 10,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
