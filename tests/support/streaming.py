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


DRIVER = """
import json, sys
from rayft.config import build_config
from rayft.train import run_training

out = run_training(build_config(json.load(open(sys.argv[1]))), resume=sys.argv[2] == "resume", verbose=False)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print("RESULT " + json.dumps({"metrics": {k: v for k, v in out.metrics.items() if isinstance(v, (int, float))},
                              "checkpoint": out.checkpoint_path,
                              "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024}))
"""


def run_driver(raw: dict, tmp: Path, *, resume: bool = False, timeout: float = 900) -> dict:
    """``rayft train``'s driver (:func:`rayft.train.run_training`, a local Ray of its own) in a fresh process, for
    its peak resident memory (``VmHWM``: the process's own high-water mark, children excluded): the metrics, the
    checkpoint and ``peak_rss_mb``."""
    import json
    import os
    import subprocess
    import sys

    from tests.support import REPO

    config = tmp / f"{raw['name']}-driver.json"
    config.write_text(json.dumps(raw, default=str))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(config), "resume" if resume else "fresh"], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=tmp)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"driver failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])
