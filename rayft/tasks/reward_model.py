"""Reward modelling: a scalar head scored on preference pairs with the pairwise ranking loss
``-log sigmoid(r(chosen) - r(rejected))`` (Bradley-Terry). Metrics: loss, pair accuracy, mean margin."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from rayft.config.schema import ExperimentConfig
from rayft.data.collate import REJECTED, pad_pairs
from rayft.tasks.base import Task, TaskParams, register_task


class RewardModel(Task):
    name = "reward_model"
    peft_task_type = "SEQ_CLS"
    metrics = ("loss", "accuracy", "margin")
    default_metric = "eval_accuracy"
    default_mode = "max"
    stratify = False
    roles = {"chosen": "chosen_column", "rejected": "rejected_column"}
    optional_roles = {"prompt": "prompt_column"}
    default_columns = {"chosen": "chosen", "rejected": "rejected", "prompt": "prompt"}

    def tokenize(self, df: pd.DataFrame, tokenizer: Any, cfg: ExperimentConfig, columns: dict[str, str],
                 labels: list[str] | None) -> dict[str, list[Any]]:
        prompts = df[columns["prompt"]].astype(str).tolist() if "prompt" in columns else None
        out: dict[str, list[Any]] = {}
        for side, prefix in (("chosen", ""), ("rejected", REJECTED)):
            texts = df[columns[side]].astype(str).tolist()
            enc = (tokenizer(prompts, texts, truncation=True, max_length=cfg.model.max_length) if prompts
                   else tokenizer(texts, truncation=True, max_length=cfg.model.max_length))
            for key in ("input_ids", "token_type_ids"):
                if key in enc:
                    out[prefix + key] = [list(x) for x in enc[key]]
        return out

    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
        return pad_pairs(features, pad_id)

    def build_model(self, path: str, cfg: ExperimentConfig, labels: list[str] | None) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        from rayft.models import load_tokenizer

        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
        if model.config.pad_token_id is None:  # decoders score the last non-pad token: they need a pad id
            model.config.pad_token_id = load_tokenizer(path).pad_token_id
        return model

    @staticmethod
    def rewards(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Scalar rewards of the chosen and the rejected side of each pair."""
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        scores = model(**inputs).logits.squeeze(-1).float()
        n = len(batch["index"])
        return scores[:n], scores[n:]

    def compute_loss(self, model: Any, batch: dict[str, torch.Tensor], params: TaskParams) -> torch.Tensor:
        chosen, rejected = self.rewards(model, batch)
        return -F.logsigmoid(chosen - rejected).mean()

    def eval_batch(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        chosen, rejected = self.rewards(model, batch)
        margin = chosen - rejected
        return {"index": batch["index"].tolist(), "loss": (-F.logsigmoid(margin)).tolist(), "margin": margin.tolist()}

    def finish_eval(self, parts: list[dict[str, Any]]) -> dict[str, float]:
        seen = {i: (loss, m) for p in parts for i, loss, m in zip(p["index"], p["loss"], p["margin"])}
        n = max(len(seen), 1)
        return {"loss": sum(v[0] for v in seen.values()) / n,
                "accuracy": sum(v[1] > 0 for v in seen.values()) / n,
                "margin": sum(v[1] for v in seen.values()) / n}


def score(model: torch.nn.Module, tokenizer: Any, texts: list[str], prompts: list[str] | None = None,
          max_length: int = 512) -> list[float]:
    """Rewards for raw texts (optionally after their prompts)."""
    enc = (tokenizer(prompts, texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
           if prompts else tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"))
    with torch.no_grad():
        return model(**enc).logits.squeeze(-1).float().tolist()


TASK = register_task(RewardModel())
