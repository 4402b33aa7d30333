"""Continual learning on 2 Ray Train workers at ZeRO-2 and ZeRO-3: a stored sentiment adapter learns a three-topic
task with EWC and replay; the run reports the sentiment task's held-out accuracy before and after, and learns the
topics. The adapter's rank (16) makes its matrices larger than ZeRO-3's persistence threshold on the tiny BERT
(10 × hidden = 320 elements), so at ZeRO-3 they really are partitioned: the penalty gathers them, and the previous
head's view runs beside DeepSpeed's parameter hooks."""

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


def test_two_workers_learn_a_new_task_from_a_stored_result_with_ewc_and_replay_at_zero_2_and_3(
        ray_local, tiny_bert, sentiment_csv, tmp_path):
    from rayft.store import AdapterStore
    from rayft.train import run_training
    from tests.support.export_cases import lora, trained_entry

    store = AdapterStore(tmp_path / "store")
    trained_entry(store, cls_config(tiny_bert, sentiment_csv, tmp_path), lora("SEQ_CLS", ["query", "value"], r=16),
                  "sentiment")
    data = topic_csv(tmp_path / "topics.csv", 240)
    runs = {}
    for stage in (2, 3):
        raw = cls_config(tiny_bert, data, tmp_path / f"zero{stage}", name="continual", method={"r": 16, "alpha": 32},
                         train={"max_steps": 24, "eval_every": 8, "batch_size": 8, "lr": 5e-2,
                                "continual_from": "sentiment", "ewc": {"lambda": 100.0, "samples": 32},
                                "replay": {"fraction": 0.25}},
                         scaling={"num_workers": 2, "cpus_per_worker": 1, "zero_stage": stage},
                         store={"path": str(store.root)})
        outcome = run_training(build_config(raw), verbose=False)
        runs[stage] = outcome.metrics, _state(outcome.checkpoint_path)["history"]
    for m, history in runs.values():
        assert m["step"] == 24
        assert m["previous_test_accuracy_before"] >= 0.8  # the stored classifier, measured before training
        assert 0.0 <= m["previous_test_accuracy"] <= 1.0
        assert m["forgetting_accuracy"] == pytest.approx(m["previous_test_accuracy_before"]
                                                         - m["previous_test_accuracy"])
        # LoRA on the tiny random BERT sits at its starting loss for its first ~15 steps: 24 at a high lr leave it
        assert [h["step"] for h in history] == [8, 16, 24]
        assert history[-1]["eval_loss"] < history[0]["eval_loss"]  # the new task is learned
    # ZeRO-3 partitions the adapter's matrices; the penalty, replay and previous view compute what ZeRO-2 does
    (m2, h2), (m3, h3) = runs[2], runs[3]
    assert [h["train_loss"] for h in h3] == pytest.approx([h["train_loss"] for h in h2], rel=1e-4)
    assert m3["previous_test_loss"] == pytest.approx(m2["previous_test_loss"], rel=1e-4)
