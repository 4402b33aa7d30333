"""data.engine ray without a running Ray: the config field and its refusals, finding files (local and S3), what
validation reads of streamed files, the seeded hash split and the batch tokenizer that Ray Data runs."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from rayft.config import build_config
from rayft.data import prepare_data
from rayft.data.streaming import TokenizeSpec, find_files, keep_fraction, peek_source, tokenize_batch
from rayft.errors import ConfigError, DataError
from rayft.storage import resolve
from tests.support import s3_server
from tests.support.s3_server import s3_uri
from tests.support.streaming import stream_config, write_parquet

s3_endpoint = s3_server.s3_endpoint  # a local S3 server (module fixture), started only by the test that uses it


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    return write_parquet(tmp_path_factory.mktemp("stream") / "rows.parquet", 400, chunk=100)


def _errors(raw: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    return {e.path: e.expected for e in info.value.errors}


def test_memory_is_the_default_engine_and_a_bad_engine_is_named(tiny_bert, sentiment_csv, tmp_path):
    from tests.support import cls_config

    raw = cls_config(tiny_bert, sentiment_csv, tmp_path)
    assert build_config(raw).data.engine == "memory"
    raw["data"]["engine"] = "spark"
    errors = _errors(raw)
    assert list(errors) == ["data.engine"] and "'memory' or 'ray'" in errors["data.engine"]


def test_a_streamed_parquet_source_validates(tiny_bert, parquet, tmp_path):
    cfg = build_config(stream_config(tiny_bert, parquet, tmp_path))
    assert cfg.data.engine == "ray" and cfg.data.validation_size == 0.1


def test_what_cannot_stream_is_refused_naming_each_field(tiny_bert, parquet, tmp_path):
    raw = stream_config(tiny_bert, parquet, tmp_path, data={"max_samples": 100, "train_size": 50,
                                                              "validation_size": 40, "format": "json"},
                        train={"packing": True, "curriculum": {"by": "length"}}, task={"labels": None})
    errors = _errors(raw)
    assert {"data.max_samples", "data.train_size", "data.validation_size", "data.format", "train.packing",
            "train.curriculum", "task.labels"} <= set(errors)
    assert "orders the whole split" in errors["train.curriculum"]
    assert "seeded subsample needs every row" in errors["data.max_samples"]
    assert "fraction in [0, 1)" in errors["data.validation_size"]
    assert "read every row to find them" in errors["task.labels"]
    assert "use data.engine memory" in errors["data.format"]


@pytest.mark.parametrize("task,why", [("extractive_qa", "longest question of the whole split"),
                                      ("grpo", "rollouts read the raw prompts")])
def test_tasks_that_need_the_whole_split_are_refused(tiny_bert, parquet, tmp_path, task, why):
    errors = _errors(stream_config(tiny_bert, parquet, tmp_path, task={"name": task, "labels": None}))
    assert "task.name" in errors and why in errors["task.name"] and "use data.engine memory" in errors["task.name"]


def test_sources_that_load_in_memory_are_refused(tiny_bert, tmp_path):
    errors = _errors(stream_config(tiny_bert, "rotten_tomatoes", tmp_path))
    assert "catalog names, save_to_disk folders and hub datasets load in memory" in errors["data.source"]


def test_files_folders_and_globs(parquet, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(3):
        pd.read_parquet(parquet).iloc[i * 10:(i + 1) * 10].to_parquet(folder / f"part-{i}.parquet")
    (folder / "_SUCCESS").write_text("")  # markers written beside data files are not data
    pd.read_parquet(parquet).to_csv(folder / "all.tsv", sep="\t", index=False)
    assert find_files(str(parquet)).paths == (str(parquet),)
    assert [p.rsplit("/", 1)[1] for p in find_files(str(folder / "part-*.parquet")).paths] == \
        ["part-0.parquet", "part-1.parquet", "part-2.parquet"]
    tsv = find_files(str(folder / "*.tsv"))
    assert tsv.format == "csv" and tsv.tab and list(tsv.head(3).columns) == ["review", "sentiment"]
    assert len(find_files(str(folder), fmt="parquet").paths) == 4  # a folder: every file in it
    with pytest.raises(DataError) as info:
        find_files(str(folder / "*.jsonl"), field="data.splits.train")
    assert info.value.field == "data.splits.train" and "no such file" in str(info.value)


def test_validation_reads_a_few_rows_of_split_files(tiny_bert, parquet, tmp_path):
    df = pd.read_parquet(parquet)
    paths = {"train": tmp_path / "train.parquet", "validation": tmp_path / "val.jsonl"}
    df.iloc[:300].to_parquet(paths["train"])
    df.iloc[300:].rename(columns={"review": "text"}).to_json(paths["validation"], orient="records", lines=True)
    raw = stream_config(tiny_bert, None, tmp_path, data={"splits": {k: str(v) for k, v in paths.items()},
                                                         "validation_size": None, "test_size": None})
    errors = _errors(raw)
    assert "columns differ from the train split's" in errors["data.splits.validation"]
    assert len(peek_source(None, "auto", {"train": str(paths["train"])}, nrows=5).frames["train"]) == 5
    raw = stream_config(tiny_bert, parquet, tmp_path, data={"text_column": "body"})
    assert "a column of" in _errors(raw)["data.text_column"]


def test_the_hash_split_is_seeded_disjoint_and_keeps_identical_rows_together(parquet):
    df = pd.read_parquet(parquet)
    cols = ("review", "sentiment")
    parts = [keep_fraction(df, cols, 0, lo, hi) for lo, hi in ((0, 0.2), (0.2, 0.3), (0.3, float("inf")))]
    assert sum(len(p) for p in parts) == len(df)
    assert not set(parts[0].index) & set(parts[1].index) and not set(parts[1].index) & set(parts[2].index)
    assert 0.1 < len(parts[0]) / len(df) < 0.3  # 0.2 in expectation
    assert keep_fraction(df, cols, 0, 0, 0.2).equals(parts[0])  # the same seed, the same rows
    assert not keep_fraction(df, cols, 1, 0, 0.2).index.equals(parts[0].index)
    twice = pd.concat([df.iloc[:50], df.iloc[:50]], ignore_index=True)
    kept = keep_fraction(twice, cols, 0, 0, 0.5)
    assert set(kept.index[kept.index < 50]) == set(kept.index[kept.index >= 50] - 50)


def test_tokenize_batch_keeps_one_schema_and_names_unknown_labels(tiny_bert, parquet, tmp_path):
    from rayft.models import load_tokenizer
    from rayft.tasks import get_task

    cfg = build_config(stream_config(tiny_bert, parquet, tmp_path))
    columns, labels = {"text": "review", "label": "sentiment"}, ["neg", "pos"]
    df = pd.read_parquet(parquet).iloc[:8]
    sample = get_task(cfg.task.name).tokenize(df.iloc[:2], load_tokenizer(str(tiny_bert)), cfg, columns, labels)
    spec = TokenizeSpec(cfg.task.name, str(tiny_bert), cfg.model_dump(mode="json"), columns, labels,
                        pa.table(sample).schema)
    table = tokenize_batch(spec, df)
    assert table.schema == spec.schema and table.num_rows == 8
    assert table.column("labels").to_pylist() == [labels.index(v) for v in df["sentiment"]]
    assert tokenize_batch(spec, df.iloc[:0]).schema == spec.schema
    with pytest.raises(DataError, match=r"label value 'meh' is not in task.labels"):
        tokenize_batch(spec, df.assign(sentiment="meh"))


def test_streaming_needs_ray_running_first(tiny_bert, parquet, tmp_path):
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray is running in this process")
    with pytest.raises(DataError) as info:
        prepare_data(build_config(stream_config(tiny_bert, parquet, tmp_path)))
    assert info.value.field == "data.engine" and "rayft sweep" in str(info.value)


def test_files_on_s3_are_found_and_peeked(s3_endpoint, parquet):
    bucket = resolve(s3_uri(s3_endpoint, "stream-bucket"))
    bucket.fs.create_dir("stream-bucket")
    for i in range(2):
        with bucket.fs.open_output_stream(f"stream-bucket/data/part-{i}.parquet") as out:
            out.write(parquet.read_bytes())
    files = find_files(s3_uri(s3_endpoint, "stream-bucket/data/*.parquet"))
    assert files.paths == ("stream-bucket/data/part-0.parquet", "stream-bucket/data/part-1.parquet")
    assert list(files.head(4)["sentiment"]) == list(pd.read_parquet(parquet)["sentiment"][:4])
    with pytest.raises(DataError, match="no such file"):
        find_files(s3_uri(s3_endpoint, "stream-bucket/data/missing.parquet"))


def test_prepared_streamed_data_travels_to_workers_without_its_datasets(tiny_bert):
    import pickle

    from rayft.data import PreparedData
    from rayft.data.streaming import StreamedSplit

    data = PreparedData(str(tiny_bert), ["neg", "pos"], {"text": "review"},
                        {"train": StreamedSplit("train", 900), "validation": StreamedSplit("validation", 50)},
                        {"train": 900, "validation": 50, "test": 0}, 0, datasets={"train": object()})
    sent = pickle.loads(pickle.dumps(data))
    assert sent.datasets == {} and data.datasets  # the driver keeps them; Ray Train hands the workers their shards
    assert sent.size("train") == 900 and sent.size("validation") == 50 and sent.size("test") == 0
