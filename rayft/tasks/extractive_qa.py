"""Extractive question answering (SQuAD-style): start/end heads over the context tokens.

Rows hold ``context``, ``question`` and ``answers`` (``{"text": [...], "answer_start": [...]}`` as SQuAD JSON
and HF ``datasets`` have them, a list of such dicts, or a plain answer string found in the context). Long
contexts are cut into overlapping windows (``doc_stride``); a window without the answer points at position 0.
Metrics: SQuAD exact match and token F1 (best span over all windows of an example, best over gold answers).
"""

from __future__ import annotations

import collections
import re
import string
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field

from rayft.config.schema import ExperimentConfig
from rayft.data.collate import pad_batch
from rayft.errors import DataError
from rayft.tasks.base import Task, TaskParams, register_task, task_params
from rayft.tasks.token_classification import VIRTUAL_TOKEN_REASON

N_BEST = 20


class QAParams(TaskParams):
    doc_stride: int = Field(32, ge=1, description="tokens shared by consecutive windows of a long context")
    max_answer_tokens: int = Field(30, ge=1)


def gold_answers(value: Any, context: str) -> tuple[list[str], list[int]]:
    """Answer texts and character starts from the layouts users have (dict, list of dicts, or a string)."""
    if isinstance(value, dict):
        texts = [str(t) for t in list(value.get("text", []))]
        starts = [int(s) for s in list(value.get("answer_start", []))]
    elif isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
        texts = [str(a["text"]) for a in value]
        starts = [int(a.get("answer_start", context.find(str(a["text"])))) for a in value]
    elif isinstance(value, str):
        texts, starts = [value], [context.find(value)]
    else:
        texts, starts = [], []
    return texts, starts


def normalize(text: str) -> str:
    """SQuAD answer normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(pred: str, gold: str) -> float:
    p, g = normalize(pred).split(), normalize(gold).split()
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if not p or not g:
        return float(p == g)
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(pred: str, golds: list[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction against its gold answers (best over them)."""
    golds = golds or [""]
    return (max(float(normalize(pred) == normalize(g)) for g in golds), max(token_f1(pred, g) for g in golds))


class ExtractiveQA(Task):
    name = "extractive_qa"
    peft_task_type = "QUESTION_ANS"
    metrics = ("loss", "exact_match", "f1")
    default_metric = "eval_f1"
    default_mode = "max"
    stratify = False
    roles = {"context": "context_column", "question": "question_column", "answers": "answers_column"}
    default_columns = {"context": "context", "question": "question", "answers": "answers"}
    params = QAParams
    unsupported_methods = {m: VIRTUAL_TOKEN_REASON.replace("the per-token head no longer lines up",
                                                           "the start/end heads no longer line up")
                           for m in ("prompt", "prefix", "ptuning")}

    def tokenize(self, df: pd.DataFrame, tokenizer: Any, cfg: ExperimentConfig, columns: dict[str, str],
                 labels: list[str] | None) -> dict[str, list[Any]]:
        params = task_params(self, cfg)
        contexts = df[columns["context"]].astype(str).tolist()
        questions = df[columns["question"]].astype(str).str.strip().tolist()
        stride = self._stride(tokenizer, questions, cfg.model.max_length, params.doc_stride)
        enc = tokenizer(questions, contexts, truncation="only_second", max_length=cfg.model.max_length,
                        stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
        out: dict[str, list[Any]] = collections.defaultdict(list)
        answers = [gold_answers(v, c) for v, c in zip(df[columns["answers"]], contexts)]
        for f, example in enumerate(enc["overflow_to_sample_mapping"]):
            seq = enc.sequence_ids(f)
            offsets = [list(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][f], seq)]
            texts, starts = answers[example]
            start, end = self._positions(offsets, starts[0] if starts else -1, len(texts[0]) if texts else 0)
            out["input_ids"].append(list(enc["input_ids"][f]))
            if "token_type_ids" in enc:
                out["token_type_ids"].append(list(enc["token_type_ids"][f]))
            out["start_positions"].append(start)
            out["end_positions"].append(end)
            out["example"].append(int(example))
            out["offsets"].append(offsets)
            out["context"].append(contexts[example])
            out["answers"].append(texts)
            out["max_answer_tokens"].append(params.max_answer_tokens)
        if not out["input_ids"]:
            raise DataError("data: no question/context pair fits model.max_length; raise it")
        return dict(out)

    @staticmethod
    def _stride(tokenizer: Any, questions: list[str], max_length: int, doc_stride: int) -> int:
        """The window overlap: ``doc_stride`` capped below the room the longest question leaves for context.

        Raises:
            DataError: if a question leaves no room for any context within ``model.max_length``.
        """
        longest = max((len(tokenizer(q, add_special_tokens=False)["input_ids"]) for q in questions), default=0)
        room = max_length - longest - tokenizer.num_special_tokens_to_add(pair=True)
        if room < 2:
            raise DataError(f"model.max_length={max_length}: the longest question takes {longest} tokens and leaves "
                            "no room for its context; raise model.max_length or shorten the questions")
        return max(0, min(doc_stride, room // 2))

    @staticmethod
    def _positions(offsets: list[list[int] | None], start_char: int, length: int) -> tuple[int, int]:
        """Token positions of the answer span in this window, or (0, 0) when it is not fully inside."""
        if start_char < 0 or length == 0:
            return 0, 0
        end_char = start_char + length
        inside = [i for i, o in enumerate(offsets) if o is not None]
        if not inside or offsets[inside[0]][0] > start_char or offsets[inside[-1]][1] < end_char:
            return 0, 0
        start = next(i for i in inside if offsets[i][1] > start_char)
        end = next(i for i in reversed(inside) if offsets[i][0] < end_char)
        return start, max(start, end)

    def collate(self, features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
        model_keys = ("input_ids", "token_type_ids", "index")
        batch = pad_batch([{k: f[k] for k in model_keys if k in f} for f in features], pad_id)
        batch["start_positions"] = torch.as_tensor([f["start_positions"] for f in features], dtype=torch.long)
        batch["end_positions"] = torch.as_tensor([f["end_positions"] for f in features], dtype=torch.long)
        return batch

    def build_model(self, path: str, cfg: ExperimentConfig, labels: list[str] | None) -> torch.nn.Module:
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering.from_pretrained(path, dtype=torch.float32)

    def eval_batch(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        inputs = {k: v for k, v in batch.items() if k not in ("start_positions", "end_positions", "index")}
        out = model(**inputs)
        start_logits, end_logits = out.start_logits.float(), out.end_logits.float()
        start_logits = start_logits.masked_fill(batch["attention_mask"] == 0, -1e4)
        end_logits = end_logits.masked_fill(batch["attention_mask"] == 0, -1e4)
        loss = (F.cross_entropy(start_logits, batch["start_positions"], reduction="sum")
                + F.cross_entropy(end_logits, batch["end_positions"], reduction="sum")) / 2
        k = min(N_BEST, start_logits.size(-1))
        s_val, s_idx = start_logits.topk(k, dim=-1)
        e_val, e_idx = end_logits.topk(k, dim=-1)
        return {"loss_sum": loss.item(), "index": batch["index"].tolist(), "start": s_idx.tolist(),
                "start_score": s_val.tolist(), "end": e_idx.tolist(), "end_score": e_val.tolist()}

    def finish_eval(self, parts: list[dict[str, Any]]) -> dict[str, float]:
        """Loss only: exact match and F1 need the split's contexts (see :meth:`finish_eval_columns`)."""
        n_rows = sum(len(p["index"]) for p in parts)  # padded duplicates count in the sum and the count alike
        return {"loss": sum(p["loss_sum"] for p in parts) / max(n_rows, 1)}

    def finish_eval_columns(self, parts: list[dict[str, Any]], columns: dict[str, list[Any]]) -> dict[str, float]:
        """Loss, exact match and F1: the best span of each example over all its windows."""
        feats: dict[int, tuple] = {}
        for p in parts:
            for row in zip(p["index"], p["start"], p["start_score"], p["end"], p["end_score"]):
                feats[row[0]] = row[1:]  # padded duplicates from the distributed sampler collapse here
        best: dict[int, tuple[float, str]] = {}
        for f, candidates in feats.items():
            example = columns["example"][f]
            found = best_span(columns["offsets"][f], columns["context"][f], *candidates,
                              max_tokens=columns["max_answer_tokens"][f])
            if found and found[0] > best.get(example, (float("-inf"), ""))[0]:
                best[example] = found
        first = {columns["example"][f]: f for f in sorted(feats, reverse=True)}
        scores = [squad_scores(best.get(ex, (0.0, ""))[1], columns["answers"][f]) for ex, f in first.items()]
        return {"loss": self.finish_eval(parts)["loss"],
                "exact_match": sum(s[0] for s in scores) / max(len(scores), 1),
                "f1": sum(s[1] for s in scores) / max(len(scores), 1)}


def best_span(offsets: list[list[int] | None], context: str, starts: list[int], start_scores: list[float],
              ends: list[int], end_scores: list[float], max_tokens: int = 30) -> tuple[float, str] | None:
    """The highest-scoring valid (start, end) pair among the top candidates: both inside the context,
    in order, at most ``max_tokens`` long. Returns (score, answer text) or None."""
    best = None
    for s, ss in zip(starts, start_scores):
        for e, es in zip(ends, end_scores):
            if (s < len(offsets) and e < len(offsets) and offsets[s] is not None and offsets[e] is not None
                    and s <= e < s + max_tokens and (best is None or ss + es > best[0])):
                best = (ss + es, context[offsets[s][0]:offsets[e][1]])
    return best


def answer(model: torch.nn.Module, tokenizer: Any, question: str, context: str, max_length: int = 384,
           max_answer_tokens: int = 30) -> str:
    """The best answer span for one question (one window; used by serving and tests)."""
    enc = tokenizer(question, context, truncation="only_second", max_length=max_length,
                    return_offsets_mapping=True, return_tensors="pt")
    offsets = [o if s == 1 else None for o, s in zip(enc.pop("offset_mapping")[0].tolist(), enc.sequence_ids(0))]
    with torch.no_grad():
        out = model(**enc)
    k = min(N_BEST, len(offsets))
    (ss, si), (es, ei) = out.start_logits[0].topk(k), out.end_logits[0].topk(k)
    found = best_span(offsets, context, si.tolist(), ss.tolist(), ei.tolist(), es.tolist(), max_answer_tokens)
    return found[1] if found else ""


TASK = register_task(ExtractiveQA())
