"""Storage locations, placement settings and the client side of ``rayft submit`` (no cluster needed)."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
import yaml

from rayft.cli import main
from rayft.config.loader import build_config
from rayft.errors import ConfigError
from rayft.jobs import build_submission
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


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_submission_ships_experiment_and_rayft(tiny_bert, sentiment_csv, tmp_path):
    config = _write(tmp_path, cls_config(tiny_bert, sentiment_csv, tmp_path, output_dir="runs"))
    sub = build_submission(config, ["train.lr=0.01"], working_dir=tmp_path, extra_args=["--no-export"])
    assert sub.entrypoint == "python -m rayft.cli sweep exp.yaml train.lr=0.01 --no-export"
    env = sub.runtime_env
    assert env["working_dir"] == str(tmp_path.resolve()) and "runs/" in env["excludes"]
    assert Path(env["py_modules"][0], "cli.py").is_file()  # this checkout's rayft, not the cluster's
    assert sub.metadata["rayft_experiment"] == "tiny-cls"
    assert any("output_dir='runs' is relative" in w for w in sub.warnings)


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server API
        self.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_POST = do_PUT = do_GET

    def log_message(self, *args):  # quiet
        pass


def test_bad_config_fails_before_anything_is_sent(tiny_bert, sentiment_csv, tmp_path, capsys):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        raw = cls_config(tiny_bert, sentiment_csv, tmp_path, train={"lr": -1}, method={"name": "nope"})
        config = _write(tmp_path, raw)
        code = main(["submit", str(config), "--address", f"http://127.0.0.1:{server.server_port}",
                     "--working-dir", str(tmp_path)])
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert code == 2 and "train.lr" in err and "method.name" in err and "Traceback" not in err
    assert _Recorder.hits == []  # the cluster never heard of it


def test_config_outside_working_dir_is_refused(tiny_bert, sentiment_csv, tmp_path, capsys):
    config = _write(tmp_path, cls_config(tiny_bert, sentiment_csv, tmp_path))
    (tmp_path / "elsewhere").mkdir()
    assert main(["submit", str(config), "--address", "http://127.0.0.1:1", "--working-dir",
                 str(tmp_path / "elsewhere")]) == 2
    assert "outside the working dir" in capsys.readouterr().err


def test_submit_resume_adds_the_flag_once_and_needs_a_resumable_command(tiny_bert, sentiment_csv, tmp_path,
                                                                         capsys, monkeypatch):
    from rayft import jobs

    config = _write(tmp_path, cls_config(tiny_bert, sentiment_csv, tmp_path))
    sent: list[jobs.Submission] = []
    monkeypatch.setattr(jobs, "submit", lambda address, sub, token=None: sent.append(sub) or "raysubmit_1")
    for extra in ([], ["--arg=--resume"]):
        assert main(["submit", str(config), "--address", "http://127.0.0.1:1", "--working-dir", str(tmp_path),
                     "--arg=--no-export", "--resume", *extra]) == 0
    assert [s.entrypoint for s in sent] == ["python -m rayft.cli sweep exp.yaml --no-export --resume"] * 2
    assert main(["submit", str(config), "--address", "http://127.0.0.1:1", "--run", "validate", "--resume"]) == 2
    assert "--run sweep or --run train" in capsys.readouterr().err and len(sent) == 2


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
