"""Stored results for serving tests: tiny LoRA adapters, a merged full-weight model, manifests."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.support import cls_config

LABELS = ["neg", "pos"]
TEXTS = ["the movie was great", "boring and dull plot", "a charming story with a superb cast", "tedious"]


def config(raw: dict) -> dict:
    from rayft.config.schema import ExperimentConfig

    return ExperimentConfig.model_validate(raw).model_dump(mode="json")


def manifest(adapter_id: str, base: Path, task: str, cfg: dict, labels=None, **kw):
    from rayft.models import fingerprint
    from rayft.store import Manifest

    fields = dict(adapter_id=adapter_id, kind="adapter", base_model=str(base),
                  base_fingerprint=fingerprint(str(base)), method="lora", task=task, labels=labels,
                  metrics={"eval_accuracy": 0.5}, config=cfg, max_length=32)
    fields.update(kw)
    return Manifest(**fields)


def _cls_base(base: Path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})


def cls_adapter(base: Path, out: Path, seed: int, r: int = 4) -> Path:
    """A random (non-identity) LoRA adapter with its own classification head, saved by peft."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = _cls_base(base)
    lora = LoraConfig(task_type="SEQ_CLS", r=r, lora_alpha=2 * r, target_modules=["query", "value"],
                      init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(out)
    return out


def merged_model(base: Path, adapter: Path, out: Path) -> Path:
    """The adapter merged into its base and saved as a full model folder (weights + tokenizer)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    merged = PeftModel.from_pretrained(_cls_base(base), str(adapter)).merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def sft_adapter(base: Path, out: Path, seed: int = 3) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(out)
    return out


def classify_and_chat_store(tmp: Path, tiny_bert: Path, tiny_llama: Path, sentiment_csv: Path, chat_jsonl: Path):
    """A store under ``tmp`` with two classification LoRA adapters (``cls-a``, ``cls-b``) and an ``sft`` one
    (``chat-a``); returns the store and the classification results' config."""
    from rayft.store import AdapterStore

    st = AdapterStore(tmp / "store")
    cls_cfg = config(cls_config(tiny_bert, sentiment_csv, tmp))
    for i, adapter_id in enumerate(["cls-a", "cls-b"]):
        st.put(cls_adapter(tiny_bert, tmp / adapter_id, seed=i),
               manifest(adapter_id, tiny_bert, "sequence_classification", cls_cfg, LABELS))
    sft_raw = cls_config(tiny_llama, chat_jsonl, tmp, task={"name": "sft"})
    sft_raw["data"].update(text_column=None, label_column=None, prompt_column="prompt", response_column="response")
    st.put(sft_adapter(tiny_llama, tmp / "chat-a"), manifest("chat-a", tiny_llama, "sft", config(sft_raw)))
    return st, cls_cfg


def expected_probs(store, adapter_id: str, texts=TEXTS) -> torch.Tensor:
    """What the stored result predicts in-process (plain peft / transformers, no server)."""
    from rayft.store import load_for_inference
    from rayft.tasks.sequence_classification import predict_proba

    model, tokenizer, m = load_for_inference(store, adapter_id)
    return predict_proba(model, tokenizer, list(texts), m.max_length)


def probs_of(body: dict) -> torch.Tensor:
    return torch.tensor([[row["probabilities"][n] for n in LABELS] for row in body["data"]])
