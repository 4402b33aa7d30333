"""Curriculum learning on 2 Ray Train workers at ZeRO-2: easiest-first batches by length, the run learns, and a run
resumed from its mid-epoch checkpoint continues at the same batch of the same curriculum."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayft.config import build_config
from tests.support import cls_config

pytestmark = pytest.mark.integration


def _state(checkpoint: str) -> dict:
    return json.loads((Path(checkpoint) / "rayft_state.json").read_text())


def test_two_workers_train_a_curriculum_and_resume_mid_epoch(ray_local, tiny_bert, sentiment_csv, tmp_path):
    from rayft.train import run_training

    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name="curriculum",
                     train={"max_steps": 24, "eval_every": 8, "batch_size": 8, "lr": 5e-2,
                            "curriculum": {"by": "length", "pacing": "root", "start_fraction": 0.3}},
                     scaling={"num_workers": 2, "cpus_per_worker": 1, "zero_stage": 2})
    first = run_training(build_config(raw), verbose=False)
    state = _state(first.checkpoint_path)
    history = state["history"]
    assert [h["step"] for h in history] == [8, 16, 24]
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]
    # 160 training rows: 80 per worker, 10 batches of 8 per epoch; step 24 is batch 4 of epoch 2
    assert (state["epoch"], state["batch"]) == (2, 4)

    longer = build_config({**raw, "train": {**raw["train"], "max_steps": 28}})
    second = run_training(longer, resume=True, verbose=False)
    resumed = _state(second.checkpoint_path)
    assert second.metrics["resumed_from_step"] == 24
    assert [h["step"] for h in resumed["history"]] == [8, 16, 24, 28]
    assert (resumed["epoch"], resumed["batch"]) == (2, 8)
