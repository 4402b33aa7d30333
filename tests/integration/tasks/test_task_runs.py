"""Every task end to end on tiny models: a real 2-worker Ray Train + DeepSpeed run, the loss falls, the task's
metrics are reported, and the exported result loads with plain transformers/peft and predicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rayft.config import build_config
from rayft.store import AdapterStore, export_checkpoint, load_for_inference
from tests.support import cls_config
from tests.support import tiny_tasks as tt

pytestmark = pytest.mark.integration

BERT_LORA = {"name": "lora", "r": 8, "alpha": 16, "target_modules": ["query", "value"]}
LLAMA_LORA = {"name": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}


def _run(model: Path, data: Path, tmp_path: Path, name: str, task: dict, method: dict, *, stage: int = 2,
         steps: int = 12, lr: float = 1e-2, packing: bool = False):
    """Train on 2 workers; returns (config, outcome, per-evaluation history)."""
    from rayft.train import run_training

    raw = cls_config(model, data, tmp_path, name=name, task=task,
                     train={"max_steps": steps, "eval_every": steps // 2, "batch_size": 8, "lr": lr,
                            "eval_batch_size": 16, "packing": packing},
                     scaling={"num_workers": 2, "cpus_per_worker": 1, "zero_stage": stage})
    raw["method"] = method
    raw["data"] = {"source": str(data), "validation_size": 16, "test_size": 8}
    cfg = build_config(raw)
    out = run_training(cfg, verbose=False)
    history = json.loads((Path(out.checkpoint_path) / "rayft_state.json").read_text())["history"]
    assert [h["step"] for h in history] == [steps // 2, steps]
    return cfg, out, history


def _export(out, tmp_path: Path, adapter_id: str):
    store = AdapterStore(tmp_path / "store")
    manifest = export_checkpoint(out.checkpoint_path, None, store, adapter_id=adapter_id)
    return store, manifest


def test_token_classification_on_conll_data(ray_local, tiny_bert, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForTokenClassification

    from rayft.tasks.token_classification import predict_tags

    data = tt.write_conll(tmp_path / "ner.conll", tt.ner_rows(120))
    _, out, history = _run(tiny_bert, data, tmp_path, "ner", {"name": "token_classification"}, BERT_LORA)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]
    assert 0.0 <= out.metrics["test_f1"] <= 1.0 and "eval_precision" in out.metrics

    store, manifest = _export(out, tmp_path, "ner")
    assert manifest.task == "token_classification"
    assert manifest.labels == ["O", "B-loc", "B-opinion", "I-opinion"]
    model, tokenizer, _ = load_for_inference(store, "ner")
    tags = predict_tags(model, tokenizer, ["the", "film", "paris"], 32)
    assert len(tags) == 3 and set(tags) <= set(manifest.labels)
    # The stored adapter is a plain peft folder: it loads onto a token-classification head by hand too.
    base = AutoModelForTokenClassification.from_pretrained(str(tiny_bert), num_labels=4)
    plain = PeftModel.from_pretrained(base, str(store.path("ner"))).eval()
    enc = tokenizer(["the", "film", "paris"], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(plain(**enc).logits, model(**enc).logits, atol=1e-5)


def test_extractive_qa_on_squad_json(ray_local, tiny_bert, tmp_path):
    from rayft.tasks.extractive_qa import answer

    data = tmp_path / "qa.json"
    data.write_text(json.dumps(tt.squad_doc(120)))
    _, out, history = _run(tiny_bert, data, tmp_path, "qa", {"name": "extractive_qa", "doc_stride": 8},
                           {"name": "full"}, lr=3e-3)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]
    assert 0.0 <= out.metrics["test_exact_match"] <= out.metrics["test_f1"] <= 1.0

    store, manifest = _export(out, tmp_path, "qa")
    assert manifest.kind == "full" and manifest.task == "extractive_qa"
    model, tokenizer, _ = load_for_inference(store, "qa")
    context = "the movie was a superb story"
    found = answer(model, tokenizer, "what is the film ?", context, max_length=32)
    assert found and found in context


@pytest.mark.parametrize(("method", "stage"), [
    (LLAMA_LORA, 2),
    pytest.param({"name": "full"}, 3, marks=pytest.mark.slow),  # the frozen-copy reference, under ZeRO-3
], ids=["lora-zero2", "full-zero3"])
def test_dpo_prefers_the_chosen_answers(method, stage, ray_local, tiny_llama, tmp_path):
    data = tt.write_jsonl(tmp_path / "pref.jsonl", tt.preference_rows(96))
    _, out, history = _run(tiny_llama, data, tmp_path, f"dpo-{method['name']}", {"name": "dpo", "beta": 0.5},
                           method, stage=stage, lr=1e-2 if method["name"] == "lora" else 2e-3)
    # Both references (the base with adapters disabled; a frozen copy) start equal to the policy: loss log 2.
    assert history[-1]["eval_loss"] < history[0]["eval_loss"] < 0.6932
    assert history[-1]["eval_reward_margin"] > 0 and history[-1]["eval_reward_accuracy"] > 0.5
    assert out.metrics["test_chosen_reward"] > out.metrics["test_rejected_reward"]
    _, manifest = _export(out, tmp_path, f"dpo-{method['name']}")
    assert manifest.task == "dpo" and manifest.kind == ("adapter" if method["name"] == "lora" else "full")


@pytest.mark.parametrize(("method", "stage"), [
    (LLAMA_LORA, 2),
    pytest.param({"name": "full"}, 3, marks=pytest.mark.slow),  # partitioned weights, a frozen-copy reference
], ids=["lora-zero2", "full-zero3"])
def test_grpo_raises_the_reward_of_a_target_word(method, stage, ray_local, tiny_llama, tmp_path):
    """GRPO on 2 workers, rollouts on each worker's decode engine: the held-out greedy answers go from never saying
    the target word (the tiny base) to saying it most of the time within 12 steps."""
    data = tt.write_jsonl(tmp_path / "prompts.jsonl", tt.rl_prompts(96))
    task = {"name": "grpo", "rewards": [{"function": "tests.support.rewards:target_word"}], "group_size": 8,
            "max_new_tokens": 6, "beta": 0.02}
    _, out, history = _run(tiny_llama, data, tmp_path, f"grpo-{method['name']}", task, method, stage=stage,
                           lr=3e-2 if method["name"] == "lora" else 3e-3, packing=stage == 3)  # packed updates
    assert history[-1]["eval_reward"] >= 0.5 and history[-1]["eval_reward"] >= history[0]["eval_reward"]
    assert out.metrics["test_reward"] >= 0.5 and "eval_completion_length" in out.metrics
    # what the rollouts and updates measured, averaged since the last evaluation
    assert {"train_reward", "train_reward_std", "train_kl", "train_clip_fraction", "train_completion_length",
            "train_rollout_s", "train_rollout_tokens_per_s"} <= set(out.metrics)
    assert out.metrics["train_kl"] >= 0 and out.metrics["train_rollout_s"] > 0
    _, manifest = _export(out, tmp_path, f"grpo-{method['name']}")
    assert manifest.task == "grpo" and manifest.prompt_format is not None  # served as an sft model


@pytest.mark.parametrize(("method", "stage"), [
    (LLAMA_LORA, 2),
    pytest.param({"name": "full"}, 3, marks=pytest.mark.slow),  # partitioned weights and value head, a frozen copy
], ids=["lora-zero2", "full-zero3"])
def test_ppo_raises_the_reward_of_a_target_word(method, stage, ray_local, tiny_llama, tmp_path):
    """PPO on 2 workers (value head, GAE, 2 epochs x 2 minibatches per rollout batch, adaptive KL; the ZeRO-2 run
    packs its update forwards, as GRPO's ZeRO-3 run does): the held-out greedy answers go from never saying the
    target word to saying it, while the value head is left out of the result."""
    data = tt.write_jsonl(tmp_path / "prompts.jsonl", tt.rl_prompts(96))
    task = {"name": "ppo", "rewards": [{"function": "tests.support.rewards:target_word"}], "max_new_tokens": 6,
            "ppo_epochs": 2, "num_minibatches": 2, "kl_coef": 0.02, "kl_target": 1.0, "kl_horizon": 100}
    _, out, history = _run(tiny_llama, data, tmp_path, f"ppo-{method['name']}", task, method, stage=stage,
                           steps=48, lr=3e-2 if method["name"] == "lora" else 3e-3, packing=stage == 2)
    assert history[-1]["eval_reward"] >= 0.5 and history[-1]["eval_reward"] > history[0]["eval_reward"] - 0.1
    assert out.metrics["test_reward"] >= 0.5 and "eval_kl" in out.metrics
    assert {"train_reward", "train_kl", "train_kl_coef", "train_entropy", "train_clip_fraction", "train_value_loss",
            "train_policy_loss", "train_completion_length", "train_rollout_s", "train_update_s",
            "train_update_tokens_per_s", "train_update_fill"} <= set(out.metrics)
    assert 0 < out.metrics["train_update_fill"] <= 1
    assert out.metrics["train_kl_coef"] != 0.02  # adapted towards the target
    _, manifest = _export(out, tmp_path, f"ppo-{method['name']}")
    assert manifest.task == "ppo" and manifest.prompt_format is not None  # served as an sft model
    model, _, _ = load_for_inference(AdapterStore(tmp_path / "store"), f"ppo-{method['name']}")
    assert not any("v_head" in n for n, _ in model.named_parameters())


def test_reward_model_ranks_pairs(ray_local, tiny_bert, tmp_path):
    from rayft.tasks.reward_model import score

    data = tt.write_jsonl(tmp_path / "pairs.jsonl", tt.review_pairs(96))
    _, out, history = _run(tiny_bert, data, tmp_path, "rm", {"name": "reward_model"}, BERT_LORA, lr=2e-2)
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]
    assert history[-1]["eval_margin"] > history[0]["eval_margin"]
    assert out.metrics["test_accuracy"] > 0.5
    store, manifest = _export(out, tmp_path, "rm")
    model, tokenizer, _ = load_for_inference(store, "rm")
    good, bad = score(model, tokenizer, ["the film was superb", "the film was awful"], ["the movie"] * 2)
    assert good > bad


def test_sft_on_multi_turn_chat_messages(ray_local, tiny_llama, tmp_path):
    data = tt.write_jsonl(tmp_path / "chat.jsonl", tt.chat_rows(64))
    _, out, history = _run(tiny_llama, data, tmp_path, "chat", {"name": "sft"}, LLAMA_LORA)
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]
    assert out.metrics["test_perplexity"] > 1.0
