"""Data: sources, seeded stratified splits, tokenization per task, and collation."""

from __future__ import annotations

import pandas as pd
import pytest

from rayft.config import build_config
from rayft.data import make_splits, pad_batch, prepare_data, read_file
from rayft.data.catalog import DATASETS
from rayft.errors import DataError
from tests.support import cls_config


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json", "parquet"])
def test_local_formats_read_the_same_rows(tmp_path, fmt):
    df = pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "y", "x"]})
    path = tmp_path / f"d.{fmt}"
    {"csv": lambda: df.to_csv(path, index=False), "jsonl": lambda: df.to_json(path, orient="records", lines=True),
     "json": lambda: df.to_json(path, orient="records"), "parquet": lambda: df.to_parquet(path)}[fmt]()
    assert read_file(path).to_dict("records") == df.to_dict("records")


def test_unknown_suffix_is_a_clear_error(tmp_path):
    path = tmp_path / "d.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match="data.format"):
        read_file(path)


def test_splits_are_seeded_stratified_and_disjoint(tiny_bert, sentiment_csv, tmp_path):
    cfg = build_config(cls_config(tiny_bert, sentiment_csv, tmp_path))
    df = pd.read_csv(sentiment_csv).reset_index().rename(columns={"index": "row"})
    a = make_splits(df, cfg.data, "sentiment")
    b = make_splits(df, cfg.data, "sentiment")
    assert a.sizes() == {"train": 160, "validation": 40, "test": 40}
    assert a.train["row"].tolist() == b.train["row"].tolist()
    assert set(a.train["row"]).isdisjoint(a.validation["row"]) and set(a.validation["row"]).isdisjoint(a.test["row"])
    assert a.validation["sentiment"].value_counts().to_dict() == {"pos": 20, "neg": 20}


def test_prepare_classification(tiny_bert, sentiment_csv, tmp_path):
    cfg = build_config(cls_config(tiny_bert, sentiment_csv, tmp_path))
    data = prepare_data(cfg)
    assert data.labels == ["neg", "pos"]
    assert data.size("train") == 160 and data.size("validation") == 40
    assert set(data.splits["train"]["labels"]) == {0, 1}
    assert all(len(ids) <= 32 for ids in data.splits["train"]["input_ids"])


def test_prepare_sft_masks_the_prompt(tiny_llama, chat_jsonl, tmp_path):
    raw = cls_config(tiny_llama, chat_jsonl, tmp_path, task={"name": "sft"})
    raw["data"] = {"source": str(chat_jsonl), "validation_size": 8, "test_size": 8}
    data = prepare_data(build_config(raw))
    from rayft.models import load_tokenizer

    tok = load_tokenizer(str(tiny_llama))
    ids, labels = data.splits["train"]["input_ids"][0], data.splits["train"]["labels"][0]
    n_masked = sum(1 for x in labels if x == -100)
    assert 0 < n_masked < len(ids)
    prompt_part = tok.convert_ids_to_tokens(ids[:n_masked])
    assert prompt_part[0] == "<|user|>" and prompt_part[-1] == "<|assistant|>"
    assert labels[n_masked:] == ids[n_masked:]


def test_pad_batch_pads_tokens_and_token_labels():
    batch = pad_batch([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "index": 0},
                       {"input_ids": [5], "labels": [5], "index": 1}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["index"].tolist() == [0, 1]


def test_catalog_rotten_tomatoes_is_real_data():
    df = DATASETS.get("rotten_tomatoes").load()
    assert len(df) == 12808 and set(df["label"]) == {"fresh", "rotten"}


def test_catalog_chatterbot_pairs():
    df = DATASETS.get("chatterbot").load()
    assert len(df) > 500 and {"prompt", "response"} <= set(df.columns)
