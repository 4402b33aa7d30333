"""Shared fixtures: tiny models and data on disk, a stable DeepSpeed build cache, and a local Ray."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from tests.support import REPO, tiny

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


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


@pytest.fixture(scope="session")
def process_group():
    """A one-process gloo group, as a Ray Train worker of a one-worker run has, for every test that builds a
    DeepSpeed engine in the test process. One for the session: DeepSpeed keeps the groups it first sees in module
    globals, so a group destroyed and created again leaves it holding the old one."""
    from rayft.train.standalone import one_process_group

    with one_process_group():
        yield


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole integration session (2 CPUs, like the CI machine).

    Its processes start with the repository root on ``PYTHONPATH``: a Ray worker then imports ``tests.support``
    (a helper it is handed by reference) as this process does, from whatever folder pytest runs. Ray itself hands
    its workers only the driver's working directory. The variable is restored once Ray is up: the processes Ray
    started keep it, the tests' own subprocesses do not see it."""
    import ray

    from rayft.cluster import init_ray

    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), saved) if p)
    try:
        init_ray(num_cpus=2, quiet=True)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    yield ray
    ray.shutdown()
