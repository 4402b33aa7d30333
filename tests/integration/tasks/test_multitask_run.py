"""Multi-task training end to end: two sentiment-like classification heads and an NER head on one tiny BERT,
trained by 2 Ray Train workers under DeepSpeed, exported as one store entry, and served over HTTP with one model id
per classification head (``<id>:<head>``), answering as plain peft does with that head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import torch

from rayft.config import build_config
from tests.support import cls_config
from tests.support import tiny_tasks as tt
from tests.unit.train.test_continual import topic_csv

pytestmark = pytest.mark.integration
TEXTS = ["a great and wonderful film", "a boring and dull story", "the cast was charming", "tedious plot"]


def _raw(tiny_bert: Path, sentiment_csv: Path, tmp: Path, method: dict, zero: int, steps: int, lr: float) -> dict:
    raw = cls_config(tiny_bert, sentiment_csv, tmp, name="multi",
                     train={"max_steps": steps, "eval_every": steps // 3, "batch_size": 8, "lr": lr},
                     scaling={"num_workers": 2, "cpus_per_worker": 1, "zero_stage": zero})
    raw["method"] = method
    del raw["data"]
    cls = {"text_column": "review", "label_column": "sentiment", "validation_size": 40, "test_size": 40}
    raw["tasks"] = [
        {"name": "sentiment", "data": {"source": str(sentiment_csv), **cls}},
        {"name": "topic", "data": {"source": str(topic_csv(tmp / "topics.csv", 240)), **cls}},
        {"name": "ner", "task": "token_classification",
         "data": {"source": str(tt.write_conll(tmp / "ner.conll", tt.ner_rows(120))), "validation_size": 20,
                  "test_size": 20}},
    ]
    raw["mix"] = {"temperature": 2.0}
    return raw


def _history(checkpoint: str) -> list[dict]:
    return json.loads((Path(checkpoint) / "rayft_state.json").read_text())["history"]


@pytest.fixture(scope="module")
def trained(ray_local, tiny_bert, sentiment_csv, tmp_path_factory):
    from rayft.store import AdapterStore, export_checkpoint
    from rayft.train import run_training

    tmp = tmp_path_factory.mktemp("multitask")
    raw = _raw(tiny_bert, sentiment_csv, tmp, {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"]},
               zero=2, steps=36, lr=5e-2)
    outcome = run_training(build_config(raw), verbose=False)
    store = AdapterStore(tmp / "store")
    export_checkpoint(outcome.checkpoint_path, None, store, adapter_id="mt")
    return outcome, store


def test_two_workers_train_every_head_and_report_each_heads_metrics(trained):
    outcome, _ = trained
    m = outcome.metrics
    assert m["step"] == 36
    for head, metric in (("sentiment", "accuracy"), ("topic", "accuracy"), ("ner", "f1")):
        assert 0.0 <= m[f"test_{head}_{metric}"] <= 1.0 and f"eval_{head}_loss" in m
    assert m["eval_score"] == pytest.approx((m["eval_sentiment_accuracy"] + m["eval_topic_accuracy"]
                                             + m["eval_ner_f1"]) / 3)
    history = _history(outcome.checkpoint_path)
    assert [h["step"] for h in history] == [12, 24, 36]
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]  # the heads learn


def test_each_head_is_served_over_http_as_plain_peft_answers_with_it(trained):
    import rayft.serve
    from peft import PeftModel

    from rayft.cluster import free_port
    from rayft.models import load_tokenizer
    from rayft.store import manifest_config
    from rayft.tasks import get_task

    _, store = trained
    entry = store.manifest("mt")
    cfg = manifest_config(entry)
    base = get_task("multitask").build_model(cfg.model.name, cfg, entry.labels)
    plain = PeftModel.from_pretrained(base, str(store.path("mt"))).eval()
    tokenizer = load_tokenizer(cfg.model.name)
    url = rayft.serve.start(str(store.root), port=free_port(), max_adapters=4)
    try:
        cards = {m["id"]: m for m in requests.get(url + "/v1/models", timeout=30).json()["data"]}
        assert {"mt:sentiment", "mt:topic"} <= set(cards) and "mt" not in cards
        assert cards["mt:topic"]["labels"] == ["cinema", "mood", "tale"]
        for index, head in enumerate(("sentiment", "topic")):
            enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=cfg.model.max_length, return_tensors="pt")
            with torch.no_grad():
                want = plain(**enc, task=torch.full((len(TEXTS),), index)).logits.softmax(-1)
            resp = requests.post(url + "/v1/classify", json={"model": f"mt:{head}", "inputs": TEXTS}, timeout=60)
            assert resp.status_code == 200, resp.text
            labels = cards[f"mt:{head}"]["labels"]
            got = torch.tensor([[row["probabilities"][n] for n in labels] for row in resp.json()["data"]])
            assert torch.allclose(got, want, atol=1e-4), head
        whole = requests.post(url + "/v1/classify", json={"model": "mt", "inputs": TEXTS}, timeout=60)
        assert whole.status_code == 422 and "mt:sentiment, mt:topic, mt:ner" in whole.json()["error"]["message"]
        ner = requests.post(url + "/v1/classify", json={"model": "mt:ner", "inputs": TEXTS}, timeout=60)
        assert ner.status_code == 422 and "token_classification" in ner.json()["error"]["message"]
        missing = requests.post(url + "/v1/classify", json={"model": "mt:nope", "inputs": TEXTS}, timeout=60)
        assert missing.status_code == 404
    finally:
        rayft.serve.shutdown()


@pytest.mark.slow
def test_full_fine_tuning_of_every_head_under_zero3(ray_local, tiny_bert, sentiment_csv, tmp_path):
    from rayft.train import run_training

    raw = _raw(tiny_bert, sentiment_csv, tmp_path, {"name": "full"}, zero=3, steps=24, lr=5e-3)
    outcome = run_training(build_config(raw), verbose=False)
    history = _history(outcome.checkpoint_path)
    assert outcome.metrics["step"] == 24 and history[-1]["eval_loss"] < history[0]["eval_loss"]


@pytest.mark.slow
def test_a_sweep_searches_the_mixing_temperature_on_a_heads_metric(ray_local, tiny_bert, sentiment_csv, tmp_path,
                                                                   capsys):
    import yaml

    from rayft.cli import main
    from rayft.store import AdapterStore

    raw = _raw(tiny_bert, sentiment_csv, tmp_path, {"name": "lora", "r": 4, "alpha": 8,
                                                   "target_modules": ["query", "value"]}, zero=2, steps=12, lr=5e-2)
    raw["scaling"] = {"num_workers": 1, "cpus_per_worker": 1}
    raw["sweep"] = {"num_trials": 2, "searcher": "grid", "scheduler": "none", "metric": "eval_topic_accuracy",
                    "mode": "max", "space": {"mix.temperature": {"choice": [1.0, 4.0]}}}
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(config), "--id", "mt-best"]) == 0
    assert "held-out test_topic_accuracy=" in capsys.readouterr().out
    summary = json.loads(next((tmp_path / "runs" / "multi").glob("sweep-*/rayft_sweep.json")).read_text())
    assert sorted(t["params"]["mix.temperature"] for t in summary["trials"]) == [1.0, 4.0]
    store = AdapterStore(tmp_path / "store")
    assert store.manifest("mt-best").task == "multitask" and store.exists("mt-best:topic")
