"""``data.engine: ray``: data larger than the driver's memory, streamed through Ray Data.

The driver builds lazy Ray Data pipelines and reads only a few rows itself (to check columns and labels):

- **Files.** ``data.source`` (one table rayft splits) or ``data.splits`` (files used as they are): a parquet, jsonl
  or csv/tsv file, a folder of them or a glob, local or on any pyarrow filesystem (``s3://bucket/x/*.parquet?
  endpoint_override=...``, as :mod:`rayft.storage` reads locations).
- **Held-out splits** of a single source are drawn by a seeded hash of each row's task columns: a row goes to
  validation when its hash falls in ``[0, validation_size)``, to test in the next ``test_size``, else to train.
  Ray Data filters the rows on the cluster, so nothing is gathered on the driver; the sizes are fractions (the
  split is exact in expectation, not stratified), and identical rows always land in the same split.
- **Tokenizing** is a ``map_batches`` of the task's own ``tokenize`` on the cluster. Validation and test are
  tokenized once and kept in Ray's object store (which spills to disk); train streams anew every epoch, read in a
  seeded file order through a local shuffle buffer (no global shuffle: that would need every row at once).
- **Feeding** goes through Ray Train's dataset sharding: the trainer gets the datasets, each worker iterates its
  shard (``ray.train.get_dataset_shard``, :class:`rayft.train.shards.ShardLoader`) with the task's collator.

What cannot stream is refused at validation (:func:`config_problems`): sources that are not such files, tasks
whose tokenization or metrics need the whole split, label vocabularies found by reading all the data, and seeded
subsampling (``max_samples``, ``train_size``). Ray Data is imported only when a stream is built.
"""

from __future__ import annotations

import fnmatch
import functools
import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Mapping

import pandas as pd

from rayft.errors import DataError, FieldError

FORMATS = ("parquet", "jsonl", "csv")  # what Ray Data reads here row by row
GLOB = set("*?[")
SAMPLE_ROWS = 64  # rows the driver reads and tokenizes itself, to fail early on bad columns or labels
TOKENIZE_BATCH = 512
# Tasks whose data cannot stream, and why (beyond the generic rule in :func:`task_problem`).
UNSTREAMABLE = {
    "extractive_qa": "its tokenization sizes the context stride by the longest question of the whole split, and "
                     "its exact-match/F1 need every context of the split at evaluation",
    "grpo": "its rollouts read the raw prompts and reward columns from the in-memory split",
    "ppo": "its rollouts read the raw prompts from the in-memory split",
}

WHOLE_SPLIT_TRAINING = {  # train.<key> -> why it needs the whole training split in memory
    "packing": "packing groups the rows of the whole split",
    "curriculum": "a curriculum orders the whole split by difficulty",
}


@dataclass(frozen=True)
class StreamedSplit:
    """Stands for a split in :class:`~rayft.data.prepare.PreparedData` when the data streams: the workers read it
    from Ray Train's dataset shard named ``name``. ``rows``: rows the split has (train: read from the files,
    before tokenization, which plans the steps; validation, test: after tokenization)."""

    name: str
    rows: int


# ---------------------------------------------------------------------------------------------------- config


def config_problems(raw: Mapping[str, Any]) -> list[FieldError]:
    """What a config asks of ``data.engine: ray`` that streaming cannot do; empty for the memory engine."""
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    if data.get("engine") != "ray":
        return []
    errors = []
    source, fmt = data.get("source"), data.get("format", "auto")
    if isinstance(source, str) and (source.startswith("hub:") or _is_catalog_or_saved(source)):
        errors.append(FieldError("data.source", source, "with data.engine ray, a parquet/jsonl/csv file, folder or "
                                 "glob (local or a pyarrow filesystem URI); catalog names, save_to_disk folders and "
                                 "hub datasets load in memory: use data.engine memory"))
    if fmt not in ("auto", *FORMATS):
        errors.append(FieldError("data.format", fmt, f"with data.engine ray, one of auto, {', '.join(FORMATS)} "
                                 "(a json document or conll file is read whole: use data.engine memory)"))
    for key in ("max_samples", "train_size"):
        if data.get(key) is not None:
            errors.append(FieldError(f"data.{key}", data[key], "unset with data.engine ray: a seeded subsample "
                                     "needs every row at once; subsample the files beforehand, or use "
                                     "train.max_steps to train on fewer rows"))
    for key in ("validation_size", "test_size"):
        value = data.get(key)
        if value is not None and not (isinstance(value, float) and 0 <= value < 1):
            errors.append(FieldError(f"data.{key}", value, "with data.engine ray, a fraction in [0, 1): rows are "
                                     "assigned to splits by a seeded hash, not counted out"))
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    for key, why in WHOLE_SPLIT_TRAINING.items():
        if train.get(key):
            errors.append(FieldError(f"train.{key}", train[key], f"unset with data.engine ray: {why}"))
    task = raw.get("task") if isinstance(raw.get("task"), dict) else {}
    why = task_problem(task.get("name", "sequence_classification"), task.get("labels"))
    if why:
        errors.append(FieldError(*why))
    return errors


def task_problem(name: Any, labels: Any) -> tuple[str, Any, str] | None:
    """(field, value, expected) when task ``name`` cannot stream, else None (unknown names: None, reported
    elsewhere)."""
    from rayft.tasks import TASKS
    from rayft.tasks.base import Task

    if not isinstance(name, str) or name not in TASKS:
        return None
    task = TASKS.get(name)
    why = UNSTREAMABLE.get(name)
    if why is None and type(task).finish_eval_columns is not Task.finish_eval_columns:
        why = "its metrics need the whole split's columns at evaluation"
    if why:
        return ("task.name", name, f"a task that streams with data.engine ray — {name!r} cannot: {why}; "
                "use data.engine memory")
    if type(task).labels is not Task.labels and not labels:
        return ("task.labels", labels, f"the label names listed with data.engine ray (task {name!r} would read "
                "every row to find them)")
    return None


def _is_catalog_or_saved(source: str) -> bool:
    from rayft.data.hf import is_saved
    from rayft.data.sources import is_catalog

    return is_catalog(source) or is_saved(source)


# ---------------------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class Files:
    """The files of one source or split on its filesystem, and their format."""

    spec: str  # as the user wrote it
    fs: Any  # pyarrow filesystem
    paths: tuple[str, ...]
    format: str
    tab: bool = False  # a .tsv file: tab-separated

    def read(self) -> Any:
        """A lazy Ray Dataset over the files."""
        import ray.data

        paths = list(self.paths)
        if self.format == "parquet":
            return ray.data.read_parquet(paths, filesystem=self.fs)
        if self.format == "jsonl":
            return ray.data.read_json(paths, filesystem=self.fs)  # pyarrow's JSON reader: one object a line
        import pyarrow.csv as pacsv

        return ray.data.read_csv(paths, filesystem=self.fs,
                                 parse_options=pacsv.ParseOptions(delimiter="\t" if self.tab else ","))

    def head(self, n: int = SAMPLE_ROWS) -> pd.DataFrame:
        """The first ``n`` rows of the first file, read here (the driver reads nothing else)."""
        path = self.paths[0]
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                with self.fs.open_input_file(path) as fh:
                    batch = next(pq.ParquetFile(fh).iter_batches(batch_size=n), None)
                    return batch.to_pandas() if batch is not None else pd.DataFrame()
            with self.fs.open_input_stream(path) as fh:
                if self.format == "jsonl":
                    return pd.read_json(fh, lines=True, nrows=n)
                return pd.read_csv(fh, sep="\t" if self.tab else ",", nrows=n)
        except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise DataError(f"{self.spec!r}: cannot read {path!r} as {self.format}: {exc}", value=self.spec) from None


def find_files(spec: str, fmt: str = "auto", field: str = "data.source") -> Files:
    """The files a file path, folder or glob names (local or a pyarrow filesystem URI), and their format.

    Raises:
        DataError: naming ``field`` when nothing matches, the location cannot be opened or the format is unknown.
    """
    import pyarrow.fs as pafs

    from rayft.data.sources import detect_format
    from rayft.errors import RayftError
    from rayft.storage import resolve

    def fail(why: str) -> DataError:
        return DataError(f"{field} {spec!r}: {why}", field=field, value=spec)

    try:
        loc = resolve(spec)
        fs, path = loc.fs, loc.path
        if any(c in GLOB for c in path):
            parts = PurePosixPath(path).parts
            base = str(PurePosixPath(*parts[:next(i for i, p in enumerate(parts) if GLOB & set(p))]))
            found = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
            paths = [f.path for f in found if f.type == pafs.FileType.File and fnmatch.fnmatch(f.path, path)]
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.Directory:
                found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
                paths = [f.path for f in found if f.type == pafs.FileType.File and f.size
                         and not PurePosixPath(f.path).name.startswith((".", "_"))]
            else:
                paths = [path] if info.type == pafs.FileType.File else []
    except (RayftError, OSError, ValueError) as exc:
        raise fail(f"cannot be listed: {exc}") from None
    if not paths:
        raise fail("no such file, or no files in that folder or matching that glob")
    paths.sort()
    kind = detect_format(PurePosixPath(paths[0]), fmt, field)  # type: ignore[arg-type]
    if kind not in FORMATS:
        raise fail(f"{kind} files cannot stream; with data.engine ray use {', '.join(FORMATS)} files")
    return Files(spec, fs, tuple(paths), kind, tab=paths[0].endswith((".tsv", ".tsv.gz")))


def open_files(source: str | None, fmt: str, splits: Mapping[str, str | None]) -> dict[str, Files]:
    """``{"all": files}`` for a source rayft splits, else ``{role: files}`` for ``data.splits``' files.

    Raises:
        DataError: for a missing or unreadable location (naming its field).
    """
    from rayft.data.sources import WHOLE

    if source is not None:
        return {WHOLE: find_files(source, fmt)}
    return {role: find_files(spec, fmt, f"data.splits.{role}") for role, spec in splits.items() if spec}


def peek_source(source: str | None, fmt: str = "auto", splits: Mapping[str, str | None] | None = None,
                hub_config: str | None = None, nrows: int | None = None) -> Any:
    """A :class:`~rayft.data.sources.SourceData` of the first rows of each split's first file, as config validation
    reads sources (``hub_config`` is never set with this engine).

    Raises:
        DataError: for a missing or unreadable location, or splits whose columns differ.
    """
    from rayft.data.sources import SourceData, check_same_columns

    files = open_files(source, fmt, splits or {})
    data = SourceData("data.splits" if source is None else source,
                      {role: f.head(nrows or SAMPLE_ROWS) for role, f in files.items()})
    check_same_columns(data, {role: f.spec for role, f in files.items()} if source is None else {})
    return data


# ---------------------------------------------------------------------------------------------------- streams


def _hash_key(seed: int) -> str:
    return f"{seed % 10**16:016d}"  # pandas' row hash takes a 16-character key


def keep_fraction(df: pd.DataFrame, columns: tuple[str, ...], seed: int, low: float, high: float) -> pd.DataFrame:
    """The rows of ``df`` whose seeded hash of ``columns`` falls in ``[low, high)`` of ``[0, 1)``."""
    import numpy as np

    frame = df[list(columns)]
    frame = frame.assign(**{c: frame[c].astype(str) for c in columns
                            if len(frame) and not isinstance(frame[c].iloc[0], (str, int, float, bool, np.number))})
    unit = pd.util.hash_pandas_object(frame, index=False, hash_key=_hash_key(seed)).to_numpy() / 2.0 ** 64
    return df[(unit >= low) & (unit < high)]


@dataclass(frozen=True)
class TokenizeSpec:
    """What every ``map_batches`` task needs to tokenize a batch the way the driver checked on its sample."""

    task: str
    model_path: str
    experiment: dict[str, Any]  # the resolved config (JSON)
    columns: dict[str, str]
    labels: list[str] | None
    schema: Any  # the pyarrow schema of the sample's tokenized output: every block gets the same one


_TOKENIZERS: dict[str, Any] = {}  # one per model per Ray Data worker process


def tokenize_batch(spec: TokenizeSpec, df: pd.DataFrame) -> Any:
    """One batch of raw rows → the task's tokenized columns as a pyarrow table (runs in Ray Data tasks).

    Raises:
        DataError: for a label value outside ``task.labels``.
    """
    import pyarrow as pa

    from rayft.config.schema import ExperimentConfig
    from rayft.tasks import get_task

    if not len(df):
        return spec.schema.empty_table()
    if spec.model_path not in _TOKENIZERS:
        from rayft.models import load_tokenizer

        _TOKENIZERS[spec.model_path] = load_tokenizer(spec.model_path)
    cfg = ExperimentConfig.model_validate(spec.experiment)
    df = df.dropna(subset=list(spec.columns.values()))
    try:
        out = get_task(spec.task).tokenize(df, _TOKENIZERS[spec.model_path], cfg, spec.columns, spec.labels)
    except KeyError as exc:
        raise DataError(f"data: label value {exc} is not in task.labels {spec.labels}") from None
    return pa.table(out, schema=spec.schema)


def prepare_streaming(cfg: Any, model_path: str) -> Any:
    """The streaming counterpart of :func:`rayft.data.prepare.prepare_data`: lazy Ray Datasets per split (on the
    returned object's ``datasets``, which stay on the driver) and :class:`StreamedSplit` handles for the workers.

    Raises:
        DataError: when Ray is not running, or for missing files, columns, labels or rows.
    """
    import time

    import ray
    import ray.data

    from rayft.data.prepare import PreparedData

    start = time.perf_counter()
    if not ray.is_initialized():
        raise DataError("data.engine 'ray' streams on a running Ray, started before the data stage: `rayft train` "
                        "does that; `rayft sweep` does not stream data yet (use data.engine memory there)",
                        field="data.engine", value="ray")
    context = ray.data.DataContext.get_current()  # the datasets made below copy it
    context.enable_progress_bars = context.print_on_execution_start = False  # rayft reports progress itself
    files = open_files(cfg.data.source, cfg.data.format, cfg.data.named_splits())
    spec, sample, pad_id = _checked_sample(cfg, files, model_path)
    datasets, rows = _streams(files, cfg, spec)
    lengths = [len(x) for x in sample["input_ids"]]
    return PreparedData(
        model_path=model_path, labels=spec.labels, columns=spec.columns,
        splits={role: StreamedSplit(role, n) for role, n in rows.items() if n},
        raw_sizes={"train": rows["train"], "validation": rows["validation"], "test": rows.get("test", 0)},
        pad_id=pad_id, seconds=time.perf_counter() - start, datasets=datasets,
        stats={"mean_train_tokens": sum(lengths) / max(len(lengths), 1), "max_train_tokens": max(lengths, default=0),
               "engine": "ray", "sampled_rows": len(lengths)},
    )


def _checked_sample(cfg: Any, files: dict[str, Files], model_path: str) -> tuple[TokenizeSpec, dict[str, Any], int]:
    """The first rows of each split's first file, checked (columns, labels) and tokenized here, so that bad data
    fails before any worker starts: the :class:`TokenizeSpec` for the cluster, the tokenized sample, the pad id.

    Raises:
        DataError: for splits whose columns differ, a missing column or a label outside ``task.labels``.
    """
    import pyarrow as pa

    from rayft.data.prepare import catalog_columns, check_labels
    from rayft.data.sources import SourceData, check_same_columns
    from rayft.models import load_tokenizer
    from rayft.tasks import get_task, resolve_columns

    task = get_task(cfg.task.name)
    heads = SourceData(cfg.data.source or "data.splits", {role: f.head() for role, f in files.items()})
    check_same_columns(heads, {role: f.spec for role, f in files.items()} if cfg.data.source is None else {})
    columns = resolve_columns(task, cfg, catalog_columns(None), heads.columns)
    missing = [c for c in columns.values() if c not in heads.columns]
    if missing:
        raise DataError(f"data: column(s) {missing} not found; the data has: {', '.join(heads.columns)}")
    labels = list(cfg.task.labels) if cfg.task.labels else None
    sample = pd.concat(heads.frames.values(), ignore_index=True).dropna(subset=list(columns.values()))
    check_labels(sample, columns, labels)
    tokenizer = load_tokenizer(model_path)
    tokenized = task.tokenize(sample, tokenizer, cfg, columns, labels)
    spec = TokenizeSpec(task.name, model_path, cfg.model_dump(mode="json"), columns, labels,
                        pa.table(tokenized).schema)
    return spec, tokenized, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _streams(files: dict[str, Files], cfg: Any, spec: TokenizeSpec) -> tuple[dict[str, Any], dict[str, int]]:
    """The tokenized Ray Dataset of each split (train lazy, validation and test materialized in the object store)
    and each split's rows (train: before tokenizing; the others: after).

    Raises:
        DataError: if train or validation has no rows.
    """
    from rayft.data.sources import WHOLE

    if WHOLE in files:
        raw, train_rows = _split_datasets(files[WHOLE], cfg, tuple(spec.columns.values()))
    else:
        raw = {role: f.read() for role, f in files.items()}
        train_rows = raw["train"].count()  # parquet: from the files' footers; csv, jsonl: one streaming pass
    tokenize = functools.partial(tokenize_batch, spec)
    datasets, rows = {}, {"train": train_rows}
    for role, ds in raw.items():
        ds = ds.map_batches(tokenize, batch_format="pandas", batch_size=TOKENIZE_BATCH)
        if role == "train":
            datasets[role] = ds.randomize_block_order(seed=cfg.data.seed)
        else:
            datasets[role] = ds.materialize()  # tokenized once, held in the object store
            rows[role] = datasets[role].count()
    if not rows["train"] or not rows.get("validation"):
        raise DataError(f"data: no rows left in {'train' if not rows['train'] else 'validation'} "
                        f"(split sizes {rows}); check the files and data.validation_size (rows with the same task "
                        "columns always share a split)")
    return {role: ds for role, ds in datasets.items() if rows[role]}, rows


def _split_datasets(files: Files, cfg: Any, columns: tuple[str, ...]) -> tuple[dict[str, Any], int]:
    """Train, validation and test of one source, each a filter of the rows by their seeded hash (module doc), and
    the rows of train.

    One pass over the files keeps the held-out rows (in the object store); the train rows are the files' rows
    (parquet: counted from the footers) less those.

    Raises:
        DataError: if the held-out fractions leave no training rows.
    """
    from rayft.config.schema import DEFAULT_TEST_SIZE, DEFAULT_VALIDATION_SIZE

    val = DEFAULT_VALIDATION_SIZE if cfg.data.validation_size is None else cfg.data.validation_size
    test = DEFAULT_TEST_SIZE if cfg.data.test_size is None else cfg.data.test_size
    if not val + test < 1:
        raise DataError(f"data: validation_size={val} and test_size={test} leave no training rows; expected "
                        "fractions that sum below 1", field="data.validation_size", value=val)
    source = files.read()

    def part(ds: Any, low: float, high: float) -> Any:
        return ds.map_batches(keep_fraction, batch_format="pandas", fn_args=(columns, cfg.data.seed, low, high))

    held = part(source, 0.0, val + test).materialize()
    parts = {"validation": part(held, 0.0, val), "test": part(held, val, val + test) if test else None,
             "train": part(source, val + test, math.inf)}
    return {role: ds for role, ds in parts.items() if ds is not None}, source.count() - held.count()
