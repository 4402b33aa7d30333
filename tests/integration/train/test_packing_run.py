"""SFT with packing and activation checkpointing on 2 Ray Train workers at ZeRO-2: it learns, reports real tokens
per second, and a run resumed from a checkpoint written mid-epoch continues there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayft.config import build_config
from tests.support import cls_config

pytestmark = pytest.mark.integration


def _state(checkpoint: str) -> dict:
    return json.loads((Path(checkpoint) / "rayft_state.json").read_text())


def test_two_workers_train_packed_with_checkpointing_and_resume_mid_epoch(ray_local, tiny_llama, chat_jsonl,
                                                                          tmp_path):
    from rayft.train import run_training

    raw = cls_config(tiny_llama, chat_jsonl, tmp_path, name="packed-sft", task={"name": "sft"},
                     train={"max_steps": 8, "eval_every": 2, "batch_size": 2, "lr": 1e-2, "packing": True,
                            "gradient_checkpointing": True},
                     scaling={"num_workers": 2, "cpus_per_worker": 1, "zero_stage": 2})
    raw["model"]["max_length"] = 64
    raw["data"] = {"source": str(chat_jsonl), "validation_size": 8, "test_size": 0}
    raw["method"] = {"name": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    first = run_training(build_config(raw), verbose=False)
    state = _state(first.checkpoint_path)
    history = state["history"]
    assert [h["step"] for h in history] == [2, 4, 6, 8]
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]
    assert all(h["tokens_per_s"] > 0 for h in history)
    # 56 training rows of ~12 tokens pack into 10 rows of 64: 3 batches (2, 2, 1 rows) per worker and epoch, so
    # step 8 is the second batch of the third epoch.
    assert state["epoch"] == 2 and 0 < state["batch"] < 3

    longer = build_config({**raw, "train": {**raw["train"], "max_steps": 10}})
    second = run_training(longer, resume=True, verbose=False)
    resumed = _state(second.checkpoint_path)
    assert [h["step"] for h in resumed["history"]] == [2, 4, 6, 8, 10]
    assert second.metrics["resumed_from_step"] == 8
    assert (resumed["epoch"], resumed["batch"]) == (3, 1)  # 8 = epoch 2 batch 2, +1 batch ends it, +1 into epoch 3
