"""Adapter store safety and manifests; sweep space translation and trial fitting; registries."""

from __future__ import annotations

import json

import pytest

from rayft.config import build_config
from rayft.errors import StoreError
from rayft.methods import METHODS
from rayft.registry import Registry, UnknownNameError
from rayft.store import AdapterStore, Manifest, validate_id
from rayft.sweep import apply_sample, fit_trials, flat_params, tune_space
from rayft.sweep.run import evaluations_per_trial
from tests.support import cls_config


@pytest.mark.parametrize("bad", ["../etc", "/abs", "a/b", "..", ".hidden", "", "x" * 200, "a\\b", "%2e%2e"])
def test_adapter_ids_cannot_escape_the_store(tmp_path, bad):
    with pytest.raises(StoreError):
        AdapterStore(tmp_path).path(bad)


def test_valid_ids_pass():
    assert validate_id("quickstart-best.v1_2") == "quickstart-best.v1_2"


def _manifest(adapter_id: str) -> Manifest:
    return Manifest(adapter_id=adapter_id, kind="adapter", base_model="m", base_fingerprint="f", method="lora",
                    task="sequence_classification", labels=["a", "b"], metrics={"eval_accuracy": 0.9}, config={})


def test_put_is_atomic_and_refuses_overwrite(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_model.safetensors").write_bytes(b"weights")
    store = AdapterStore(tmp_path / "store")
    store.put(src, _manifest("one"))
    assert json.loads((store.root / "one" / "rayft.json").read_text())["labels"] == ["a", "b"]
    with pytest.raises(StoreError, match="already exists"):
        store.put(src, _manifest("one"))
    store.put(src, _manifest("one"), overwrite=True)
    assert [m.adapter_id for m in store.list()] == ["one"]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_put_without_weights_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    store = AdapterStore(tmp_path / "store")
    with pytest.raises(StoreError, match="no model weights"):
        store.put(empty, _manifest("x"))
    assert not store.exists("x")


def test_registry_refuses_duplicates_and_lists_names():
    reg: Registry[int] = Registry("thing")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    with pytest.raises(UnknownNameError, match="expected one of: a"):
        reg.get("b")
    assert {"full", "lora"} <= set(METHODS.names())


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


def test_lean_trainer_leaves_out_ray_data_and_on_request_the_cleaner(tiny_bert, sentiment_csv, tmp_path):
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from tests.support.benchmark_module import load
    from rayft.ray_internals import DatasetsCallback, PlacementGroupCleanerCallback, lean_trainer_class
    from rayft.train.backend import WorkerTorchConfig
    from rayft.train.quiet import QuietRun
    from rayft.train.run import make_trainer

    cfg = build_config(cls_config(tiny_bert, sentiment_csv, tmp_path))

    def kinds(trainer):
        return [type(cb) for cb in trainer._create_default_callbacks()]

    lean = make_trainer(cfg, None, run_name="t", storage_path=str(tmp_path / "runs"))
    plain = load("stock_trainer").stock_trainer(lean)  # Ray's stock path, the benchmarks' baseline
    assert isinstance(lean, DataParallelTrainer) and DatasetsCallback not in kinds(lean)
    assert lean.backend_config == WorkerTorchConfig(backend="gloo")
    assert isinstance(plain, TorchTrainer) and DatasetsCallback in kinds(plain)
    assert plain.train_loop_config == lean.train_loop_config and plain.scaling_config == lean.scaling_config
    assert any(isinstance(cb, QuietRun) for cb in lean.run_config.callbacks) and not plain.run_config.callbacks
    # A run on a Ray of its own leaves out the placement-group cleaner too, and so do sweep trials (their hub
    # frees the placement group); `rayft train` on a cluster keeps it.
    private = make_trainer(cfg, None, run_name="t", storage_path=str(tmp_path / "runs"),
                           clean_up_placement_groups=False)
    assert PlacementGroupCleanerCallback in kinds(lean) and PlacementGroupCleanerCallback not in kinds(private)
    with_data = lean_trainer_class(TorchTrainer)(lambda: None, datasets={"train": [1]})
    assert DatasetsCallback in kinds(with_data)  # real Ray Datasets keep Ray Train's shard callback


@pytest.mark.parametrize("rows,world,batch,accum", [(1, 1, 8, 1), (160, 2, 8, 1), (161, 3, 7, 2), (50, 2, 64, 4)])
def test_one_count_of_steps_per_epoch_matches_the_workers_loaders(rows, world, batch, accum):
    """The sweep sizes ASHA's rungs from the rows alone; the workers count their loaders' batches: both agree."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, DistributedSampler

    from rayft.train.steps import batches_per_epoch, steps_per_epoch, total_steps

    cfg = SimpleNamespace(scaling=SimpleNamespace(num_workers=world),
                          train=SimpleNamespace(batch_size=batch, grad_accum=accum, epochs=1.5, max_steps=0))
    loaders = [DataLoader(range(rows), batch_size=batch, sampler=DistributedSampler(range(rows), world, rank))
               for rank in range(world)]
    assert {len(loader) for loader in loaders} == {batches_per_epoch(cfg, rows)}
    per_epoch = steps_per_epoch(cfg, batches_per_epoch(cfg, rows))
    assert per_epoch == max(1, -(-batches_per_epoch(cfg, rows) // accum))
    assert total_steps(cfg, batches_per_epoch(cfg, rows)) == max(1, -(-3 * per_epoch // 2))  # 1.5 epochs
    cfg.train.max_steps = 7
    assert total_steps(cfg, batches_per_epoch(cfg, rows)) == 7


def test_the_workers_loop_config_reaches_ray_as_a_dict_of_its_fields(tiny_bert, sentiment_csv, tmp_path):
    from rayft.config import dump_config
    from rayft.train.handoff import LoopConfig
    from rayft.train.run import make_trainer

    cfg = build_config(cls_config(tiny_bert, sentiment_csv, tmp_path))
    trainer = make_trainer(cfg, "data-ref", run_name="t", storage_path=str(tmp_path / "runs"), label="trial_1",
                           trial_started_at=12.5, start_checkpoint="donor")
    assert isinstance(trainer.train_loop_config, dict)  # Ray records it as one
    loop = LoopConfig.parse(trainer.train_loop_config)
    assert loop == LoopConfig(dump_config(cfg), "data-ref", verbose=False, label="trial_1", trial_started_at=12.5,
                              start_checkpoint="donor")
    assert loop.method == cfg.method.name and LoopConfig.parse(loop) is loop
    with pytest.raises(TypeError):
        LoopConfig.parse({**loop.to_ray(), "unknown": 1})  # a driver and workers of different versions


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
