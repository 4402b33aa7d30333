"""Shared fixtures: tiny models and data on disk, a stable DeepSpeed build cache, and a local Ray."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return tiny.make_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return tiny.make_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    rows = tiny.sentiment_rows(240)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["review", "sentiment"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def chat_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in tiny.chat_rows(64)) + "\n")
    return path


def cls_config(model: Path, data: Path, tmp: Path, **sections) -> dict:
    """A small sequence-classification experiment on the tiny model and data."""
    raw = {
        "name": "tiny-cls", "output_dir": str(tmp / "runs"),
        "model": {"name": str(model), "max_length": 32},
        "data": {"source": str(data), "text_column": "review", "label_column": "sentiment",
                 "validation_size": 40, "test_size": 40},
        "method": {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"]},
        "train": {"epochs": 2, "batch_size": 16, "lr": 5e-3, "log_every": 5},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1, "zero_stage": 2},
        "tracking": {"wandb": False},
        "store": {"path": str(tmp / "store")},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole integration session (2 CPUs, like the CI machine)."""
    import ray

    from rayft.cluster import init_ray

    init_ray(num_cpus=2, quiet=True)
    yield ray
    ray.shutdown()
