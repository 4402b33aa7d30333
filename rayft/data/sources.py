"""Read a data source into DataFrames: a catalog name, a local file, split files (``data.splits``), a folder
written by ``datasets``' ``save_to_disk`` or a hub dataset (the last two through :mod:`rayft.data.hf`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from rayft.data import hf
from rayft.data.catalog import DATASETS
from rayft.data.formats import read_conll, read_json_document
from rayft.errors import DataError

ROLES = ("train", "validation", "test")
WHOLE = "all"  # the one frame of a source that rayft splits itself

FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
           ".conll": "conll"}


def detect_format(path: Path, fmt: str = "auto", field: str = "data.source") -> str:
    """The file format of ``path`` (``fmt`` wins unless it is ``auto``).

    Raises:
        DataError: if the suffix is not a known format.
    """
    if fmt != "auto":
        return fmt
    suffixes = [s for s in path.suffixes if s not in {".gz", ".bz2", ".zst", ".xz"}]
    found = FORMATS.get(suffixes[-1].lower()) if suffixes else None
    if found is None:
        raise DataError(f"{field} {str(path)!r}: cannot tell the format from the suffix; "
                        f"expected one of {', '.join(sorted(FORMATS))} or set data.format",
                        field=field, value=str(path))
    return found


def read_file(path: str | Path, fmt: str = "auto", nrows: int | None = None,
              field: str = "data.source") -> pd.DataFrame:
    """Read a local csv/jsonl/json (incl. SQuAD nesting)/parquet/conll file; ``field`` names it in errors.

    Raises:
        DataError: if the file is missing, empty or unreadable.
    """
    p = Path(path)

    def fail(why: str) -> DataError:
        return DataError(f"{field} {str(p)!r}: {why}", field=field, value=str(p))

    if p.is_dir():
        raise fail(f"a folder, but not one written by datasets' save_to_disk (no {' or '.join(hf.SAVED_MARKERS)}); "
                   "expected a data file or such a folder")
    if not p.is_file():
        raise fail("file not found")
    if p.stat().st_size == 0:
        raise fail("file is empty")
    kind = detect_format(p, fmt, field)
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
        raise fail(f"cannot read as {kind}: {exc}") from None
    if df.empty:
        raise fail("no rows")
    return df


def is_catalog(source: str) -> bool:
    return source in DATASETS


@dataclass
class SourceData:
    """A source's rows: the user's own splits (``given``: train, validation and maybe test, used as they are),
    or one frame under :data:`WHOLE` that rayft splits with ``validation_size`` / ``test_size``."""

    name: str  # how messages name the source
    frames: dict[str, pd.DataFrame]

    @property
    def given(self) -> bool:
        return WHOLE not in self.frames

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in next(iter(self.frames.values())).columns]


def open_source(source: str | None, fmt: str = "auto", splits: Mapping[str, str | None] | None = None,
                hub_config: str | None = None, nrows: int | None = None) -> SourceData:
    """Load ``data.source`` (or the files of ``data.splits`` when there is no source).

    ``nrows`` limits the rows read where the format allows it (to look at the columns cheaply).

    Raises:
        DataError: for a missing, empty or unreadable source, a split it lacks, or splits whose columns differ.
    """
    named = {role: value for role, value in (splits or {}).items() if value}
    if source is None:
        files = {role: read_file(path, fmt, _peek(path, fmt, nrows), f"data.splits.{role}")
                 for role, path in named.items()}
        data = SourceData("data.splits", _roles(files, named, list(files), "files for"))
    elif hf.is_hub(source) or hf.is_saved(source):
        data = SourceData(source, _dataset_frames(source, hub_config, named, nrows))
    elif named:
        raise DataError(f"data.splits {named}: split names apply to a save_to_disk folder or a hub dataset, and "
                        f"{source!r} is one table that rayft splits; to use split files as they are, leave "
                        "data.source out and give the files as data.splits", field="data.splits", value=named)
    else:
        data = SourceData(source, {WHOLE: DATASETS.get(source).load() if is_catalog(source)
                                   else read_file(source, fmt, _peek(source, fmt, nrows))})
    check_same_columns(data, named if source is None else {})
    return data


def _peek(path: str, fmt: str, nrows: int | None) -> int | None:
    """``nrows`` for formats that can stop early (csv, jsonl); None (read it all) for the others."""
    p = Path(path)
    return nrows if nrows and p.is_file() and detect_format(p, fmt) in {"csv", "jsonl"} else None


def _dataset_frames(source: str, config: str | None, named: dict[str, str],
                    nrows: int | None) -> dict[str, pd.DataFrame]:
    obj = hf.open_dataset(source, config)
    names = hf.split_names(obj)
    if names is None:  # a single Dataset: one table
        if named:
            raise DataError(f"data.splits {named}: {source!r} holds one Dataset without splits; leave data.splits "
                            "out (rayft splits it) or save a DatasetDict", field="data.splits", value=named)
        return {WHOLE: hf.to_frame(obj, nrows)}
    for role, name in named.items():
        if name not in names:
            raise DataError(f"data.splits.{role} {name!r}: {source!r} has no split {name!r}; it has: "
                            f"{', '.join(names)}", field=f"data.splits.{role}", value=name)
    if not named and len(names) == 1:  # a DatasetDict of one split is one table too
        return {WHOLE: hf.to_frame(obj[names[0]], nrows)}
    chosen = {role: named.get(role) or role for role in ROLES if named.get(role) or role in names}
    chosen = _roles(chosen, named, names, f"{source!r} has splits")
    return {role: hf.to_frame(obj[name], nrows) for role, name in chosen.items()}


def _roles(chosen: dict[str, Any], named: dict[str, str], names: list[str], where: str) -> dict[str, Any]:
    """``chosen`` (role → split or file) as given splits when it has train and validation, as the one table rayft
    splits when the user named ``data.splits.train`` alone (other splits are never dropped unasked);
    ``where`` and ``names`` say what the source has, for the error.

    Raises:
        DataError: for any other combination (no train, or test without validation).
    """
    if set(named) == {"train"}:
        return {WHOLE: chosen["train"]}
    if "train" in chosen and "validation" in chosen:
        return chosen
    raise DataError(f"data.splits: {where} {', '.join(names)}; expected train and validation (test optional) to "
                    "use as they are, or train alone for rayft to split; name them with data.splits: {train: ..., "
                    "validation: ..., test: ...}", field="data.splits", value=names)


def check_same_columns(data: SourceData, files: dict[str, str]) -> None:
    """Every given split has the train split's columns.

    Raises:
        DataError: naming the split (and its file), and the columns it lacks or adds.
    """
    want = data.columns
    for role, frame in data.frames.items():
        have = [str(c) for c in frame.columns]
        missing, extra = [c for c in want if c not in have], [c for c in have if c not in want]
        if missing or extra:
            where = f"data.splits.{role} {files[role]!r}" if role in files else f"{data.name!r} split {role!r}"
            raise DataError(f"{where}: columns differ from the train split's ({', '.join(want)}): "
                            f"missing {missing or 'none'}, extra {extra or 'none'}",
                            field=f"data.splits.{role}", value=files.get(role, role))


def load_source(source: str, fmt: str = "auto") -> pd.DataFrame:
    """Load a catalog dataset by name or a local file by path, as one table.

    Raises:
        DataError: for a missing, empty or unreadable source, or one that comes split.
    """
    data = open_source(source, fmt)
    if data.given:
        raise DataError(f"data.source {source!r}: comes in splits ({', '.join(data.frames)}), not as one table")
    return data.frames[WHOLE]


def source_columns(source: str | None, fmt: str = "auto", splits: Mapping[str, str | None] | None = None,
                   hub_config: str | None = None) -> list[str]:
    """Column names of a source, reading as little as possible.

    Raises:
        DataError: for a missing, empty or unreadable source, or splits whose columns differ.
    """
    return open_source(source, fmt, splits, hub_config, nrows=5).columns
