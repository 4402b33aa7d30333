"""Every registered method, table-driven, inside one real 2-worker Ray Train + DeepSpeed (ZeRO-2) run on a tiny
BERT: the loss goes down, only the intended parameters change, save → load reproduces the outputs, and the
stored artifact loads with plain peft/transformers. The slow variant does the same at ZeRO-3 for every method
that supports it; one method through the whole ``rayft train`` worker loop is in test_unfreeze_through_run_training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from rayft.config import build_config
from rayft.data import prepare_data
from rayft.methods import METHODS, get_method
from rayft.store import AdapterStore, export_checkpoint, load_for_inference
from tests.support import cls_config
from tests.support.method_cases import CASES, HEAD

pytestmark = pytest.mark.integration
STEPS = 16
LR = {"full": 3e-3}  # everything moves with full fine-tuning: a smaller step


def _case_config(name: str, tiny_bert: Path, sentiment_csv: Path, tmp: Path, stage: int = 2) -> dict:
    raw = cls_config(tiny_bert, sentiment_csv, tmp, name=f"m-{name}", train={"max_steps": STEPS, "batch_size": 8,
                                                                            "lr": 1e-2, "seed": 0},
                     scaling={"num_workers": 2, "cpus_per_worker": 1, "zero_stage": stage})
    raw["method"] = {"name": name, **CASES[name][0]}
    raw["train"]["lr"] = LR.get(name, 1e-2)
    return raw


def test_every_method_is_in_the_table():
    assert set(CASES) == set(METHODS.names())


@pytest.fixture(scope="module", ids=["zero2", "zero3"],
                params=[2, pytest.param(3, marks=[pytest.mark.slow, pytest.mark.timeout(3600)])])
def method_table(request, ray_local, tiny_bert, sentiment_csv, tmp_path_factory):
    """Train every method once at this ZeRO stage (one Ray Train run, 2 workers); the driver-side view of each."""
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from tests.support import method_table as worker_side

    ray.cloudpickle.register_pickle_by_value(worker_side)
    stage = request.param
    tmp = tmp_path_factory.mktemp(f"methods-zero{stage}")
    names = [n for n in CASES if stage < 3 or get_method(n).zero3]
    cfgs = {n: build_config(_case_config(n, tiny_bert, sentiment_csv, tmp, stage)) for n in names}
    data = prepare_data(next(iter(cfgs.values())))
    cases = [{"id": n, "experiment": c.model_dump(mode="json")} for n, c in cfgs.items()]
    TorchTrainer(worker_side.table_loop, train_loop_config={"cases": cases, "data": data, "out": str(tmp)},
                 torch_config=TorchConfig(backend="gloo"),
                 scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                 run_config=RunConfig(name="method-table", storage_path=str(tmp / "ray"))).fit()
    records = {n: json.loads((tmp / n / "record.json").read_text()) for n in cfgs}
    return {"records": records, "cfgs": cfgs, "data": data, "tmp": tmp, "probe": worker_side.probe_batch(data)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_method_trains_only_its_parameters_and_round_trips(name, method_table):
    if name not in method_table["records"]:
        pytest.skip(f"{name} is refused at ZeRO-3 by validation")
    record, cfg = method_table["records"][name], method_table["cfgs"][name]
    losses = record["losses"]
    assert len(losses) == STEPS
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses  # the loss goes down

    # Only the intended parameters changed, and something in the adapted part did.
    allowed = re.compile(CASES[name][1])
    assert record["changed"], "nothing trained"
    assert [n for n in record["changed"] if not allowed.search(n)] == []
    assert [n for n in record["changed"] if not re.search(HEAD, n)], "only the head trained"
    assert 0 < record["trainable_pct"] <= 100 and record["trainable_params"] <= record["total_params"]

    # Save → store → load reproduces the trained model's outputs.
    store = AdapterStore(method_table["tmp"] / "store")
    manifest = export_checkpoint(str(method_table["tmp"] / name), None, store, adapter_id=name)
    method = get_method(name)
    assert manifest.kind == method.artifact and manifest.hot_swappable == method.hot_swappable
    model, _, _ = load_for_inference(store, name)
    with torch.no_grad():
        logits = model(**method_table["probe"]).logits.float()
    assert torch.allclose(logits, torch.tensor(record["logits"]), atol=1e-4)

    # The stored folder loads with plain peft/transformers (bottleneck adapters: transformers base + their weights).
    plain = _plain_load(store.path(name), manifest, cfg)
    with torch.no_grad():
        plain_logits = plain(**method_table["probe"]).logits.float()
    tolerance = 0.05 if name == "qlora" else 1e-4  # plain peft attaches QLoRA's adapter to the full-precision base
    assert torch.allclose(plain_logits, torch.tensor(record["logits"]), atol=tolerance)


def _plain_load(folder: Path, manifest, cfg):
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification

    if manifest.kind == "full":
        return AutoModelForSequenceClassification.from_pretrained(folder).eval()
    if manifest.kind == "adapter":
        return AutoPeftModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    base = AutoModelForSequenceClassification.from_pretrained(cfg.model.name, num_labels=2)
    return get_method(manifest.method).load(base, str(folder)).eval()


@pytest.mark.slow
def test_unfreeze_through_run_training(ray_local, tiny_bert, sentiment_csv, tmp_path):
    """Gradual unfreezing with layer-wise decay through the whole worker loop: evaluation, checkpoints, export."""
    from rayft.train import run_training

    raw = _case_config("unfreeze", tiny_bert, sentiment_csv, tmp_path)
    raw["method"] = {"name": "unfreeze", "every": 4, "unit": "step", "layer_decay": 0.8, "head_lr": 2e-2}
    raw["train"].update(max_steps=12, eval_every=4)
    cfg = build_config(raw)
    out = run_training(cfg, verbose=False)
    history = json.loads((Path(out.checkpoint_path) / "rayft_state.json").read_text())["history"]
    assert [h["step"] for h in history] == [4, 8, 12]
    assert history[0]["lr"] > 0  # the top's rate, not a frozen group's (the embeddings are gated to 0)
    assert 0 < out.metrics["trainable_pct"] < 10  # the head at the start, not the whole model
    store = AdapterStore(tmp_path / "store")
    assert export_checkpoint(out.checkpoint_path, None, store, adapter_id="unfrozen").kind == "full"
    model, _, _ = load_for_inference(store, "unfrozen")
    from tests.support import method_table

    with torch.no_grad():
        assert model(**method_table.probe_batch(prepare_data(cfg))).logits.shape == (8, 2)
    # Every 4 steps one more level thaws from the top: by step 12 both blocks have trained, the embeddings not yet.
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert).state_dict()
    trained = model.state_dict()
    moved = {k for k, v in base.items() if k in trained and not torch.equal(v, trained[k])}
    assert any(".layer.0." in k for k in moved) and any(".layer.1." in k for k in moved)
    assert not any(".embeddings." in k for k in moved)
