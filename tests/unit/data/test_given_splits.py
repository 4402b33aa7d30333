"""Data as users have it: save_to_disk folders (Dataset, DatasetDict), split files used as they are, hub ids
(offline here), and the errors for each bad input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from datasets import Dataset, DatasetDict

from rayft.config import build_config, load_config
from rayft.config.loader import read_yaml
from rayft.data import prepare_data
from rayft.data.prepare import load_data
from rayft.data.splits import given_splits
from rayft.errors import ConfigError, DataError
from tests.support import REPO, cls_config

SIZES = {"train": 160, "validation": 40, "test": 40}


def _split_rows(csv: Path) -> dict[str, pd.DataFrame]:
    df = pd.read_csv(csv)
    return {"train": df.iloc[:160], "validation": df.iloc[160:200], "test": df.iloc[200:240]}


def _write_files(parts: dict[str, pd.DataFrame], folder: Path) -> dict[str, str]:
    """Each split in another format: any supported format is a split file."""
    paths = {"train": folder / "train.csv", "validation": folder / "validation.jsonl", "test": folder / "test.parquet"}
    for role, df in parts.items():
        path = paths[role]
        {".csv": lambda: df.to_csv(path, index=False),
         ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
         ".parquet": lambda: df.to_parquet(path, index=False)}[path.suffix]()
    return {role: str(paths[role]) for role in parts}


def _save_dict(parts: dict[str, pd.DataFrame], folder: Path, names: dict[str, str] | None = None) -> str:
    names = names or {}
    DatasetDict({names.get(role, role): Dataset.from_pandas(df, preserve_index=False) for role, df in parts.items()}
                ).save_to_disk(str(folder))
    return str(folder)


def _given(model: Path, tmp: Path, **data) -> dict:
    raw = cls_config(model, Path("unused"), tmp)
    raw["data"] = {"text_column": "review", "label_column": "sentiment", **data}
    return raw


def _same(a, b) -> None:
    assert a.labels == b.labels and a.columns == b.columns and a.raw_sizes == b.raw_sizes
    assert a.splits == b.splits


def test_saved_dataset_prepares_like_the_csv(tiny_bert, sentiment_csv, tmp_path):
    folder = tmp_path / "saved"
    Dataset.from_pandas(pd.read_csv(sentiment_csv)).save_to_disk(str(folder))
    from_csv = prepare_data(build_config(cls_config(tiny_bert, sentiment_csv, tmp_path)))
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path)
    raw["data"]["source"] = str(folder)
    _same(prepare_data(build_config(raw)), from_csv)
    assert from_csv.raw_sizes == SIZES


def test_dataset_dict_and_split_files_are_used_as_given(tiny_bert, sentiment_csv, tmp_path):
    parts = _split_rows(sentiment_csv)
    files = _write_files(parts, tmp_path)
    from_files = prepare_data(build_config(_given(tiny_bert, tmp_path, splits=files)))
    from_folder = prepare_data(build_config(_given(tiny_bert, tmp_path, source=_save_dict(parts, tmp_path / "dd"))))
    assert from_files.raw_sizes == SIZES
    _same(from_folder, from_files)
    cfg = build_config(_given(tiny_bert, tmp_path, splits=files))
    loaded = load_data(cfg.data)
    assert loaded.given
    for role, df in vars(given_splits(loaded.frames, cfg.data)).items():
        assert df.to_dict("records") == parts[role].reset_index(drop=True).to_dict("records")


def test_dataset_dict_split_names_map_to_roles_and_test_is_optional(tiny_bert, sentiment_csv, tmp_path):
    parts = _split_rows(sentiment_csv)
    del parts["test"]
    folder = _save_dict(parts, tmp_path / "dd", {"validation": "dev"})
    data = prepare_data(build_config(_given(tiny_bert, tmp_path, source=folder, splits={"validation": "dev"})))
    assert data.raw_sizes == {"train": 160, "validation": 40, "test": 0} and "test" not in data.splits


def test_given_splits_still_subsample_seeded(tiny_bert, sentiment_csv, tmp_path):
    files = _write_files(_split_rows(sentiment_csv), tmp_path)
    cfg = build_config(_given(tiny_bert, tmp_path, splits=files, train_size=50, max_samples=30 + 20))
    a, b = (given_splits(load_data(cfg.data).frames, cfg.data, "sentiment") for _ in range(2))
    assert a.sizes() == {"train": 50, "validation": 40, "test": 40}
    assert a.train.to_dict("records") == b.train.to_dict("records")
    assert a.train["sentiment"].value_counts().to_dict() == {"pos": 25, "neg": 25}


def test_one_split_of_train_alone_is_split_by_rayft(tiny_bert, sentiment_csv, tmp_path):
    raw = _given(tiny_bert, tmp_path, splits={"train": str(sentiment_csv)}, validation_size=40, test_size=40)
    assert prepare_data(build_config(raw)).raw_sizes == SIZES


def _errors(raw: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        build_config(raw)
    return {e.path: e.expected for e in info.value.errors}


def test_saved_folder_without_the_named_split(tiny_bert, sentiment_csv, tmp_path):
    folder = _save_dict(_split_rows(sentiment_csv), tmp_path / "dd")
    raw = _given(tiny_bert, tmp_path, source=folder, splits={"validation": "dev"})
    assert "has no split 'dev'; it has: train, validation, test" in _errors(raw)["data.splits.validation"]
    with pytest.raises(DataError, match="no split 'dev'; it has: train, validation, test"):
        prepare_data(build_config(raw, check=False))


def test_dataset_dict_without_validation_says_how_to_map_or_names_train_alone(tiny_bert, sentiment_csv, tmp_path):
    parts = _split_rows(sentiment_csv)
    folder = _save_dict({"train": parts["train"], "test": parts["test"]}, tmp_path / "dd")
    assert "has splits train, test; expected train and validation" in _errors(
        _given(tiny_bert, tmp_path, source=folder))["data.splits"]
    named = _given(tiny_bert, tmp_path, source=folder, splits={"train": "train"}, validation_size=40, test_size=40)
    assert prepare_data(build_config(named)).raw_sizes == {"train": 80, "validation": 40, "test": 40}


def test_split_files_whose_columns_differ(tiny_bert, sentiment_csv, tmp_path):
    parts = _split_rows(sentiment_csv)
    parts["validation"] = parts["validation"].rename(columns={"sentiment": "label"}).assign(extra=1)
    files = _write_files(parts, tmp_path)
    expected = _errors(_given(tiny_bert, tmp_path, splits=files))["data.splits.validation"]
    assert "missing ['sentiment'], extra ['label', 'extra']" in expected
    with pytest.raises(DataError, match=r"data.splits.validation '.*validation.jsonl': columns differ"):
        load_data(build_config(_given(tiny_bert, tmp_path, splits=files), check=False).data)


def test_sizes_with_given_splits_are_an_error_not_a_resplit(tiny_bert, sentiment_csv, tmp_path):
    parts = _split_rows(sentiment_csv)
    files = _write_files(parts, tmp_path)
    assert "used as they are" in _errors(_given(tiny_bert, tmp_path, splits=files, validation_size=10))[
        "data.validation_size"]
    folder = _save_dict(parts, tmp_path / "dd")
    assert "used as they are" in _errors(_given(tiny_bert, tmp_path, source=folder, test_size=5))["data.test_size"]


@pytest.mark.parametrize("data, where, message", [
    ({}, "data", "data needs a source"),
    ({"splits": {"train": "a.csv", "test": "b.csv"}}, "data", "no validation file"),
    ({"splits": {"train": "a.csv", "dev": "b.csv"}}, "data.splits.dev", "unknown key"),
    ({"source": "rotten_tomatoes", "hub_config": "x"}, "data", "hub:<owner>/<name> source only"),
])
def test_schema_errors(tiny_bert, tmp_path, data, where, message):
    assert message in _errors(_given(tiny_bert, tmp_path, **data))[where]


def test_split_names_on_a_plain_file_are_an_error(tiny_bert, sentiment_csv, tmp_path):
    raw = _given(tiny_bert, tmp_path, source=str(sentiment_csv), splits={"validation": "dev"})
    assert "leave data.source out" in _errors(raw)["data.splits"]


def test_folder_that_is_not_a_saved_dataset(tiny_bert, tmp_path):
    (tmp_path / "plain").mkdir()
    assert "not one written by datasets' save_to_disk" in _errors(
        _given(tiny_bert, tmp_path, source=str(tmp_path / "plain")))["data.source"]


@pytest.mark.parametrize("how", ["env", "unreachable"])
def test_hub_id_offline_says_so_and_how_to_pass_a_local_copy(tiny_bert, tmp_path, monkeypatch, how):
    from huggingface_hub import constants

    if how == "env":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    else:  # nothing listens there: refused at once, as a machine without network fails its lookups
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    raw = _given(tiny_bert, tmp_path, source="hub:stanfordnlp/imdb", hub_config="plain_text")
    expected = _errors(raw)["data.source"]
    assert "offline" in expected and "save_to_disk" in expected and "data.splits" in expected
    with pytest.raises(DataError, match="hub is offline"):
        prepare_data(build_config(raw, check=False))


def _quickstart_raw() -> dict:
    return read_yaml(REPO / "experiments" / "quickstart.yaml")


def test_quickstart_runs_on_split_files_and_on_a_saved_folder(tmp_path):
    """The quickstart's data stage on its own data written as three split files, and as a save_to_disk folder."""
    base = load_config(REPO / "experiments" / "quickstart.yaml")
    from rayft.data.catalog import DATASETS

    df = DATASETS.get(base.data.source).load().sample(n=300, random_state=0)
    parts = {"train": df.iloc[:200], "validation": df.iloc[200:250], "test": df.iloc[250:]}
    prepared = []
    for data in ({"splits": _write_files(parts, tmp_path)}, {"source": _save_dict(parts, tmp_path / "dd")}):
        raw = _quickstart_raw()
        raw["data"] = {k: v for k, v in raw["data"].items() if k not in {"source", "validation_size", "test_size"}}
        raw["data"].update(data)
        prepared.append(prepare_data(build_config(raw, source="quickstart.yaml")))
    assert prepared[0].raw_sizes == {"train": 200, "validation": 50, "test": 50}
    assert prepared[0].labels == ["fresh", "rotten"]
    _same(prepared[1], prepared[0])


def test_split_files_outside_a_submitted_working_dir_are_named(tiny_bert, sentiment_csv, tmp_path):
    from rayft.jobs import _outside_files

    files = _write_files(_split_rows(sentiment_csv), tmp_path)
    cfg = build_config(_given(tiny_bert, tmp_path, splits=files))
    warnings = " ".join(_outside_files(cfg, tmp_path / "elsewhere"))
    assert all(f"data.splits.{role}=" in warnings for role in ("train", "validation", "test"))
