"""Slow tests on the real packaged models and data (run with `make test-slow`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayft.config import load_config
from tests.support import REPO

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_smollm2_converts_once_and_answers():
    from rayft.models import load_tokenizer, resolve_model
    from rayft.tasks.sft import generate, render_prompt

    path = resolve_model("smollm2-135m")
    assert (Path(path) / "config.json").is_file() and resolve_model("smollm2-135m") == path
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = load_tokenizer(path)
    ids, _ = generate(model, tok, render_prompt(tok, "What is the capital of France?"), max_new_tokens=12)
    assert "Paris" in tok.decode(ids)


def test_chat_sft_experiment_trains_on_real_data(ray_local, tmp_path):
    from rayft.train import run_training

    cfg = load_config(REPO / "experiments" / "chat_sft.yaml",
                      [f"output_dir={tmp_path}", "train.max_steps=6", "train.eval_every=3", "data.max_samples=160",
                       "data.validation_size=16", "data.test_size=16", "scaling.cpus_per_worker=1"])
    out = run_training(cfg, verbose=False)
    assert out.metrics["step"] == 6 and out.metrics["eval_perplexity"] > 1.0


def test_quickstart_model_and_data_learn(ray_local, tmp_path):
    from rayft.train import run_training

    cfg = load_config(REPO / "experiments" / "quickstart.yaml",
                      [f"output_dir={tmp_path}", "train.epochs=1", "train.eval_every=125", "scaling.cpus_per_worker=2",
                       "data.validation_size=200", "data.test_size=200"])
    out = run_training(cfg, verbose=False)
    assert out.metrics["eval_accuracy"] > 0.65
