"""Precision, packing and length checks: a precision the hardware lacks is refused with the reason (never a crash),
packing is refused where it does not apply, and a max_length past the model's context names the limit."""

from __future__ import annotations

import pytest
import torch

from rayft.config import build_config
from rayft.errors import ConfigError
from rayft.train.checks import supported_precisions
from rayft.train.ds_config import deepspeed_config
from tests.support import cls_config


def _sft(tiny_llama, chat_jsonl, tmp_path, dtype: str = "float32", **sections) -> dict:
    raw = cls_config(tiny_llama, chat_jsonl, tmp_path, task={"name": "sft"}, **sections)
    raw["model"]["dtype"] = dtype
    raw["data"].update(text_column=None, label_column=None, prompt_column="prompt", response_column="response")
    raw["method"] = {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    return raw


def _errors(raw: dict) -> dict:
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    return {e.path: e for e in info.value.errors}


@pytest.mark.skipif(torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has bf16 instructions")
def test_bf16_on_a_cpu_without_bf16_is_refused_with_the_reason(tiny_llama, chat_jsonl, tmp_path):
    error = _errors(_sft(tiny_llama, chat_jsonl, tmp_path, dtype="bfloat16"))["model.dtype"]
    assert error.value == "bfloat16"
    assert "CPU" in error.expected and "float32" in error.expected and "bfloat16 is missing" in error.expected


def test_fp16_on_cpu_names_what_the_machine_has(tiny_llama, chat_jsonl, tmp_path):
    have, where = supported_precisions(gpu=False)
    raw = _sft(tiny_llama, chat_jsonl, tmp_path, dtype="float16")
    if "float16" in have:
        assert build_config(raw).model.dtype == "float16"
        return
    error = _errors(raw)["model.dtype"]
    assert where in error.expected and ", ".join(have) in error.expected


def test_packing_refused_for_classification_and_prompt_learning(tiny_llama, tiny_bert, sentiment_csv, chat_jsonl,
                                                                 tmp_path):
    assert "train.packing" in _errors(cls_config(tiny_bert, sentiment_csv, tmp_path, train={"packing": True}))
    raw = _sft(tiny_llama, chat_jsonl, tmp_path, train={"packing": True})
    raw["method"] = {"name": "prompt", "num_virtual_tokens": 4}
    assert "virtual tokens" in _errors(raw)["train.packing"].expected
    ok = build_config(_sft(tiny_llama, chat_jsonl, tmp_path, train={"packing": True, "gradient_checkpointing": True}))
    assert ok.train.packing and ok.train.gradient_checkpointing


def test_deepspeed_precision_sections(tiny_llama, chat_jsonl, tmp_path):
    raw = _sft(tiny_llama, chat_jsonl, tmp_path)
    cfg = build_config(raw)
    assert deepspeed_config(cfg)["bf16"] == {"enabled": False} and deepspeed_config(cfg)["fp16"] == {"enabled": False}
    bf16 = deepspeed_config(cfg.model_copy(update={"model": cfg.model.model_copy(update={"dtype": "bfloat16"})}))
    assert bf16["bf16"]["enabled"] and not bf16["fp16"]["enabled"]
    fp16 = deepspeed_config(cfg.model_copy(update={"model": cfg.model.model_copy(update={"dtype": "float16"})}))
    assert fp16["fp16"]["enabled"] and fp16["fp16"]["loss_scale"] == 0  # dynamic loss scaling


def test_zero_buckets_are_sized_by_the_models_hidden_size(tiny_llama, chat_jsonl, tmp_path):
    cfg = build_config(_sft(tiny_llama, chat_jsonl, tmp_path, scaling={"zero_stage": 3}))
    zero = deepspeed_config(cfg, hidden_size=576)["zero_optimization"]
    assert zero["reduce_bucket_size"] == 576 * 576 and zero["stage3_prefetch_bucket_size"] == int(0.9 * 576 * 576)
    assert zero["stage3_param_persistence_threshold"] == 5760
    block = 12 * 576 * 576  # one transformer block: the live, reuse and optimizer sub-group limits
    assert zero["stage3_max_live_parameters"] == zero["stage3_max_reuse_distance"] == zero["sub_group_size"] == block
    assert "reduce_bucket_size" not in deepspeed_config(cfg)["zero_optimization"]  # no model: DeepSpeed's defaults
    stage2 = deepspeed_config(cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"zero_stage": 2})}), 576)
    assert stage2["zero_optimization"]["reduce_bucket_size"] == 576 * 576
    assert "stage3_prefetch_bucket_size" not in stage2["zero_optimization"]
    assert "sub_group_size" not in stage2["zero_optimization"]


def test_max_length_beyond_the_models_context_is_refused_naming_the_limit(tiny_bert, tiny_llama, sentiment_csv,
                                                                           chat_jsonl, tmp_path):
    """tiny BERT's position embeddings cover 128 tokens, tiny Llama's 256; a catalog model's limit is known too."""
    from rayft.models.catalog import context_length

    raw = cls_config(tiny_bert, sentiment_csv, tmp_path)
    raw["model"]["max_length"] = 128
    assert build_config(raw).model.max_length == 128  # up to the limit
    raw["model"]["max_length"] = 129
    assert "at most 128, the context length of model" in _errors(raw)["model.max_length"].expected
    sft = _sft(tiny_llama, chat_jsonl, tmp_path)
    sft["model"]["max_length"] = 300
    assert "at most 256" in _errors(sft)["model.max_length"].expected
    assert context_length("minilm-l6") == 512 and context_length("smollm2-135m") == 8192
    assert context_length("org/some-hub-model") is None  # not known before loading
