"""Token classification (NER): a tag per word, learned on the first subword of each word.

Words arrive pre-split (a ``tokens`` list and a ``tags`` list per row, as CoNLL files and the ``wnut16``
catalog set have them). Each word's tag goes on its first subword; later subwords and special tokens get
``IGNORE_INDEX`` so they count neither in the loss nor in the metrics. Metrics: entity-level precision,
recall and F1 (seqeval, exact span match) and token accuracy.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

from rayft.config.schema import ExperimentConfig
from rayft.data.collate import IGNORE_INDEX
from rayft.errors import DataError
from rayft.tasks.base import Task, TaskParams, register_task, task_params

VIRTUAL_TOKEN_REASON = ("its virtual tokens are prepended to the input and shift every token position, so the "
                        "per-token head no longer lines up with the words")


class TokenClassificationParams(TaskParams):
    label_all_subwords: bool = False  # train every subword on its word's tag (I- for non-first pieces of B-)


def as_list(value: Any) -> list[str]:
    """A row's tokens or tags as a list of strings (lists, tuples, arrays or a space-separated string)."""
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in list(value)]


def order_tags(tags: set[str]) -> list[str]:
    """Tag names in id order: ``O`` first, then entity types with their B- before I- tags."""
    rest = sorted(tags - {"O"}, key=lambda t: (t[2:] if t[:2] in ("B-", "I-") else t, t))
    return (["O"] if "O" in tags else []) + rest


def align_labels(word_ids: list[int | None], word_tags: list[int], inside: dict[int, int] | None) -> list[int]:
    """Per-subword label ids from per-word tag ids.

    ``inside`` maps a B- tag id to its I- tag id; when given, non-first subwords are labelled (with the I-
    tag after a B-), otherwise they are ignored.
    """
    out, previous = [], None
    for word in word_ids:
        if word is None:
            out.append(IGNORE_INDEX)
        elif word != previous:
            out.append(word_tags[word])
        else:
            out.append(IGNORE_INDEX if inside is None else inside.get(word_tags[word], word_tags[word]))
        previous = word
    return out


class TokenClassification(Task):
    name = "token_classification"
    peft_task_type = "TOKEN_CLS"
    metrics = ("loss", "f1", "precision", "recall", "accuracy")
    default_metric = "eval_f1"
    default_mode = "max"
    stratify = False
    roles = {"tokens": "tokens_column", "tags": "tags_column"}
    default_columns = {"tokens": "tokens", "tags": "tags"}
    params = TokenClassificationParams
    unsupported_methods = {m: VIRTUAL_TOKEN_REASON for m in ("prompt", "prefix", "ptuning")}

    def labels(self, cfg: ExperimentConfig, df: pd.DataFrame, columns: dict[str, str]) -> list[str]:
        found = {t for row in df[columns["tags"]] for t in as_list(row)}
        if not cfg.task.labels:
            return order_tags(found)
        unknown = sorted(found - set(cfg.task.labels))
        if unknown:
            raise DataError(f"data: tags {unknown[:10]} are not in task.labels {list(cfg.task.labels)}")
        return list(cfg.task.labels)

    def tokenize(self, df: pd.DataFrame, tokenizer: Any, cfg: ExperimentConfig, columns: dict[str, str],
                 labels: list[str] | None) -> dict[str, list[Any]]:
        if not getattr(tokenizer, "is_fast", False):
            raise DataError(f"task {self.name!r} needs a fast tokenizer (word alignment); {type(tokenizer).__name__} "
                            "is not one")
        ids = {name: i for i, name in enumerate(labels or [])}
        inside = None
        if task_params(self, cfg).label_all_subwords:
            inside = {i: ids.get("I-" + name[2:], i) for name, i in ids.items() if name.startswith("B-")}
        out: dict[str, list[Any]] = {"input_ids": [], "labels": []}
        for words, tags in zip(df[columns["tokens"]], df[columns["tags"]]):
            words, tags = as_list(words), as_list(tags)
            if len(words) != len(tags):
                raise DataError(f"data: a row has {len(words)} tokens but {len(tags)} tags; expected one tag per token")
            enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=cfg.model.max_length)
            out["input_ids"].append(list(enc["input_ids"]))
            out["labels"].append(align_labels(enc.word_ids(), [ids[t] for t in tags], inside))
            if "token_type_ids" in enc:
                out.setdefault("token_type_ids", []).append(list(enc["token_type_ids"]))
        return out

    def build_model(self, path: str, cfg: ExperimentConfig, labels: list[str] | None) -> torch.nn.Module:
        from transformers import AutoModelForTokenClassification

        labels = labels or ["O"]
        return AutoModelForTokenClassification.from_pretrained(
            path, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)}, dtype=torch.float32,
        )

    def eval_batch(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        labels = batch["labels"]
        logits = model(**{k: v for k, v in batch.items() if k not in ("labels", "index")}).logits.float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                               reduction="sum").item()
        preds = logits.argmax(-1)
        keep = labels != IGNORE_INDEX
        names = id2label(model)
        return {"loss_sum": loss, "tokens": int(keep.sum()), "index": batch["index"].tolist(),
                "pred": [[names[t] for t in p[k].tolist()] for p, k in zip(preds, keep)],
                "gold": [[names[t] for t in g[k].tolist()] for g, k in zip(labels, keep)]}

    def finish_eval(self, parts: list[dict[str, Any]]) -> dict[str, float]:
        from seqeval.metrics import f1_score, precision_score, recall_score

        seen: dict[int, tuple[list[str], list[str]]] = {}
        loss_sum, tokens = 0.0, 0
        for p in parts:
            loss_sum, tokens = loss_sum + p["loss_sum"], tokens + p["tokens"]
            for i, pr, gd in zip(p["index"], p["pred"], p["gold"]):
                seen[i] = (pr, gd)  # padded duplicates from the distributed sampler collapse here
        pred = [pr for pr, _ in seen.values()]
        gold = [gd for _, gd in seen.values()]
        flat = [(a == b) for pr, gd in zip(pred, gold) for a, b in zip(pr, gd)]
        return {
            "loss": loss_sum / max(tokens, 1),
            "f1": float(f1_score(gold, pred, zero_division=0)),
            "precision": float(precision_score(gold, pred, zero_division=0)),
            "recall": float(recall_score(gold, pred, zero_division=0)),
            "accuracy": sum(flat) / max(len(flat), 1),
        }


def id2label(model: Any) -> dict[int, str]:
    """The id → tag map of a model, a peft wrapper or a DeepSpeed engine around either."""
    config = getattr(getattr(model, "module", model), "config")
    return {int(k): v for k, v in config.id2label.items()}


def predict_tags(model: torch.nn.Module, tokenizer: Any, words: list[str], max_length: int) -> list[str]:
    """Tag names for one pre-split sentence (the first subword's prediction for each word)."""
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        pred = model(**enc).logits[0].argmax(-1).tolist()
    names = id2label(model)
    tags, previous = ["O"] * len(words), None
    for pos, word in enumerate(enc.word_ids()):
        if word is not None and word != previous:
            tags[word] = names[pred[pos]]
        previous = word
    return tags


TASK = register_task(TokenClassification())
