"""Sequence classification: a text (or text pair) to one of N labels; accuracy and macro-F1."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from rayft.config.schema import ExperimentConfig
from rayft.tasks.base import Task, register_task


class SequenceClassification(Task):
    name = "sequence_classification"
    peft_task_type = "SEQ_CLS"
    metrics = ("loss", "accuracy", "f1_macro")
    default_metric = "eval_accuracy"
    default_mode = "max"
    stratify = True
    roles = {"text": "text_column", "label": "label_column"}
    optional_roles = {"text_pair": "text_pair_column"}
    default_columns = {"text": "text", "label": "label"}

    def labels(self, cfg: ExperimentConfig, df: pd.DataFrame, columns: dict[str, str]) -> list[str]:
        if cfg.task.labels:
            return list(cfg.task.labels)
        return sorted({str(v) for v in df[columns["label"]].dropna()})

    def tokenize(self, df: pd.DataFrame, tokenizer: Any, cfg: ExperimentConfig, columns: dict[str, str],
                 labels: list[str] | None) -> dict[str, list[Any]]:
        texts = df[columns["text"]].astype(str).tolist()
        pairs = df[columns["text_pair"]].astype(str).tolist() if "text_pair" in columns else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=cfg.model.max_length)
        label_ids = {name: i for i, name in enumerate(labels or [])}
        out = {k: list(v) for k, v in enc.items() if k in ("input_ids", "token_type_ids")}
        out["labels"] = [label_ids[str(v)] for v in df[columns["label"]]]
        return out

    def build_model(self, path: str, cfg: ExperimentConfig, labels: list[str] | None) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        labels = labels or ["0", "1"]
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)}, dtype=torch.float32,
        )

    def eval_batch(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        labels = batch["labels"]
        logits = model(**{k: v for k, v in batch.items() if k not in ("labels", "index")}).logits.float()
        loss = F.cross_entropy(logits, labels, reduction="sum").item()
        return {"loss_sum": loss, "index": batch["index"].tolist(), "pred": logits.argmax(-1).tolist(),
                "label": labels.tolist()}

    def finish_eval(self, parts: list[dict[str, Any]]) -> dict[str, float]:
        from sklearn.metrics import f1_score  # at the first evaluation, not in every worker's start-up

        seen: dict[int, tuple[int, int]] = {}
        loss_sum = 0.0
        for p in parts:
            loss_sum += p["loss_sum"]
            for i, pr, lb in zip(p["index"], p["pred"], p["label"]):
                seen[i] = (pr, lb)  # padded duplicates from the distributed sampler collapse here
        n_rows = sum(len(p["index"]) for p in parts)
        preds, golds = (np.array(x) for x in zip(*seen.values())) if seen else (np.array([]), np.array([]))
        return {
            "loss": loss_sum / max(n_rows, 1),
            "accuracy": float((preds == golds).mean()) if len(golds) else 0.0,
            "f1_macro": float(f1_score(golds, preds, average="macro")) if len(golds) else 0.0,
        }


def predict_proba(model: torch.nn.Module, tokenizer: Any, texts: list[str], max_length: int) -> torch.Tensor:
    """Class probabilities for raw texts, with the model as given (what tests and benchmarks compare served answers
    with; the server itself classifies through :mod:`rayft.serve.infer`)."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.float().softmax(-1)


TASK = register_task(SequenceClassification())
