"""Read W&B offline run files (``offline-run-*/run-*.wandb``) to check they are complete before ``wandb sync``.

wandb ships no reader for its offline files. They are a LevelDB-style log (32 KiB blocks of
CRC-checked chunks) of ``wandb_internal_pb2.Record`` protobufs; this module decodes them with wandb's
own protobuf classes so a sweep can verify every trial's run (config, history, summary, exit).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

FILE_HEADER = struct.Struct("<4sHB")  # b":W&B", magic 0xBEE1, version 0
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline run file holds."""

    path: str
    run_id: str | None = None
    name: str | None = None
    group: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None  # set once the run was finished

    @property
    def finished(self) -> bool:
        return self.exit_code is not None


def _payloads(data: bytes) -> Iterator[bytes]:
    """The logical records of a log file, reassembled from chunks; stops at a torn tail."""
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError("not a W&B run file")
    pos, pending = FILE_HEADER.size, b""
    while pos + CHUNK_HEADER.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER.size:
            pos += left  # block trailer padding
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        body = data[pos + CHUNK_HEADER.size: pos + CHUNK_HEADER.size + length]
        if len(body) < length or zlib.crc32(bytes([kind]) + body) & 0xFFFFFFFF != crc:
            return
        pos += CHUNK_HEADER.size + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            yield pending + body
            pending = b""


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _items(items: Any) -> dict[str, Any]:
    return {(item.key or "/".join(item.nested_key)): _value(item.value_json) for item in items}


def read_offline_run(path: str | Path) -> OfflineRun:
    """Decode one ``run-*.wandb`` file.

    Raises:
        ValueError: if the file is not a W&B run file.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    run = OfflineRun(str(path))
    for payload in _payloads(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.name, run.group = record.run.run_id, record.run.display_name, record.run.run_group
            run.config.update(_items(record.run.config.update))
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "history":
            run.history.append(_items(record.history.item))
        elif kind == "summary":
            run.summary.update(_items(record.summary.update))
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def offline_runs(wandb_dir: str | Path) -> list[OfflineRun]:
    """Every offline run under a sweep's W&B folder, oldest first."""
    return [read_offline_run(p) for p in sorted(Path(wandb_dir).glob("**/offline-run-*/run-*.wandb"))]


def incomplete_runs(wandb_dir: str | Path, trial_ids: list[str]) -> dict[str, str]:
    """Trials whose offline run is missing or unfinished (trial id → what is wrong); empty when all are complete.

    A run is complete when it holds its config, at least one history row, a summary and an exit record.
    Several files for one trial (a resumed sweep continues a run in a new file) count together.
    """
    by_id: dict[str, list[OfflineRun]] = {}
    for run in offline_runs(wandb_dir):
        by_id.setdefault(run.run_id or "", []).append(run)
    problems = {}
    for tid in trial_ids:
        runs = by_id.get(tid, [])
        if not runs:
            problems[tid] = "no offline run"
        elif not any(r.history for r in runs) or not any(r.config for r in runs):
            problems[tid] = "no history or config"
        elif not runs[-1].finished or not runs[-1].summary:
            problems[tid] = "run was not finished"
    return problems


def wait_complete(wandb_dir: str | Path, trial_ids: list[str], timeout: float = 30.0) -> dict[str, str]:
    """:func:`incomplete_runs`, polled until every run is complete or ``timeout`` seconds passed.

    ``wandb.finish()`` returns before wandb's writer process has flushed the last records to disk.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        bad = incomplete_runs(wandb_dir, trial_ids)
        if not bad or time.monotonic() > deadline:
            return bad
        time.sleep(0.5)


def sync_hint(wandb_dir: Path, trial_ids: list[str]) -> str:
    """How to upload the offline runs, and a warning for any trial whose run is incomplete."""
    runs = wandb_dir / "wandb"
    hint = f"W&B runs are offline in {wandb_dir}; upload them with: wandb sync {runs}/offline-run-*"
    bad = wait_complete(wandb_dir, trial_ids)
    if bad:
        hint += "\nwarning: incomplete W&B runs: " + ", ".join(f"{t} ({why})" for t, why in bad.items())
    return hint
