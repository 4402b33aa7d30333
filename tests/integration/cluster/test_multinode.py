"""Faults on a multi-node Ray cluster on one machine (``rayft.cluster.LocalCluster``: a head and two worker nodes,
each with its own raylet and object store). Data reaches workers through the object store; nothing relies on the
driver's node. These runs take minutes: ``pytest -m slow tests/integration/test_multinode.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rayft.paths import cache_dir
from tests.support import cls_config, s3_server
from tests.support.s3_server import s3_uri, trial_progress

# Ray 2.60's default for new clusters, set before any Ray code runs in this process (Ray reads the mode once).
os.environ.setdefault("RAY_AUTH_MODE", "token")

pytestmark = [pytest.mark.integration, pytest.mark.slow]
s3_endpoint = s3_server.s3_endpoint  # a local S3 server (a module fixture), started only by the tests that use it


@pytest.fixture(scope="module")
def cluster():
    from rayft.cluster import LocalCluster

    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_API_SERVER_ADDRESS")}
    local = LocalCluster(head_cpus=1)
    for _ in range(2):
        local.add_node(num_cpus=2, resources={"trainer": 1})
    yield local
    local.shutdown()
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _experiment(tmp_path: Path, tiny_bert: Path, sentiment_csv: Path, name: str) -> Path:
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name=name,
                     train={"max_steps": 24, "eval_every": 4, "batch_size": 8},
                     scaling={"num_workers": 1, "cpus_per_worker": 1, "resources_per_worker": {"trainer": 1},
                              "placement_strategy": "SPREAD"},
                     sweep={"num_trials": 2, "max_concurrent": 1, "searcher": "random", "scheduler": "none",
                            "space": {"train.lr": {"loguniform": [1e-3, 1e-2]}}})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _checkpoints(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("**/checkpoint_*/rayft_state.json"))


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"driver exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-4000:]}")
        time.sleep(1.0)
    pytest.fail(f"timed out waiting for {what}")


def _train_workers(cluster) -> list[dict]:
    from ray.util.state import list_actors

    return [a for a in list_actors(address=cluster.dashboard_url, detail=True, limit=1000,
                                   filters=[("class_name", "=", "RayTrainWorker")])]


def _summary(root: Path) -> dict:
    found = sorted(root.glob("sweep-*/rayft_sweep.json"))
    assert found, f"no sweep summary under {root}"
    return json.loads(found[-1].read_text())


def _steps(trial_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (trial_dir / "result.json").read_text().splitlines() if line]


def test_node_lost_mid_trial_restarts_from_checkpoint_elsewhere(cluster, tiny_bert, sentiment_csv, tmp_path):
    config = _experiment(tmp_path, tiny_bert, sentiment_csv, "node-loss")
    root = tmp_path / "runs" / "node-loss"
    proc = subprocess.Popen([sys.executable, "-m", "rayft.cli", "sweep", str(config), "--address", cluster.address,
                             "--no-export"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: _checkpoints(root), 300, "the first checkpoint", proc)
        alive = _wait_for(lambda: [a for a in _train_workers(cluster) if a["state"] == "ALIVE"], 60, "a train worker")
        victim = cluster.node_of(alive[0]["node_id"])
        assert victim is not None and victim is not cluster.head
        cluster.remove_node(victim)  # the machine running the trial's worker is gone
        out, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-4000:]
    summary = _summary(root)
    assert len(summary["trials"]) == 2 and all(t["status"] == "DONE" for t in summary["trials"]), summary["trials"]
    assert all(t["metrics"]["step"] == 24 for t in summary["trials"])
    nodes = {a["node_id"] for a in _train_workers(cluster)}
    assert victim.node_id in nodes and len(nodes) >= 2  # the trial's worker moved to the surviving node
    # The interrupted trial continued from its checkpoint: its step count never went back to the start.
    for trial_dir in (p for p in (root / summary["name"]).iterdir() if (p / "result.json").is_file()):
        steps = _steps(trial_dir)
        assert steps[-1] == 24 and steps == sorted(steps) and steps.count(4) == 1, (trial_dir.name, steps)


def test_driver_killed_mid_sweep_then_resubmitted_job_finishes(cluster, tiny_bert, sentiment_csv, tmp_path):
    from rayft import jobs
    from rayft.train.checkpoints import is_complete, latest_checkpoint

    config = _experiment(tmp_path, tiny_bert, sentiment_csv, "driver-kill")
    root = tmp_path / "runs" / "driver-kill"  # shared storage: every node and both drivers see it
    sub = jobs.build_submission(config, working_dir=tmp_path, extra_args=["--no-export"], python=sys.executable)
    first = jobs.submit(cluster.dashboard_url, sub)
    client = jobs.job_client(cluster.dashboard_url)
    def checkpointed():
        status = str(client.get_job_status(first).value)
        assert status not in jobs.TERMINAL, f"job {status}:\n{client.get_job_logs(first)[-4000:]}"
        return _checkpoints(root)

    _wait_for(checkpointed, 480, "the first checkpoint of the submitted sweep")
    pid = _wait_for(lambda: (client.get_job_info(first).driver_info or None), 60, "the driver's pid").pid
    os.kill(int(pid), signal.SIGKILL)  # the head-side driver dies mid-sweep
    assert jobs.wait(cluster.dashboard_url, first, timeout_s=120) in ("FAILED", "STOPPED")
    # What the killed sweep checkpointed is intact and readable.
    runs = sorted({p.parent for p in _checkpoints(root)})
    assert runs and all(latest_checkpoint(str(r)) and is_complete(latest_checkpoint(str(r))) for r in runs)

    second = jobs.submit(cluster.dashboard_url, sub)  # a plain resubmission: a new sweep (see --resume below)
    assert jobs.wait(cluster.dashboard_url, second, timeout_s=600) == "SUCCEEDED", client.get_job_logs(second)[-4000:]
    summary = _summary(root)
    assert len(summary["trials"]) == 2 and all(t["status"] == "DONE" for t in summary["trials"])
    assert {j["id"] for j in jobs.jobs(cluster.dashboard_url)} >= {first, second}


@pytest.mark.parametrize("storage", ["shared-folder", "s3"])
def test_stopped_job_resubmitted_with_resume_finishes_the_same_sweep(storage, cluster, tiny_bert, sentiment_csv,
                                                                      tmp_path, capsys, request):
    from rayft import jobs
    from rayft.cli import main
    from rayft.storage import resolve

    name = f"job-resume-{storage}"
    output_dir = str(tmp_path / "runs")  # shared storage: every node and both jobs see it
    if storage == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        resolve(s3_uri(endpoint, "jobs-bucket")).fs.create_dir("jobs-bucket")
        output_dir = s3_uri(endpoint, "jobs-bucket/runs")
    # Trials long enough that the one caught midway is still training when the stop takes effect.
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name=name, output_dir=output_dir,
                     train={"max_steps": 60, "eval_every": 5, "batch_size": 8},
                     scaling={"num_workers": 1, "cpus_per_worker": 1, "resources_per_worker": {"trainer": 1}},
                     sweep={"num_trials": 3, "max_concurrent": 1, "searcher": "random", "scheduler": "none",
                            "seed": 0, "space": {"train.lr": {"loguniform": [1e-3, 1e-2]},
                                                 "method.r": {"choice": [2, 4, 8]}}})
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(raw))
    runs = resolve(output_dir).child(name)
    submit = ["submit", str(config), "--address", cluster.dashboard_url, "--working-dir", str(tmp_path),
              "--python", sys.executable, "--arg=--no-export"]
    assert main(submit) == 0
    first = capsys.readouterr().out.split()[1]
    client = jobs.job_client(cluster.dashboard_url)

    def interrupted_midway():
        status = str(client.get_job_status(first).value)
        assert status not in jobs.TERMINAL, f"job {status}:\n{client.get_job_logs(first)[-4000:]}"
        done, midway = trial_progress(runs)
        return done and midway

    _wait_for(interrupted_midway, 600, "one finished trial and one midway")
    assert main(["stop", first, "--address", cluster.dashboard_url]) == 0  # `rayft stop`, mid-trial
    assert jobs.wait(cluster.dashboard_url, first, timeout_s=120) == "STOPPED"
    (sweep,) = [n for n in runs.subdirs() if n.startswith("sweep-")]
    before = set(runs.child(sweep, "trials").subdirs())
    assert not runs.child(sweep).is_file("rayft_sweep.json")

    capsys.readouterr()
    assert main([*submit, "--resume", "--wait"]) == 0, client.get_job_logs(capsys.readouterr().out.split()[1])[-4000:]
    second = capsys.readouterr().out.split()[1]
    assert second != first and f"resuming sweep {sweep}" in client.get_job_logs(second)
    trials = json.loads(runs.child(sweep).read_text("rayft_sweep.json"))["trials"]  # the same sweep, not a new one
    assert len(trials) == 3 and all(t["status"] == "DONE" and t["metrics"]["step"] == 60 for t in trials), trials
    assert before <= {t["trial_id"] for t in trials}
    assert len({(t["params"]["train.lr"], t["params"]["method.r"]) for t in trials}) == 3  # no configuration twice
    assert any(t["metrics"]["resumed_from_step"] > 0 for t in trials)  # the stopped trial continued
    assert [n for n in runs.subdirs() if n.startswith("sweep-")] == [sweep]
    if storage == "s3":
        shutil.rmtree(cache_dir("runs", name), ignore_errors=True)  # the head-side driver's study
