"""Storage locations, where runs live and placement settings (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayft.config.loader import build_config
from rayft.errors import ConfigError
from rayft.storage import check_location, resolve
from rayft.train.run import placement, storage_location
from tests.support import cls_config


def test_local_location_round_trip(tmp_path: Path):
    loc = resolve(tmp_path / "root")
    assert loc.local and loc.uri() == str(tmp_path / "root")
    loc.write_text("summary.json", "{}")
    loc.write_text("summary.json", '{"a": 1}')  # replaced whole, no temp files left behind
    assert loc.read_text("summary.json") == '{"a": 1}' and sorted(p.name for p in (tmp_path / "root").iterdir()) == [
        "summary.json"]
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"x" * 10)
    loc.upload(src, "copy")
    assert loc.subdirs() == ["copy"] and loc.child("copy").exists("sub/w.bin")
    out = loc.child("copy").download(tmp_path / "down")
    assert (out / "sub" / "w.bin").read_bytes() == b"x" * 10


@pytest.mark.parametrize("value,ok", [("runs", True), ("/mnt/nfs/runs", True), ("file:///tmp/x", True),
                                      ("s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http", True),
                                      ("gs://bucket/runs", True), ("ftp://host/runs", False), ("s3:///runs", False)])
def test_check_location(value: str, ok: bool):
    assert (check_location(value) is None) == ok


def test_bad_storage_and_placement_are_config_errors(tiny_bert, sentiment_csv, tmp_path):
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, output_dir="ftp://host/runs",
                     store={"path": "s3://"}, scaling={"backend": "nccl", "placement_strategy": "SPREAD"})
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    paths = {e.path for e in err.value.errors}
    assert {"output_dir", "store.path", "scaling"} <= paths, err.value
    assert "nccl needs GPUs" in str(err.value) and "ftp://host/runs" in str(err.value)


def test_placement_from_config(tiny_bert, sentiment_csv, tmp_path):
    cfg = build_config(cls_config(tiny_bert, sentiment_csv, tmp_path, scaling={
        "num_workers": 2, "cpus_per_worker": 2, "placement_strategy": "SPREAD",
        "resources_per_worker": {"worker_node": 1}}))
    got = placement(cfg, worker_cpus=1.5)
    assert got == {"num_workers": 2, "use_gpu": False, "placement_strategy": "SPREAD", "backend": "gloo",
                   "resources_per_worker": {"worker_node": 1, "CPU": 1.5}}
    cfg.scaling.gpus_per_worker = 1
    assert placement(cfg)["backend"] == "nccl" and placement(cfg)["resources_per_worker"]["GPU"] == 1
    assert storage_location(cfg).path == str((tmp_path / "runs" / "tiny-cls").resolve())
    cfg.output_dir = "s3://bucket/exp?endpoint_override=127.0.0.1:1&scheme=http"
    remote = storage_location(cfg)
    assert remote.path == "bucket/exp/tiny-cls" and remote.uri("bucket/x") == (
        "s3://bucket/x?endpoint_override=127.0.0.1:1&scheme=http")


def test_latest_sweep_is_found_where_the_runs_live(tmp_path):
    from rayft.sweep import latest_sweep_name

    loc = resolve(tmp_path / "runs" / "exp")
    assert latest_sweep_name(loc) is None  # nothing there yet
    for name, restorable in (("sweep-20250101-000000", True), ("sweep-20250102-000000", True),
                             ("sweep-20250103-000000", False), ("other", True)):
        (tmp_path / "runs" / "exp" / name).mkdir(parents=True)
        if restorable:
            (tmp_path / "runs" / "exp" / name / "tuner.pkl").write_bytes(b"")
    assert latest_sweep_name(loc) == "sweep-20250102-000000"  # the newest one Tune saved state for
