"""Sweep trials: the search space in Tune's terms and a sample applied to a config, how many trials fit the
cluster, the trial plan each scheduler gets, and what every trial is handed."""

from __future__ import annotations

import json

from rayft.config import build_config
from rayft.sweep import apply_sample, fit_trials, flat_params, tune_space
from rayft.sweep.run import evaluations_per_trial
from tests.support import cls_config


def test_space_translation_and_sample_application(tiny_bert, sentiment_csv, tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, sweep={"space": {
        "train.lr": {"loguniform": [1e-4, 1e-2]}, "method.r": {"choice": [2, 4]}, "train.epochs": {"uniform": [1, 3]},
        "train.grad_accum": {"int": [1, 4]}}})
    cfg = build_config(raw)
    space = tune_space(cfg.sweep.space)
    assert isinstance(space["train"]["lr"], Float) and isinstance(space["method"]["r"], Categorical)
    assert isinstance(space["train"]["grad_accum"], Integer) and space["train"]["grad_accum"].upper == 5
    trial = apply_sample(cfg.model_dump(mode="json"), {"train": {"lr": 3e-3, "grad_accum": 2}, "method": {"r": 2}})
    assert trial.train.lr == 3e-3 and trial.train.grad_accum == 2 and trial.method_params()["r"] == 2
    assert flat_params({"train": {"lr": 1}}) == {"train.lr": 1}


def test_trials_fit_the_cluster(tiny_bert, sentiment_csv, tmp_path):
    cfg = build_config(cls_config(tiny_bert, sentiment_csv, tmp_path, sweep={"num_trials": 6}))
    concurrent, worker_cpus = fit_trials(cfg, 2.0)
    assert concurrent == 2 and concurrent * (worker_cpus + 0.01) <= 2.0 + 1e-9
    two = build_config(cls_config(tiny_bert, sentiment_csv, tmp_path, scaling={"num_workers": 2}))
    assert fit_trials(two, 2.0)[0] == 1
    assert evaluations_per_trial(build_config(cls_config(tiny_bert, sentiment_csv, tmp_path,
                                                         train={"epochs": 2, "eval_every": 5})), 160) == 4


def test_the_trial_plan_follows_the_scheduler_and_keeps_its_trainable_name(tiny_bert, sentiment_csv, tmp_path):
    from rayft.sweep.run import trial_plan

    def plan(**sweep):
        return trial_plan(build_config(cls_config(tiny_bert, sentiment_csv, tmp_path, sweep=sweep)))

    assert not plan().pausable and plan().trainable_name == "rayft_trial"
    deferred = plan(asha_promotion="deferred")
    assert deferred.pausable and deferred.trainable_name == "rayft_pbt_trial"  # resumable sweeps keep their name


def test_a_pausable_trial_hands_tune_its_checkpoints_and_the_others_their_paths(monkeypatch, tmp_path):
    from ray import train, tune

    from rayft.sweep.handoff import TrialPlan

    reported: list[tuple[dict, object]] = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reported.append((metrics, checkpoint)))
    checkpoint = train.Checkpoint(str(tmp_path))
    TrialPlan(pausable=False).register({"step": 1}, None)
    TrialPlan(pausable=False).register({"step": 2}, checkpoint)
    TrialPlan(pausable=True).register({"step": 3}, None)
    TrialPlan(pausable=True).register({"step": 4}, checkpoint)
    assert [m for m, _ in reported] == [{"step": 1}, {"step": 2, "checkpoint_path": str(tmp_path)},
                                        {"step": 3, "checkpoint_path": None},
                                        {"step": 4, "checkpoint_path": str(tmp_path)}]
    assert [c for _, c in reported[:3]] == [None, None, None]
    assert isinstance(reported[3][1], tune.Checkpoint) and reported[3][1].path == str(tmp_path)
    assert TrialPlan(pausable=False).restart_checkpoint() is None  # never asks Tune


def test_what_every_trial_is_handed_pickles_without_the_training_stack(tmp_path):
    import subprocess
    import sys

    script = f"""
import json, sys
import ray.cloudpickle as pickle
from rayft.sweep.handoff import TrialPlan, TrialReport, TrialSetup
setup = TrialSetup({{"name": "x"}}, None, None, {str(tmp_path)!r}, 0.5, plan=TrialPlan(pausable=True), warm="x/sweep-1")
again = pickle.loads(pickle.dumps(setup))
assert again == setup and again.plan.trainable_name == "rayft_pbt_trial"
assert pickle.loads(pickle.dumps(TrialReport({{"step": 1}}))) == TrialReport({{"step": 1}}, None)
print(json.dumps(sorted(m for m in ("torch", "transformers", "peft", "deepspeed") if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
