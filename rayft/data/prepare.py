"""Data stage entry point: source → splits → tokenized columns, done once per run or sweep."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from rayft.config.schema import DataConfig, ExperimentConfig
from rayft.data.catalog import DATASETS
from rayft.data.sources import WHOLE, SourceData, is_catalog, open_source
from rayft.data.splits import given_splits, make_splits
from rayft.data.streaming import StreamedSplit
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
    # data.engine ray: the splits are StreamedSplit handles and these Ray Datasets (split -> dataset) go to the
    # trainer; they stay on the driver (never pickled)
    datasets: dict[str, Any] = field(default_factory=dict, repr=False)

    def size(self, split: str) -> int:
        cols = self.splits.get(split) or {}
        if isinstance(cols, StreamedSplit):
            return cols.rows
        return len(next(iter(cols.values()))) if cols else 0

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (``ray.put`` for the workers) without the Ray Datasets: they reach workers as Ray Train's shards."""
        return {**self.__dict__, "datasets": {}}


def catalog_columns(source: str | None) -> dict[str, str]:
    return dict(DATASETS.get(source).columns) if source and is_catalog(source) else {}


def load_data(data: DataConfig, nrows: int | None = None) -> SourceData:
    """The configured source (or split files), as :func:`rayft.data.sources.open_source` reads it.

    Raises:
        DataError: for a missing, empty or unreadable source, a split it lacks, or splits whose columns differ.
    """
    return open_source(data.source, data.format, data.named_splits(), data.hub_config, nrows)


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
    if cfg.tasks:  # several tasks, each prepared by its own
        from rayft.tasks.multitask import prepare_multitask

        return prepare_multitask(cfg, model_path)
    if cfg.data.engine == "ray":
        from rayft.data.streaming import prepare_streaming

        return prepare_streaming(cfg, model_path)
    source = load_data(cfg.data)
    columns = resolve_columns(task, cfg, catalog_columns(cfg.data.source), source.columns)
    missing = [c for c in columns.values() if c not in source.columns]
    if missing:
        raise DataError(f"{_field(cfg.data)} {source.name!r}: column(s) {missing} not found; "
                        f"the data has: {', '.join(source.columns)}", field=_field(cfg.data), value=source.name)
    frames = {name: df.dropna(subset=list(columns.values())) for name, df in source.frames.items()}
    empty = [name for name, df in frames.items() if df.empty]
    if empty:
        raise DataError(f"{_field(cfg.data)} {source.name!r}: no rows with all of {list(columns.values())} "
                        f"in {', '.join(empty)}", field=_field(cfg.data), value=source.name)
    everything = pd.concat(frames.values(), ignore_index=True) if source.given else frames[WHOLE]
    labels = task.labels(cfg, everything, columns)
    check_labels(everything, columns, labels)
    stratify = columns.get("label") if task.stratify else None
    splits = (given_splits(frames, cfg.data, stratify) if source.given
              else make_splits(frames[WHOLE], cfg.data, stratify))
    tokenizer = load_tokenizer(model_path)
    tokenized = {name: task.tokenize(part, tokenizer, cfg, columns, labels)
                 for name, part in vars(splits).items() if len(part)}
    if cfg.train.continual_from:  # the stored result to continue from, checked before any training
        from rayft.train.continual_checks import require_entry

        require_entry(cfg)
    if cfg.train.curriculum is not None:  # by: column carries its numbers through tokenizing
        from rayft.data.curriculum import attach_column

        attach_column(cfg, vars(splits), tokenized)
    lengths = [len(x) for x in tokenized["train"]["input_ids"]]
    return PreparedData(
        model_path=model_path, labels=labels, columns=columns, splits=tokenized, raw_sizes=splits.sizes(),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        seconds=time.perf_counter() - start,
        stats={"mean_train_tokens": sum(lengths) / max(len(lengths), 1), "max_train_tokens": max(lengths, default=0),
               "lengths": length_report(splits.sizes(), tokenized, cfg.model.max_length)},
    )


def length_report(rows: dict[str, int], tokenized: dict[str, dict[str, list[Any]]],
                  max_length: int) -> dict[str, dict[str, int]]:
    """Per split: its rows, those kept after tokenizing, those dropped (nothing left to learn once cut to
    ``max_length``, e.g. a prompt that fills it) and those that reached ``max_length`` (cut, or an exact fit).

    Every sequence column of a row counts (a preference pair is at the limit when either response is).
    """
    report = {}
    for name, columns in tokenized.items():
        sequences = [v for k, v in columns.items() if k.endswith("input_ids")]
        kept = len(sequences[0]) if sequences else 0
        at_limit = sum(any(len(s[i]) >= max_length for s in sequences) for i in range(kept))
        report[name] = {"rows": rows.get(name, kept), "kept": kept, "dropped": max(rows.get(name, kept) - kept, 0),
                        "at_max_length": at_limit}
    return report


def describe_lengths(report: dict[str, dict[str, int]], max_length: int | None) -> str:
    """One line for the console: how many rows of each split were cut at, or dropped for, ``max_length`` (None:
    the report's names say their own limits, as a multi-task run's do)."""
    parts = [f"{name} {r['at_max_length']}/{r['kept']} at the limit, {r['dropped']} dropped"
             for name, r in report.items()]
    return (f"max_length {max_length}: " if max_length else "") + "; ".join(parts)


def check_labels(df: pd.DataFrame, columns: dict[str, str], labels: list[str] | None) -> None:
    """Every value of the label column (if the task has one) is one of ``labels``.

    Raises:
        DataError: naming the values that are not.
    """
    if labels is not None and "label" in columns:
        unknown = sorted({str(v) for v in df[columns["label"]]} - set(labels))
        if unknown:
            raise DataError(f"data: label values {unknown[:10]} are not in task.labels {labels}")


def _field(data: DataConfig) -> str:
    return "data.source" if data.source is not None else "data.splits"
