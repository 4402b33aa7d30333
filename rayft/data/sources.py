"""Read a data source (catalog name or local file) into a DataFrame."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rayft.data.catalog import DATASETS
from rayft.data.formats import read_conll, read_json_document
from rayft.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
           ".conll": "conll"}


def detect_format(path: Path, fmt: str = "auto") -> str:
    """The file format of ``path`` (``fmt`` wins unless it is ``auto``).

    Raises:
        DataError: if the suffix is not a known format.
    """
    if fmt != "auto":
        return fmt
    suffixes = [s for s in path.suffixes if s not in {".gz", ".bz2", ".zst", ".xz"}]
    found = FORMATS.get(suffixes[-1].lower()) if suffixes else None
    if found is None:
        raise DataError(f"data.source {str(path)!r}: cannot tell the format from the suffix; "
                        f"expected one of {', '.join(sorted(FORMATS))} or set data.format")
    return found


def read_file(path: str | Path, fmt: str = "auto", nrows: int | None = None) -> pd.DataFrame:
    """Read a local csv/jsonl/json (incl. SQuAD nesting)/parquet/conll file.

    Raises:
        DataError: if the file is missing, empty or unreadable.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data.source {str(p)!r}: file not found")
    if p.stat().st_size == 0:
        raise DataError(f"data.source {str(p)!r}: file is empty")
    kind = detect_format(p, fmt)
    try:
        if kind == "csv":
            df = pd.read_csv(p, sep="\t" if ".tsv" in p.suffixes else ",", nrows=nrows)
        elif kind == "jsonl":
            df = pd.read_json(p, lines=True, nrows=nrows)
        elif kind == "json":
            df = read_json_document(p)
        elif kind == "conll":
            df = read_conll(p)
        else:
            df = pd.read_parquet(p)
    except (ValueError, OSError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"data.source {str(p)!r}: cannot read as {kind}: {exc}") from None
    if df.empty:
        raise DataError(f"data.source {str(p)!r}: no rows")
    return df


def is_catalog(source: str) -> bool:
    return source in DATASETS


def load_source(source: str, fmt: str = "auto") -> pd.DataFrame:
    """Load a catalog dataset by name or a local file by path.

    Raises:
        DataError: for a missing, empty or unreadable source.
    """
    if is_catalog(source):
        return DATASETS.get(source).load()
    return read_file(source, fmt)


def source_columns(source: str, fmt: str = "auto") -> list[str]:
    """Column names of a source, reading as little as possible.

    Raises:
        DataError: for a missing, empty or unreadable source.
    """
    if is_catalog(source):
        return list(DATASETS.get(source).load().columns)
    p = Path(source)
    small = read_file(p, fmt, nrows=5) if detect_format(p, fmt) in {"csv", "jsonl"} else read_file(p, fmt)
    return [str(c) for c in small.columns]
