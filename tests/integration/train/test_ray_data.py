"""data.engine ray on a real local Ray: a generated parquet file trains a few steps while the driver's memory
stays bounded (100,000 rows by default, 1,000,000 in the slow run: it took 7.5 minutes on a busy 2-core machine);
split files on S3 with two workers, checkpoint and resume.

Each run's driver is a fresh process (:func:`tests.support.streaming.run_driver`), so its peak resident memory is
its own: the test process writes the parquet file, the driver never reads more of it than a few rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import s3_server
from tests.support.s3_server import s3_uri
from tests.support.streaming import run_driver, stream_config, write_parquet

pytestmark = pytest.mark.integration

s3_endpoint = s3_server.s3_endpoint  # a local S3 server (module fixture), started only by the test that uses it

MILLION = 1_000_000
# The driver's peak resident memory with data.engine ray, whatever the rows: Python with rayft, Ray, Ray Data,
# pandas, pyarrow, transformers and torch imported, and a few sampled rows (measured 0.46-0.47 GB on 1,000,000 rows,
# where the in-memory engine's driver peaked at 3.6 GB; docs/benchmarks.md).
DRIVER_BOUND_MB = 1024


def _history(checkpoint: str) -> list[dict]:
    return json.loads((Path(checkpoint) / "rayft_state.json").read_text())["history"]


@pytest.mark.parametrize("rows", [100_000, pytest.param(MILLION, marks=pytest.mark.slow)])
def test_rows_stream_through_ray_data_with_the_driver_under_a_bound(rows, tiny_bert, tmp_path):
    source = write_parquet(tmp_path / "rows.parquet", rows)
    held_out = 500 / rows  # about 500 validation and 500 test rows
    raw = stream_config(tiny_bert, source, tmp_path, name=f"rows{rows}",
                        data={"validation_size": held_out, "test_size": held_out},
                        train={"max_steps": 6, "eval_every": 3, "batch_size": 16, "lr": 5e-2})
    out = run_driver(raw, tmp_path)
    metrics = out["metrics"]
    assert metrics["step"] == 6 and 0 <= metrics["eval_accuracy"] <= 1 and "test_accuracy" in metrics
    assert metrics["epoch"] < 0.01  # a few batches of one streamed epoch of about rows - 1,000 training rows
    assert [h["step"] for h in _history(out["checkpoint"])] == [3, 6]
    assert out["peak_rss_mb"] < DRIVER_BOUND_MB, out


@pytest.mark.slow
def test_split_files_on_s3_two_workers_checkpoint_and_resume(tiny_bert, s3_endpoint, tmp_path):
    import pandas as pd

    from rayft.storage import resolve

    rows = pd.read_parquet(write_parquet(tmp_path / "rows.parquet", 3000))
    bucket = resolve(s3_uri(s3_endpoint, "train-data"))
    bucket.fs.create_dir("train-data")
    parts = {"train/part-0.parquet": rows.iloc[:1200], "train/part-1.parquet": rows.iloc[1200:2400],
             "validation.parquet": rows.iloc[2400:2700], "test.parquet": rows.iloc[2700:]}
    for name, part in parts.items():
        with bucket.fs.open_output_stream(f"train-data/{name}") as out:
            out.write(part.to_parquet(index=False))
    splits = {"train": s3_uri(s3_endpoint, "train-data/train/*.parquet"),
              "validation": s3_uri(s3_endpoint, "train-data/validation.parquet"),
              "test": s3_uri(s3_endpoint, "train-data/test.parquet")}
    raw = stream_config(tiny_bert, None, tmp_path, name="s3-splits",
                        data={"splits": splits, "validation_size": None, "test_size": None},
                        train={"max_steps": 4, "eval_every": 2, "batch_size": 8, "lr": 5e-2},
                        scaling={"num_workers": 2, "cpus_per_worker": 0.5, "zero_stage": 2})
    first = run_driver(raw, tmp_path)
    assert first["metrics"]["step"] == 4 and [h["step"] for h in _history(first["checkpoint"])] == [2, 4]
    # 2,400 training rows: 1,200 per rank, 150 batches of 8 per epoch
    assert first["metrics"]["epoch"] == pytest.approx(4 / 150, abs=1e-3)

    longer = {**raw, "train": {**raw["train"], "max_steps": 6}}
    second = run_driver(longer, tmp_path, resume=True)
    assert [h["step"] for h in _history(second["checkpoint"])] == [2, 4, 6]
    assert second["metrics"]["resumed_from_step"] == 4


@pytest.mark.slow
def test_sft_streams_from_jsonl_with_token_level_labels(tiny_llama, tmp_path):
    from tests.support import tiny

    source = tmp_path / "chat.jsonl"
    rows = [{**r, "prompt": f"{r['prompt']} {i}"} for i, r in enumerate(tiny.chat_rows(2000))]  # distinct rows
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    raw = stream_config(tiny_llama, source, tmp_path, name="sft-stream",
                        data={"text_column": None, "label_column": None, "prompt_column": "prompt",
                              "response_column": "response"},
                        task={"name": "sft", "labels": None},
                        method={"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                        train={"max_steps": 4, "eval_every": 4, "batch_size": 8, "lr": 5e-2})
    out = run_driver(raw, tmp_path)
    assert out["metrics"]["step"] == 4 and out["metrics"]["eval_loss"] > 0 and "test_loss" in out["metrics"]
    assert out["peak_rss_mb"] < DRIVER_BOUND_MB
