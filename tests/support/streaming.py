"""Parquet files of the tiny sentiment rows for the streaming tests, written in chunks so that a million rows never
sit in the test's own memory."""

from __future__ import annotations

from pathlib import Path

from tests.support import cls_config, tiny

CHUNK = 100_000


def write_parquet(path: Path, rows: int, chunk: int = CHUNK) -> Path:
    """``rows`` learnable sentiment rows (columns ``review``, ``sentiment``) as one parquet file at ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for start in range(0, rows, chunk):
            table = pa.Table.from_pylist(tiny.sentiment_rows(min(chunk, rows - start), seed=start))
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    return path


def stream_config(model: Path, source: str | Path | None, tmp: Path, **sections) -> dict:
    """:func:`tests.support.cls_config` streaming ``source`` (``data.engine: ray``, held-out fractions, the labels
    listed, as the engine needs)."""
    data, task = sections.pop("data", {}), sections.pop("task", {})
    raw = cls_config(model, Path(str(source)), tmp, **sections)
    base = {k: v for k, v in raw["data"].items() if k not in ("validation_size", "test_size")}
    raw["data"] = {**base, "engine": "ray", "validation_size": 0.1, "test_size": 0.05, **data}
    raw["task"] = {"name": "sequence_classification", "labels": ["neg", "pos"], **task}
    if source is None:
        raw["data"].pop("source")
    return raw
