"""Continual learning on tiny models without Ray: the EWC penalty, the diagonal Fisher, loading a stored result
with another task's head, and the config checks that stop bad input before training."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rayft.config import build_config
from rayft.errors import ConfigError
from rayft.train.continual import PreviousView, ewc_penalty, fisher_diagonal, previous_loss
from tests.support import cls_config, tiny

# three topics in the tiny vocabulary's words (other labels than the sentiment task's)
TOPICS = {"cinema": ["movie", "film", "cast"], "tale": ["plot", "story", "acting"], "mood": ["great", "fun", "superb"]}
FILLER = ["the", "was", "a", "and", "very", "with", "quite"]


def topic_csv(path: Path, n: int = 120) -> Path:
    """A learnable three-class data set in the tiny vocabulary's words, different labels from the sentiment one."""
    rng = random.Random(1)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["review", "sentiment"])
        writer.writeheader()
        for i in range(n):
            label = list(TOPICS)[i % 3]
            writer.writerow({"review": " ".join(rng.sample(FILLER, 3) + [rng.choice(TOPICS[label])]),
                             "sentiment": label})
    return path


def test_ewc_penalty_is_zero_at_the_anchor_and_weighs_squared_moves_by_the_fisher():
    anchor = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.5]])}
    fisher = {"a": torch.tensor([2.0, 0.0]), "b": torch.tensor([[4.0]])}
    at_anchor = {k: v.clone().requires_grad_() for k, v in anchor.items()}
    assert ewc_penalty(at_anchor, anchor, fisher, 10.0).item() == 0.0
    moved = {"a": torch.tensor([1.5, 9.0], requires_grad=True), "b": torch.tensor([[0.0]], requires_grad=True)}
    penalty = ewc_penalty(moved, anchor, fisher, 10.0)
    assert penalty.item() == pytest.approx(0.5 * 10.0 * (2.0 * 0.25 + 0.0 * 49 + 4.0 * 0.25))
    penalty.backward()  # the gradient is λ F (θ − θ*)
    assert torch.allclose(moved["a"].grad, torch.tensor([10.0 * 2.0 * 0.5, 0.0]))


def _tiny_classifier(tiny_bert: Path, labels: int = 2) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=labels)


def test_fisher_is_the_mean_squared_per_example_gradient(tiny_bert):
    model = _tiny_classifier(tiny_bert).eval()
    batches = [{"input_ids": torch.tensor([[2, 5 + i, 9, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
                "labels": torch.tensor([i % 2])} for i in range(3)]
    params = {n: p for n, p in model.named_parameters() if n.startswith("classifier")}
    fisher = fisher_diagonal(PreviousView(model, {}), iter(batches), params)
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for batch in batches:
        model.zero_grad()
        previous_loss(PreviousView(model, {}), batch).backward()
        for n, p in params.items():
            expected[n] += p.grad ** 2 / len(batches)
    for n in params:
        assert torch.allclose(fisher[n], expected[n], atol=1e-8)
    assert all(f.sum() > 0 for f in fisher.values())


def test_previous_view_runs_the_current_weights_with_the_previous_head(tiny_bert):
    model = _tiny_classifier(tiny_bert, labels=3)
    old_head = {"classifier.weight": torch.randn(2, 32), "classifier.bias": torch.zeros(2)}
    inputs = {"input_ids": torch.tensor([[2, 7, 3]])}
    assert PreviousView(model, old_head)(**inputs).logits.shape == (1, 2)
    assert model(**inputs).logits.shape == (1, 3)  # the model itself is untouched


def test_the_previous_view_equals_the_model_holding_the_previous_head(tiny_bert):
    model, previous = _tiny_classifier(tiny_bert, labels=3), _tiny_classifier(tiny_bert, labels=2)
    previous.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("classifier")},
                             strict=False)
    own = {n: p.detach().clone() for n, p in previous.named_parameters() if n.startswith("classifier")}
    inputs = {"input_ids": torch.tensor([[2, 7, 3, 9]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    model.eval()
    previous.eval()
    torch.testing.assert_close(PreviousView(model, own)(**inputs).logits, previous(**inputs).logits)


def test_a_previous_tensor_that_is_not_a_whole_linear_layer_is_refused(tiny_bert):
    model = _tiny_classifier(tiny_bert, labels=3)
    with pytest.raises(ValueError, match="classifier.weight must be the whole weight and bias of a linear layer"):
        PreviousView(model, {"classifier.weight": torch.randn(2, 32)})
    with pytest.raises(ValueError, match="is LayerNorm"):
        PreviousView(model, {"bert.embeddings.LayerNorm.weight": torch.ones(7),
                             "bert.embeddings.LayerNorm.bias": torch.zeros(7)})


@pytest.fixture(scope="module")
def stored(tiny_bert, sentiment_csv, tmp_path_factory):
    """A LoRA sentiment classifier trained on the tiny data and stored (the previous task)."""
    from rayft.store import AdapterStore
    from tests.support.export_cases import cls_entry

    tmp = tmp_path_factory.mktemp("continual")
    store = AdapterStore(tmp / "store")
    cls_entry(store, tiny_bert, sentiment_csv, tmp, adapter_id="sentiment")
    return SimpleNamespace(store=store, tmp=tmp)


def _topics_raw(tiny_bert, stored, **train) -> dict:
    data = topic_csv(stored.tmp / "topics.csv")
    return cls_config(tiny_bert, data, stored.tmp, train={"continual_from": "sentiment", **train},
                      store={"path": str(stored.store.root)})


def test_start_loads_the_shared_weights_keeps_the_previous_head_and_measures_it(tiny_bert, stored):
    from rayft.data import prepare_data
    from rayft.train import continual
    from rayft.train.engine import build_model
    from rayft.train.recipe import Recipe

    cfg = build_config(_topics_raw(tiny_bert, stored, ewc={"lambda": 50.0, "samples": 8}, replay={"fraction": 0.25}))
    recipe = Recipe.of(cfg)
    data = prepare_data(cfg)
    torch.manual_seed(0)
    model = build_model(recipe, data)
    keep = continual.start(model, recipe, 0, 1)
    lora = [n for n in keep.anchor if "lora_" in n]
    assert lora and all(torch.equal(dict(model.named_parameters())[n].detach(), keep.anchor[n]) for n in lora)
    assert {tuple(t.shape) for t in keep.own.values()} == {(2, 32), (2,)}  # the sentiment head, kept aside
    assert keep.before["accuracy"] >= 0.8  # the stored classifier knows its task
    assert set(keep.fisher) == set(keep.anchor) and sum(f.sum() for f in keep.fisher.values()) > 0
    engine = SimpleNamespace(module=model, device=torch.device("cpu"))
    keep.replay = None
    loss = torch.tensor(1.25)
    assert keep.loss(engine, loss).item() == pytest.approx(1.25)  # the penalty is zero at the anchor
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in lora:
                p.add_(0.1)
    assert keep.loss(engine, loss).item() > 1.25
    report = keep.report(engine, 0, 1)
    assert report["forgetting_accuracy"] == pytest.approx(report["previous_test_accuracy_before"]
                                                          - report["previous_test_accuracy"])


def _errors(raw: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    return {e.path: str(e) for e in info.value.errors}


def test_ewc_or_replay_without_a_previous_task_is_refused(tiny_bert, sentiment_csv, tmp_path):
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, train={"ewc": {"lambda": 10}, "replay": {"fraction": 0.5}})
    errors = _errors(raw)
    assert "train.continual_from" in errors["train.ewc"] and "train.continual_from" in errors["train.replay"]


def test_an_unknown_entry_another_base_or_an_unsupported_task_is_refused(tiny_bert, stored, tmp_path):
    from tests.support.serve_helpers import config, manifest

    raw = _topics_raw(tiny_bert, stored)
    from rayft.data import prepare_data

    unknown = build_config({**raw, "train": {"continual_from": "nope"}})  # validates before the entry exists ...
    with pytest.raises(ConfigError, match="train.continual_from: an id in store .* \\(it has: .*sentiment"):
        prepare_data(unknown)  # ... and stops at the first step of train or sweep
    other = tiny.make_bert(tmp_path / "other-bert", hidden=48)  # same vocabulary, other weights
    message = _errors({**raw, "model": {"name": str(other), "max_length": 32}})["train.continual_from"]
    assert "fingerprint" in message and str(other) in message
    folder = tmp_path / "qa"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"{}")
    stored.store.put(folder, manifest("qa", tiny_bert, "extractive_qa", config(raw)))
    message = _errors({**raw, "train": {"continual_from": "qa"}})["train.continual_from"]
    assert "extractive_qa" in message


def test_every_zero_stage_is_accepted_with_continual_from(tiny_bert, stored):
    raw = _topics_raw(tiny_bert, stored)
    for stage in (0, 1, 2, 3):
        raw["scaling"] = {**raw["scaling"], "zero_stage": stage}
        assert build_config(raw).scaling.zero_stage == stage


def test_the_sweep_space_names_lambda_replay_fraction_pacing_and_start_fraction(tiny_bert, stored):
    from rayft.sweep.space import apply_sample

    raw = _topics_raw(tiny_bert, stored, ewc={"lambda": 10.0}, curriculum={"by": "length"})
    space = {"train.ewc.lambda": {"loguniform": [1.0, 1.0e4]}, "train.replay.fraction": {"uniform": [0.1, 0.5]},
             "train.curriculum.pacing": {"choice": ["linear", "root", "step"]},
             "train.curriculum.start_fraction": {"uniform": [0.1, 0.9]}}
    cfg = build_config({**raw, "sweep": {"space": space}})
    sample = {"train.ewc.lambda": 300.0, "train.replay.fraction": 0.3, "train.curriculum.pacing": "root",
              "train.curriculum.start_fraction": 0.2}
    trial = apply_sample(cfg.model_dump(mode="json"), sample)
    assert (trial.train.ewc.lambda_, trial.train.ewc.samples) == (300.0, 200)
    assert trial.train.replay.fraction == 0.3 and trial.train.curriculum.pacing == "root"
    assert trial.train.curriculum.start_fraction == 0.2 and trial.train.curriculum.by == "length"
    bad = {"train.curriculum.start_fraction": {"uniform": [0.5, 2.0]}, "train.ewc.nope": {"choice": [1, 2]}}
    errors = _errors({**raw, "sweep": {"space": bad}})
    assert "start_fraction" in errors["sweep.space.train.curriculum.start_fraction"]
    assert "a searchable parameter" in errors["sweep.space.train.ewc.nope"]
