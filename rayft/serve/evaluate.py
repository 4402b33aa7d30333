"""Score every served classification model on held-out data over HTTP and rank them (what ``rayft eval`` runs).

Everything goes through the public API (``/v1/models``, ``/v1/classify``), so the figures are the ones users of
the endpoint get: the served adapters, batching and all. Free of Ray.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from rayft.errors import RayftError
from rayft.serve.client import Client, ServeClientError


@dataclass
class Heldout:
    texts: list[str]
    labels: list[str]
    source: str


@dataclass
class Score:
    """One model's result on the held-out data (``error`` set when it could not be scored)."""

    model: str
    kind: str = ""
    base_model: str = ""
    n: int = 0
    accuracy: float | None = None
    macro_f1: float | None = None
    seconds: float = 0.0
    error: str | None = None
    aliases: list[str] = field(default_factory=list)


def load_heldout(path: str, text_column: str, label_column: str, limit: int | None = None) -> Heldout:
    """Texts and gold labels from a csv / jsonl / parquet file.

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
    return Heldout([str(t) for t in df[text_column]], [str(v) for v in df[label_column]], str(path))


def _macro_f1(gold: list[str], pred: list[str]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(gold, pred, average="macro", labels=sorted(set(gold)), zero_division=0))


def score_model(client: Client, card: dict[str, Any], data: Heldout, batch_size: int = 32) -> Score:
    """Classify the held-out texts with one served model and compare with the gold labels."""
    score = Score(card["id"], card.get("kind", ""), card.get("base_model", ""))
    unknown = sorted(set(data.labels) - set(card.get("labels") or []))
    if card.get("labels") and unknown:
        score.error = f"the data has labels the model does not know: {', '.join(unknown[:5])}"
        return score
    start, preds = time.perf_counter(), []
    try:
        for i in range(0, len(data.texts), batch_size):
            preds += [row["label"] for row in client.classify(card["id"], data.texts[i:i + batch_size])["data"]]
    except ServeClientError as exc:
        score.error = exc.message
        return score
    score.seconds = time.perf_counter() - start
    score.n = len(preds)
    score.accuracy = sum(p == g for p, g in zip(preds, data.labels)) / len(preds)
    score.macro_f1 = _macro_f1(data.labels, preds)
    return score


def evaluate_endpoint(client: Client, data: Heldout, models: list[str] | None = None, batch_size: int = 32,
                      progress: Callable[[Score], None] | None = None) -> list[Score]:
    """Score the served classification models (or ``models``), best accuracy first; failures last.

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
        chosen = [c for c in cards if c.get("task") == "sequence_classification" and not c.get("alias_of")]
    if not chosen:
        raise RayftError(f"{client.base_url} serves no classification model to evaluate")
    scores = []
    for card in chosen:
        score = score_model(client, card, data, batch_size)
        score.aliases = sorted(aliases.get(card["id"], []))
        scores.append(score)
        if progress:
            progress(score)
    return sorted(scores, key=lambda s: (s.accuracy is None, -(s.accuracy or 0.0), -(s.macro_f1 or 0.0), s.model))


def ranking_table(scores: list[Score], data: Heldout) -> Any:
    """A rich table of the ranking."""
    from rich.table import Table

    table = Table(title=f"held-out ranking on {data.source} ({len(data.texts)} rows)")
    for col in ["rank", "model", "kind", "aliases", "accuracy", "macro_f1", "seconds", "note"]:
        table.add_column(col, justify="right" if col in ("rank", "accuracy", "macro_f1", "seconds") else "left")
    for rank, s in enumerate(scores, 1):
        table.add_row(str(rank) if s.accuracy is not None else "-", s.model, s.kind, ", ".join(s.aliases),
                      "" if s.accuracy is None else f"{s.accuracy:.4f}",
                      "" if s.macro_f1 is None else f"{s.macro_f1:.4f}", f"{s.seconds:.2f}", s.error or "")
    return table


def write_ranking(path: str, scores: list[Score], data: Heldout, endpoint: str) -> None:
    """The ranking as JSON (``rayft promote --ranking`` reads it); written atomically."""
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    payload = {"endpoint": endpoint, "data": data.source, "rows": len(data.texts),
               "winner": next((s.model for s in scores if s.accuracy is not None), None),
               "ranking": [asdict(s) for s in scores]}
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(out)
