"""Data stage entry point: source → splits → tokenized columns, done once per run or sweep."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rayft.config.schema import ExperimentConfig
from rayft.data.catalog import DATASETS
from rayft.data.sources import is_catalog, load_source
from rayft.data.splits import make_splits
from rayft.errors import DataError


@dataclass
class PreparedData:
    """Tokenized splits plus what later stages need to know about them."""

    model_path: str
    labels: list[str] | None
    columns: dict[str, str]
    splits: dict[str, dict[str, list[Any]]]  # split -> column -> rows (unpadded)
    raw_sizes: dict[str, int]
    pad_id: int
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    def size(self, split: str) -> int:
        cols = self.splits.get(split) or {}
        return len(next(iter(cols.values()))) if cols else 0


def catalog_columns(source: str) -> dict[str, str]:
    return dict(DATASETS.get(source).columns) if is_catalog(source) else {}


def prepare_data(cfg: ExperimentConfig, model_path: str | None = None) -> PreparedData:
    """Load, split and tokenize the experiment's data with the base model's tokenizer.

    Raises:
        DataError: for missing/empty data, missing columns, or labels outside ``task.labels``.
    """
    from rayft.models import load_tokenizer, resolve_model
    from rayft.tasks import get_task, resolve_columns

    start = time.perf_counter()
    task = get_task(cfg.task.name)
    model_path = model_path or resolve_model(cfg.model.name)
    df = load_source(cfg.data.source, cfg.data.format)
    columns = resolve_columns(task, cfg, catalog_columns(cfg.data.source), [str(c) for c in df.columns])
    missing = [c for c in columns.values() if c not in df.columns]
    if missing:
        raise DataError(f"data.source {cfg.data.source!r}: column(s) {missing} not found; "
                        f"the file has: {', '.join(map(str, df.columns))}")
    df = df.dropna(subset=list(columns.values()))
    if df.empty:
        raise DataError(f"data.source {cfg.data.source!r}: no rows with all of {list(columns.values())}")
    labels = task.labels(cfg, df, columns)
    if labels is not None and "label" in columns:
        unknown = sorted({str(v) for v in df[columns["label"]]} - set(labels))
        if unknown:
            raise DataError(f"data: label values {unknown[:10]} are not in task.labels {labels}")
    splits = make_splits(df, cfg.data, columns.get("label") if task.stratify else None)
    tokenizer = load_tokenizer(model_path)
    tokenized = {name: task.tokenize(part, tokenizer, cfg, columns, labels)
                 for name, part in vars(splits).items() if len(part)}
    lengths = [len(x) for x in tokenized["train"]["input_ids"]]
    return PreparedData(
        model_path=model_path, labels=labels, columns=columns, splits=tokenized, raw_sizes=splits.sizes(),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        seconds=time.perf_counter() - start,
        stats={"mean_train_tokens": sum(lengths) / max(len(lengths), 1), "max_train_tokens": max(lengths, default=0)},
    )
