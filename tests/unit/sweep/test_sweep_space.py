"""Conditional search spaces over the method registry, their validation, grids, seeds and the Pareto front."""

from __future__ import annotations

import random

import optuna
import pytest
from pydantic import Field

from rayft.config import build_config
from rayft.errors import ConfigError
from rayft.methods import METHODS, MethodParams
from rayft.sweep import apply_sample, define_by_run, grid_points, pareto_front
from rayft.sweep.search import make_searcher, objectives, tpe_startup_trials
from tests.support import cls_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


class ScaleParams(MethodParams):
    """A test-only third method with parameters of its own."""

    scale: float = Field(1.0, gt=0)
    layers: int = Field(1, ge=1, le=6)


class Scale:
    name = "scale-test"
    params = ScaleParams
    is_peft = False
    hot_swappable = False

    def apply(self, model, params, task_type):  # pragma: no cover - never trained here
        return model


@pytest.fixture()
def scale_method():
    METHODS.register(Scale.name, Scale())
    yield Scale.name
    METHODS._entries.pop(Scale.name)


def _conditional(tiny_bert, sentiment_csv, tmp_path, third: str | None = None, **sweep):
    methods = ["lora", "full"] + ([third] if third else [])
    branches = {"lora": {"r": {"choice": [2, 4, 8]}, "alpha": {"uniform": [4, 32]},
                         "target_modules": {"choice": [["query"], ["query", "value"]]}}, "full": {}}
    if third:
        branches[third] = {"scale": {"loguniform": [0.1, 10]}, "layers": {"int": [1, 3]}}
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, sweep={
        "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}, "method.name": {"choice": methods}},
        "methods": branches, **sweep})
    return build_config(raw)


def _sample(cfg, n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True,
                                                                   group=True))
    space = define_by_run(cfg)
    out = []
    for i in range(n):
        trial = study.ask()
        space(trial)
        study.tell(trial, random.Random(i).random())
        out.append(dict(trial.params))
    return out


def test_each_method_samples_only_its_own_parameters(tiny_bert, sentiment_csv, tmp_path, scale_method):
    cfg = _conditional(tiny_bert, sentiment_csv, tmp_path, third=scale_method)
    samples = _sample(cfg, 24)
    assert {s["method.name"] for s in samples} == {"lora", "full", scale_method}
    base = cfg.model_dump(mode="json")
    for s in samples:
        method = s["method.name"]
        own = {k for k in s if k.startswith("method.") and k != "method.name"}
        assert all(k.startswith(f"method.{method}.") for k in own), s
        trial = apply_sample(base, s)
        assert trial.method.name == method
        params = METHODS.get(method).params.model_validate(trial.method_params())  # valid for that method only
        if method == "lora":
            assert params.r in (2, 4, 8) and params.target_modules in (["query"], ["query", "value"])
        elif method == scale_method:
            assert 0.1 <= params.scale <= 10 and params.layers in (1, 2, 3)
        else:
            assert trial.method_params() == {}  # lora's fixed r/alpha of the base config do not leak into full


def test_same_seed_same_sweep(tiny_bert, sentiment_csv, tmp_path):
    cfg = _conditional(tiny_bert, sentiment_csv, tmp_path)
    assert _sample(cfg, 8, seed=3) == _sample(cfg, 8, seed=3)
    assert _sample(cfg, 8, seed=3) != _sample(cfg, 8, seed=4)


def test_grid_enumerates_every_branch(tiny_bert, sentiment_csv, tmp_path, scale_method):
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, sweep={
        "searcher": "grid", "space": {"train.scheduler": {"choice": ["linear", "cosine"]},
                                      "method.name": {"choice": ["lora", "full", scale_method]}},
        "methods": {"lora": {"r": {"choice": [2, 4]}, "alpha": 8}, scale_method: {"layers": {"int": [1, 3]}}}})
    cfg = build_config(raw)
    points = grid_points(cfg)
    assert len(points) == 2 * (2 + 1 + 3)
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    lora = apply_sample(cfg.model_dump(mode="json"), next(p for p in points if p["method.name"] == "lora"))
    assert lora.method_params()["alpha"] == 8  # a plain value fixes the parameter for that branch


def test_validation_names_every_bad_branch_parameter(tiny_bert, sentiment_csv, tmp_path, scale_method):
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, sweep={
        "searcher": "grid",
        "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}, "method.r": {"choice": [2]},
                  "method.name": {"choice": ["lora", "full", scale_method, "nope"]}},
        "methods": {"lora": {"rank": {"choice": [2]}, "r": {"choice": [0, 4]}}, "full": {"r": 4},
                    scale_method: {"scale": {"uniform": [-1, 1]}, "r": {"choice": [2]}}},
        "objectives": [{"metric": "eval_acuracy", "mode": "max"}, {"metric": "latency_ms", "mode": "min"}]})
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    paths = {e.path for e in info.value.errors}
    assert {"sweep.space.method.name", "sweep.space.method.r", "sweep.methods.lora.rank", "sweep.methods.lora.r",
            "sweep.methods.full.r", f"sweep.methods.{scale_method}.r", f"sweep.methods.{scale_method}.scale",
            "sweep.space.train.lr", "sweep.objectives.0.metric"} <= paths
    text = str(info.value)
    assert "a parameter of method 'lora': one of r, alpha" in text and "'nope'" in text
    assert f"a parameter of method '{scale_method}': one of scale, layers" in text


def test_branch_for_a_method_the_sweep_cannot_choose(tiny_bert, sentiment_csv, tmp_path):
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, sweep={"methods": {"full": {}}})
    with pytest.raises(ConfigError, match="sweep.methods.full: a method this sweep can choose: lora"):
        build_config(raw)


def test_objectives_put_the_scheduler_metric_first(tiny_bert, sentiment_csv, tmp_path):
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, sweep={
        "metric": "eval_accuracy", "objectives": [{"metric": "trainable_params", "mode": "min"},
                                                  {"metric": "eval_accuracy", "mode": "max"}]})
    assert objectives(build_config(raw)) == [("eval_accuracy", "max"), ("trainable_params", "min")]


def test_tpe_startup_trials_default_and_setting(tiny_bert, sentiment_csv, tmp_path):
    def cfg(**sweep):
        return build_config(cls_config(tiny_bert, sentiment_csv, tmp_path, sweep=sweep))

    assert tpe_startup_trials(cfg(num_trials=20)) == 6  # a third of the sweep
    assert tpe_startup_trials(cfg(num_trials=3)) == 2  # at least 2
    assert tpe_startup_trials(cfg(num_trials=20, searcher="tpe", startup_trials=3)) == 3
    searcher, _, _ = make_searcher(cfg(num_trials=20, startup_trials=3), tmp_path / "sweep", "s")
    assert searcher._sampler._n_startup_trials == 3  # what Optuna's TPE is given
    with pytest.raises(ConfigError, match=r"sweep.startup_trials: unset with searcher: random .*\(got 3\)"):
        cfg(searcher="random", startup_trials=3)
    with pytest.raises(ConfigError, match="sweep.startup_trials"):
        cfg(startup_trials=0)


class _T:
    def __init__(self, tid, **metrics):
        self.trial_id, self.metrics = tid, metrics


def test_pareto_front_matches_optuna_on_random_trials():
    rng = random.Random(0)
    pairs = [("acc", "max"), ("params", "min"), ("latency", "min")]
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    trials = []
    for i in range(60):
        values = [rng.choice([0.5, 0.6, 0.7, 0.8]), rng.choice([10, 100, 1000]), rng.choice([1.0, 2.0, 3.0])]
        trials.append(_T(f"t{i}", acc=values[0], params=values[1], latency=values[2]))
        study.add_trial(optuna.trial.create_trial(values=values, user_attrs={"id": f"t{i}"}))
    expected = {t.user_attrs["id"] for t in study.best_trials}
    assert set(pareto_front(trials, pairs)) == expected and expected
    trials.append(_T("no-metric", acc=0.99))  # trials missing an objective are left out
    assert "no-metric" not in pareto_front(trials, pairs)
