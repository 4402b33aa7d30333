"""Stored results to export: a peft adapter trained for a few steps on tiny data with the task's own data stage
and loss, stored with its manifest (what ``rayft train --export`` would have left in the store)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tests.support import cls_config
from tests.support import tiny_tasks as tt
from tests.support.serve_helpers import config, manifest


def trained_entry(store: Any, raw: dict, peft_config: Any, adapter_id: str, steps: int = 60, lr: float = 3e-2,
                  method: str = "lora") -> Any:
    """Train ``peft_config`` on ``raw``'s base model and data for ``steps`` batches; store it as ``adapter_id``."""
    from peft import get_peft_model

    from rayft.config.schema import ExperimentConfig
    from rayft.data import prepare_data
    from rayft.data.collate import Columnar
    from rayft.tasks import get_task

    cfg = ExperimentConfig.model_validate(raw)
    task = get_task(cfg.task.name)
    data = prepare_data(cfg)
    torch.manual_seed(0)
    model = get_peft_model(task.build_model(data.model_path, cfg, data.labels), peft_config)
    rows = Columnar(data.splits["train"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(steps):
        start = (step * 16) % max(len(rows) - 16, 1)
        batch = task.collate([rows[i] for i in range(start, min(start + 16, len(rows)))], data.pad_id)
        loss = model(**{k: v for k, v in batch.items() if k != "index"}).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    folder = Path(str(store.root) + "-src") / adapter_id
    model.save_pretrained(folder)
    from rayft.models import fingerprint

    store.put(folder, manifest(adapter_id, Path(cfg.model.name), cfg.task.name, config(raw), data.labels,
                               method=method, max_length=cfg.model.max_length,
                               base_fingerprint=fingerprint(data.model_path)))
    return store.manifest(adapter_id)


def lora(task_type: str, modules: list[str], r: int = 4) -> Any:
    from peft import LoraConfig

    return LoraConfig(task_type=task_type, r=r, lora_alpha=2 * r, target_modules=modules)


def cls_entry(store: Any, tiny_bert: Path, csv: Path, tmp: Path, adapter_id: str = "cls") -> Any:
    """A LoRA sentiment classifier on the tiny BERT that learned its data (clear margins, so int8 keeps labels)."""
    return trained_entry(store, cls_config(tiny_bert, csv, tmp), lora("SEQ_CLS", ["query", "value"]), adapter_id)


def ner_entry(store: Any, tiny_bert: Path, tmp: Path) -> Any:
    data = tt.write_conll(tmp / "ner.conll", tt.ner_rows(120))
    raw = cls_config(tiny_bert, data, tmp, task={"name": "token_classification"})
    raw["data"].update(text_column=None, label_column=None)
    return trained_entry(store, raw, lora("TOKEN_CLS", ["query", "value"]), "ner")


def qa_entry(store: Any, tiny_bert: Path, tmp: Path) -> Any:
    data = tmp / "qa.json"
    data.write_text(json.dumps(tt.squad_doc(120)))
    raw = cls_config(tiny_bert, data, tmp, task={"name": "extractive_qa"})
    raw["data"].update(text_column=None, label_column=None)
    return trained_entry(store, raw, lora("QUESTION_ANS", ["query", "value"]), "qa")


def sft_entry(store: Any, tiny_llama: Path, chat_jsonl: Path, tmp: Path) -> Any:
    raw = cls_config(tiny_llama, chat_jsonl, tmp, task={"name": "sft"})
    raw["data"].update(text_column=None, label_column=None, prompt_column="prompt", response_column="response",
                       validation_size=16, test_size=8)
    return trained_entry(store, raw, lora("CAUSAL_LM", ["q_proj", "v_proj"]), "chat")


def prefix_entry(store: Any, tiny_bert: Path, csv: Path, tmp: Path) -> Any:
    """Prefix tuning on the classifier (a method no merged or ONNX export can take)."""
    from peft import PrefixTuningConfig

    raw = cls_config(tiny_bert, csv, tmp, method={"name": "prefix", "num_virtual_tokens": 4})
    raw["method"].pop("r"), raw["method"].pop("alpha"), raw["method"].pop("target_modules")
    return trained_entry(store, raw, PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4), "prefix",
                         steps=2, method="prefix")


def make_llama_bpe(path: Path) -> Path:
    """A tiny Llama (random weights) with a byte-level BPE tokenizer trained on the chat rows (GGUF writes those)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tests.support.tiny import CHAT_TEMPLATE, chat_rows

    path.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|end|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    texts = [f"{r['prompt']} {r['response']}" for r in chat_rows(8)]
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  additional_special_tokens=specials[3:])
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(path)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path
