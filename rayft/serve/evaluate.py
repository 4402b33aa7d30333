"""Score every served model on held-out data over HTTP and rank them (what ``rayft eval`` runs).

Classification models are scored through ``/v1/classify`` (accuracy, macro F1), instruction-tuned (``sft``) models
through ``/v1/chat/completions`` at temperature 0 (exact match and token F1 against the reference answers). Everything
goes through the public API, so the figures are the ones users of the endpoint get. Free of Ray.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from rayft.errors import RayftError
from rayft.serve.client import Client, ServeClientError
from rayft.serve.defaults import CHAT_MAX_TOKENS, EVAL_BATCH_SIZE, EVAL_CONCURRENCY


TASK_METRICS = {"sequence_classification": ("accuracy", "macro_f1"), "sft": ("exact_match", "token_f1")}


@dataclass
class Heldout:
    """Inputs and their gold answers: texts and labels, or prompts and reference responses (``task="sft"``)."""

    texts: list[str]
    labels: list[str]
    source: str
    task: str = "sequence_classification"


@dataclass
class Score:
    """One model's result on the held-out data (``error`` set when it could not be scored)."""

    model: str
    kind: str = ""
    base_model: str = ""
    n: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    aliases: list[str] = field(default_factory=list)

    @property
    def main(self) -> float | None:
        """The ranking metric (accuracy, or exact match for ``sft``), None if not scored."""
        return next(iter(self.metrics.values()), None)


def load_heldout(path: str, text_column: str, label_column: str, limit: int | None = None,
                 task: str = "sequence_classification") -> Heldout:
    """Texts and gold labels (or prompts and responses) from a csv / jsonl / parquet file.

    Raises:
        RayftError: if the file is missing or lacks a column (naming the ones it has).
    """
    from rayft.data.sources import read_file

    if not Path(path).is_file():
        raise RayftError(f"--data {path!r}: no such file")
    df = read_file(path)
    missing = [c for c in (text_column, label_column) if c not in df.columns]
    if missing:
        raise RayftError(f"--data {path}: no column {', '.join(map(repr, missing))}; columns: "
                         f"{', '.join(map(str, df.columns))} (set --text-column / --label-column)")
    df = df[[text_column, label_column]].dropna()
    if limit:
        df = df.head(limit)
    if df.empty:
        raise RayftError(f"--data {path}: no rows with both {text_column!r} and {label_column!r}")
    return Heldout([str(t) for t in df[text_column]], [str(v) for v in df[label_column]], str(path), task)


def _macro_f1(gold: list[str], pred: list[str]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(gold, pred, average="macro", labels=sorted(set(gold)), zero_division=0))


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _token_f1(pred: str, gold: str) -> float:
    p, g = _words(pred), _words(gold)
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g or not common:
        return float(p == g)
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def _answers(client: Client, card: dict[str, Any], data: Heldout, batch_size: int, max_tokens: int) -> list[str]:
    if data.task == "sft":  # EVAL_CONCURRENCY prompts in flight at once: the server decodes them as one batch
        def reply(prompt: str) -> str:
            out = client.chat(card["id"], [{"role": "user", "content": prompt}], max_tokens=max_tokens,
                              temperature=0.0)
            return out["choices"][0]["message"]["content"]

        with ThreadPoolExecutor(EVAL_CONCURRENCY, thread_name_prefix="rayft-eval") as pool:
            return list(pool.map(reply, data.texts))
    preds: list[str] = []
    for i in range(0, len(data.texts), batch_size):
        preds += [row["label"] for row in client.classify(card["id"], data.texts[i:i + batch_size])["data"]]
    return preds


def score_model(client: Client, card: dict[str, Any], data: Heldout, batch_size: int = EVAL_BATCH_SIZE,
                max_tokens: int = CHAT_MAX_TOKENS) -> Score:
    """Answer the held-out inputs with one served model and compare with the gold answers."""
    score = Score(card["id"], card.get("kind", ""), card.get("base_model", ""))
    unknown = sorted(set(data.labels) - set(card.get("labels") or []))
    if data.task != "sft" and card.get("labels") and unknown:
        score.error = f"the data has labels the model does not know: {', '.join(unknown[:5])}"
        return score
    start = time.perf_counter()
    try:
        preds = _answers(client, card, data, batch_size, max_tokens)
    except ServeClientError as exc:
        score.error = exc.message
        return score
    score.seconds, score.n = time.perf_counter() - start, len(preds)
    if data.task == "sft":
        score.metrics = {"exact_match": sum(_words(p) == _words(g) for p, g in zip(preds, data.labels)) / len(preds),
                         "token_f1": sum(map(_token_f1, preds, data.labels)) / len(preds)}
    else:
        score.metrics = {"accuracy": sum(p == g for p, g in zip(preds, data.labels)) / len(preds),
                         "macro_f1": _macro_f1(data.labels, preds)}
    return score


def evaluate_endpoint(client: Client, data: Heldout, models: list[str] | None = None,
                      batch_size: int = EVAL_BATCH_SIZE, progress: Callable[[Score], None] | None = None,
                      max_tokens: int = CHAT_MAX_TOKENS) -> list[Score]:
    """Score the served models of the data's task (or ``models``), best first; failures last.

    Raises:
        RayftError: if a named model is not served, or nothing can be scored.
    """
    cards = client.models()
    by_id = {c["id"]: c for c in cards}
    aliases: dict[str, list[str]] = {}
    for c in cards:
        if c.get("alias_of"):
            aliases.setdefault(c["alias_of"], []).append(c["id"])
    if models:
        unknown = [m for m in models if m not in by_id]
        if unknown:
            raise RayftError(f"--models: not served: {', '.join(unknown)}; served: {', '.join(by_id)}")
        chosen = [by_id[m] for m in models]
    else:
        chosen = [c for c in cards if c.get("task") == data.task and not c.get("alias_of")]
    if not chosen:
        raise RayftError(f"{client.base_url} serves no {data.task!r} model to evaluate")
    scores = []
    for card in chosen:
        score = score_model(client, card, data, batch_size, max_tokens)
        score.aliases = sorted(aliases.get(card["id"], []))
        scores.append(score)
        if progress:
            progress(score)
    return sorted(scores, key=lambda s: (s.main is None, [-v for v in s.metrics.values()], s.model))


def ranking_table(scores: list[Score], data: Heldout) -> Any:
    """A rich table of the ranking."""
    from rich.table import Table

    names = TASK_METRICS[data.task] if data.task in TASK_METRICS else ()
    table = Table(title=f"held-out ranking on {data.source} ({len(data.texts)} rows)")
    for col in ["rank", "model", "kind", "aliases", *names, "seconds", "note"]:
        table.add_column(col, justify="right" if col in ("rank", "seconds", *names) else "left")
    for rank, s in enumerate(scores, 1):
        values = ["" if s.metrics.get(m) is None else f"{s.metrics[m]:.4f}" for m in names]
        table.add_row(str(rank) if s.main is not None else "-", s.model, s.kind, ", ".join(s.aliases), *values,
                      f"{s.seconds:.2f}", s.error or "")
    return table


def write_ranking(path: str, scores: list[Score], data: Heldout, endpoint: str) -> None:
    """The ranking as JSON (``rayft promote --ranking`` reads it); written atomically."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    payload = {"endpoint": endpoint, "data": data.source, "rows": len(data.texts),
               "task": data.task, "winner": next((s.model for s in scores if s.main is not None), None),
               "ranking": [asdict(s) for s in scores]}
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out)
