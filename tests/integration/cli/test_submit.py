"""``rayft submit`` / ``jobs`` / ``logs`` / ``stop`` against a real local Ray (token auth on, as Ray 2.60 starts it)."""

from __future__ import annotations

import os
import sys

import pytest
import yaml

from rayft import jobs
from rayft.cli import main
from rayft.errors import RayftError
from tests.support import cls_config

# Ray 2.60's default for new clusters, set before any Ray code runs in this process (Ray reads the mode once).
os.environ.setdefault("RAY_AUTH_MODE", "token")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dashboard():
    """A one-node cluster with token auth on (the Ray 2.60 default); this process stays a pure HTTP client."""
    from rayft.cluster import LocalCluster

    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_API_SERVER_ADDRESS")}
    cluster = LocalCluster(head_cpus=2)
    yield cluster.dashboard_url
    cluster.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_submit_runs_the_experiment_on_the_cluster(dashboard, tiny_bert, sentiment_csv, tmp_path, capsys):
    (tmp_path / "reviews.csv").write_bytes(sentiment_csv.read_bytes())  # shipped with the working dir
    raw = cls_config(tiny_bert, tmp_path / "reviews.csv", tmp_path, output_dir=str(tmp_path / "runs"))
    raw["data"]["source"] = "reviews.csv"  # relative: resolved inside the job's working dir
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    code = main(["submit", str(tmp_path / "exp.yaml"), "train.epochs=3", "--run", "validate", "--address", dashboard,
                 "--working-dir", str(tmp_path), "--python", sys.executable, "--follow"])
    out = capsys.readouterr().out
    assert code == 0, out
    job_id = out.split()[1]
    assert "exp.yaml: ok" in out and f"job {job_id}: SUCCEEDED" in out  # `rayft validate` ran in the job
    assert main(["jobs", "--address", dashboard]) == 0
    listed = capsys.readouterr().out
    assert job_id in listed and "SUCCEEDED" in listed and "tiny-cls" in listed
    assert main(["logs", job_id, "--address", dashboard]) == 0 and "exp.yaml: ok" in capsys.readouterr().out
    assert main(["stop", job_id, "--address", dashboard]) == 0
    assert "already finished" in capsys.readouterr().out


def test_stop_a_running_job_and_token_is_required(dashboard, tiny_bert, sentiment_csv, tmp_path, capsys):
    sub = jobs.Submission(entrypoint="python -c 'import time; time.sleep(600)'", runtime_env={})
    job_id = jobs.submit(dashboard, sub)
    assert main(["stop", job_id, "--address", dashboard]) == 0
    assert jobs.wait(dashboard, job_id, timeout_s=120) == "STOPPED"
    if os.environ["RAY_AUTH_MODE"] == "token":
        with pytest.raises(Exception, match="(?i)auth|forbidden|token|403"):
            jobs.jobs(dashboard, token="not-the-cluster-token")
    with pytest.raises(RayftError, match="no job"):
        jobs.stop(dashboard, "raysubmit_missing")
    assert main(["logs", "raysubmit_missing", "--address", dashboard]) == 2
