"""Continual learning on 2 Ray Train workers at ZeRO-2: a stored sentiment adapter learns a three-topic task with
EWC and replay; the run reports the sentiment task's held-out accuracy before and after, and learns the topics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayft.config import build_config
from tests.support import cls_config
from tests.unit.train.test_continual import topic_csv

pytestmark = pytest.mark.integration


def _state(checkpoint: str) -> dict:
    return json.loads((Path(checkpoint) / "rayft_state.json").read_text())


def test_two_workers_learn_a_new_task_from_a_stored_result_with_ewc_and_replay(ray_local, tiny_bert, sentiment_csv,
                                                                               tmp_path):
    from rayft.store import AdapterStore
    from rayft.train import run_training
    from tests.support.export_cases import cls_entry

    store = AdapterStore(tmp_path / "store")
    cls_entry(store, tiny_bert, sentiment_csv, tmp_path, adapter_id="sentiment")
    raw = cls_config(tiny_bert, topic_csv(tmp_path / "topics.csv", 240), tmp_path, name="continual",
                     train={"max_steps": 24, "eval_every": 8, "batch_size": 8, "lr": 5e-2,
                            "continual_from": "sentiment", "ewc": {"lambda": 100.0, "samples": 32},
                            "replay": {"fraction": 0.25}},
                     scaling={"num_workers": 2, "cpus_per_worker": 1, "zero_stage": 2})
    outcome = run_training(build_config(raw), verbose=False)
    m = outcome.metrics
    assert m["step"] == 24
    assert m["previous_test_accuracy_before"] >= 0.8  # the stored classifier, measured before training
    assert 0.0 <= m["previous_test_accuracy"] <= 1.0
    assert m["forgetting_accuracy"] == pytest.approx(m["previous_test_accuracy_before"] - m["previous_test_accuracy"])
    # LoRA on the tiny random BERT sits at its starting loss for its first ~15 steps: 24 at a high lr leave it
    history = _state(outcome.checkpoint_path)["history"]
    assert [h["step"] for h in history] == [8, 16, 24]
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]  # the new task is learned
