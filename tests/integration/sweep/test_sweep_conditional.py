"""Real sweeps over the method itself with several objectives; a lost worker; a killed driver resumed.

Every trial is a Ray Train + DeepSpeed run on the tiny BERT, reporting into Tune with Optuna searching.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from rayft.cli import main
from rayft.store import MANIFEST
from tests.support import cls_config
from tests.support.sweep_driver import kill_when, resume, sweep_command

pytestmark = pytest.mark.integration


def _sweep_dir(tmp_path: Path, name: str) -> Path:
    return next((tmp_path / "runs" / name).glob("sweep-*"))


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_conditional_multi_objective_sweep(ray_local, tiny_bert, sentiment_csv, tmp_path, capsys):
    import optuna

    from rayft.track.wandb_files import incomplete_runs, offline_runs

    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name="cond-sweep",
                     train={"max_steps": 8, "eval_every": 2, "batch_size": 8},
                     tracking={"wandb": True, "mode": "offline", "project": "rayft-tests"},
                     sweep={"num_trials": 4, "scheduler": "asha", "grace_period": 1, "reduction_factor": 2, "seed": 1,
                            "space": {"train.lr": {"loguniform": [1e-3, 2e-2]},
                                      "method.name": {"choice": ["lora", "full"]}},
                            "methods": {"lora": {"r": {"choice": [2, 4]}, "target_modules": ["query", "value"]},
                                        "full": {}},
                            "objectives": [{"metric": "eval_accuracy", "mode": "max"},
                                           {"metric": "trainable_params", "mode": "min"},
                                           {"metric": "latency_ms", "mode": "min"}]})
    assert main(["sweep", str(_write(tmp_path, raw)), "--no-export"]) == 0
    out = capsys.readouterr().out
    assert "Pareto front (max eval_accuracy, min trainable_params, min latency_ms)" in out

    sweep = _sweep_dir(tmp_path, "cond-sweep")
    summary = json.loads((sweep / "rayft_sweep.json").read_text())
    trials = summary["trials"]
    assert len(trials) == 4 and all(t["status"] in {"DONE", "STOPPED"} for t in trials)
    for t in trials:  # each trial has only its own method's parameters, and trained with them
        method = t["params"]["method.name"]
        assert {k for k in t["params"] if k.startswith("method.")} <= {"method.name", f"method.{method}.r"}
        full_size = t["metrics"]["trainable_params"] == t["metrics"]["total_params"]
        assert full_size == (method == "full")

    # The Pareto front is the one Optuna's persistent study computes from the same trials.
    study = optuna.load_study(study_name=summary["name"], storage=summary["storage"])
    assert summary["storage"].startswith("sqlite:///") and (sweep / "optuna.db").is_file()
    assert len(study.trials) == 4
    names = ["eval_accuracy", "trainable_params", "latency_ms"]
    by_values = {tuple(t["metrics"][n] for n in names): t["trial_id"] for t in trials}
    assert sorted(summary["pareto"]) == sorted(by_values[tuple(t.values)] for t in study.best_trials)

    # W&B: one finished offline run per trial (stopped ones too), grouped by sweep, with every result.
    assert incomplete_runs(sweep / "wandb", [t["trial_id"] for t in trials]) == {}
    runs = {r.run_id: r for r in offline_runs(sweep / "wandb")}
    for t in trials:
        run = runs[t["trial_id"]]
        assert run.group == summary["name"] and len(run.history) == t["evaluations"]
        assert run.summary["eval_accuracy"] == pytest.approx(t["metrics"]["eval_accuracy"])

    # The report, and every trial exported.
    assert main(["report", str(sweep)]) == 0
    assert (sweep / "report.html").stat().st_size > 1_000_000  # plotly.js inlined
    assert main(["export", str(sweep), "--all", "--store", str(tmp_path / "store")]) == 0
    exported = sorted(p.name for p in (tmp_path / "store").iterdir() if (p / MANIFEST).is_file())
    assert exported == sorted(f"cond-sweep-{t['trial_id']}" for t in trials if t["checkpoint_path"])
    assert main(["export", str(sweep), "--top-k", "2", "--store", str(tmp_path / "top")]) == 0
    top = [json.loads(p.read_text()) for p in (tmp_path / "top").glob(f"*/{MANIFEST}")]
    ranked = sorted((t for t in trials if t["checkpoint_path"]),
                    key=lambda t: (not t["metrics"]["final"], -t["metrics"]["eval_accuracy"]))
    assert sorted(m["trial_id"] for m in top) == sorted(t["trial_id"] for t in ranked[:2])
    assert all(m["sweep_id"] == summary["name"] for m in top)


@pytest.mark.slow
def test_trial_survives_a_lost_worker(ray_local, tiny_bert, sentiment_csv, tmp_path):
    import psutil

    from rayft.config import build_config
    from rayft.sweep import run_sweep

    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name="lost-worker",
                     train={"max_steps": 400, "eval_every": 10, "batch_size": 8},
                     sweep={"num_trials": 1, "scheduler": "none", "space": {"train.lr": {"choice": [5e-3]}}})
    cfg = build_config(raw)
    killed: list[int] = []

    def kill_after_first_checkpoint() -> None:
        root = tmp_path / "runs" / "lost-worker"
        pids: list[int] = []
        while not killed:
            if not pids:  # the worker of this test's own Ray, found before it has trained much
                pids = [p.pid for p in psutil.process_iter(["cmdline"])
                        if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker")]
            # Tune's result log shows a checkpoint once Ray Train has registered it (not merely written it).
            results = [line for f in root.glob("sweep-*/rayft_trial_*/result.json") for line in f.read_text().splitlines()]
            if pids and any('"checkpoint_path"' in line and '"final": false' in line for line in results):
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                killed.extend(pids)
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    out = run_sweep(cfg, verbose=0)
    (trial,) = out.trials
    assert killed and trial.status == "DONE" and trial.metrics["step"] == 400
    assert trial.metrics["resumed_from_step"] > 0  # restarted from its checkpoint, not from scratch


@pytest.mark.slow
def test_killed_driver_resumes_without_repeating(tiny_bert, sentiment_csv, tmp_path):
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name="resume",
                     train={"max_steps": 60, "eval_every": 10, "batch_size": 8},
                     sweep={"num_trials": 4, "scheduler": "none", "seed": 0,
                            "space": {"train.lr": {"loguniform": [1e-3, 2e-2]}, "method.r": {"choice": [2, 4, 8]}}})
    config = _write(tmp_path, raw)
    cmd, env = sweep_command(config, "--no-export")
    root = tmp_path / "runs" / "resume"

    def ready() -> bool:  # one trial has finished and another has a checkpoint but is still training
        trials = list(root.glob("sweep-*/trials/*"))
        return any(_final(p) for p in trials) and any(list(p.glob("checkpoint_*")) and not _final(p)
                                                      for p in trials)

    kill_when(cmd, env, tmp_path, ready)
    sweep = next(root.glob("sweep-*"))
    before = {p.name for p in (sweep / "trials").iterdir()}

    resumed = resume(cmd, env, tmp_path)
    assert f"resuming sweep {sweep.name}" in resumed.stdout
    summary = json.loads((sweep / "rayft_sweep.json").read_text())
    trials = summary["trials"]
    assert len(trials) == 4 and all(t["status"] == "DONE" for t in trials)
    assert before <= {t["trial_id"] for t in trials}  # the trials started before the kill are the same trials
    configs = [(t["params"]["train.lr"], t["params"]["method.r"]) for t in trials]
    assert len(set(configs)) == 4  # the searcher's history survived: no configuration twice
    assert any(t["metrics"]["resumed_from_step"] > 0 for t in trials)  # the interrupted one continued


def _final(trial_dir: Path) -> bool:
    for ckpt in trial_dir.glob("checkpoint_*"):
        state = ckpt / "rayft_state.json"
        if state.is_file() and json.loads(state.read_text()).get("metrics", {}).get("final"):
            return True
    return False


def test_grid_runs_every_branch_once_through_tune(ray_local, tiny_bert, sentiment_csv, tmp_path):
    from ray import tune

    from rayft.config import build_config
    from rayft.sweep import apply_sample
    from rayft.sweep.search import make_searcher

    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, sweep={
        "searcher": "grid", "space": {"method.name": {"choice": ["lora", "full"]},
                                      "train.scheduler": {"choice": ["linear", "cosine"]}},
        "methods": {"lora": {"r": {"choice": [2, 4]}}, "full": {}}})
    cfg = build_config(raw)
    searcher, num_trials, param_space = make_searcher(cfg, tmp_path / "sweep", "grid")
    base = cfg.model_dump(mode="json")

    def trial(config):  # what each trial would train with
        c = apply_sample(base, config)
        tune.report({"method": c.method.name, "r": c.method_params().get("r", 0), "sched": c.train.scheduler})

    grid = tune.Tuner(tune.with_resources(trial, {"CPU": 0.01}), param_space=param_space,
                      tune_config=tune.TuneConfig(search_alg=searcher, num_samples=num_trials),
                      run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0)).fit()
    seen = sorted((r.metrics["method"], r.metrics["r"], r.metrics["sched"]) for r in grid)
    assert num_trials == 6 and seen == sorted(
        [("lora", r, s) for r in (2, 4) for s in ("linear", "cosine")] + [("full", 0, s) for s in ("linear", "cosine")])
