"""Adapter store safety and manifests; sweep space translation and trial fitting; registries."""

from __future__ import annotations

import json

import pytest

from conftest import cls_config
from rayft.config import build_config
from rayft.errors import StoreError
from rayft.methods import METHODS
from rayft.registry import Registry, UnknownNameError
from rayft.store import AdapterStore, Manifest, validate_id
from rayft.sweep import apply_sample, fit_trials, flat_params, tune_space
from rayft.sweep.run import evaluations_per_trial


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
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from rayft.train.backend import WorkerTorchConfig
    from rayft.train.run import _lean, make_trainer

    cfg = build_config(cls_config(tiny_bert, sentiment_csv, tmp_path))

    def kinds(trainer):
        return [type(cb) for cb in trainer._create_default_callbacks()]

    lean = make_trainer(cfg, None, run_name="t", storage_path=str(tmp_path / "runs"))
    plain = make_trainer(cfg, None, run_name="t", storage_path=str(tmp_path / "runs"), lean_start=False)
    assert isinstance(lean, DataParallelTrainer) and DatasetsCallback not in kinds(lean)
    assert lean.backend_config == WorkerTorchConfig(backend="gloo")
    assert isinstance(plain, TorchTrainer) and DatasetsCallback in kinds(plain)
    # A run on a Ray of its own leaves out the placement-group cleaner too, and so do sweep trials (their hub
    # frees the placement group); `rayft train` on a cluster keeps it.
    private = make_trainer(cfg, None, run_name="t", storage_path=str(tmp_path / "runs"),
                           clean_up_placement_groups=False)
    assert PlacementGroupCleanerCallback in kinds(lean) and PlacementGroupCleanerCallback not in kinds(private)
    with_data = _lean(TorchTrainer)(lambda: None, datasets={"train": [1]})
    assert DatasetsCallback in kinds(with_data)  # real Ray Datasets keep Ray Train's shard callback
