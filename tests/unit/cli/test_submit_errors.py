"""``rayft submit`` to a head whose job agent never started: a message that says what failed, what it means and what
to try, exit 1, no traceback.

The head here is a small HTTP server that answers as such a head does (its dashboard answers, its job route says
"No available agent to submit job"); Ray's own ``JobSubmissionClient`` talks to it, and raises what it raises
against a real head.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path

import pytest
import yaml

from rayft import jobs
from rayft.cli import main
from tests.support import cls_config


class _HeadWithoutAgent(http.server.BaseHTTPRequestHandler):
    posts: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server API
        if self.path.startswith("/api/version"):
            self._answer(200, json.dumps({"version": "4", "ray_version": "2.60.0", "ray_commit": "0"}))
        else:
            self._answer(404, "")  # no package uploaded yet

    def do_PUT(self):  # noqa: N802 - the working dir's package upload
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(200, "")

    def do_POST(self):  # noqa: N802 - the job itself
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.posts.append(self.path)
        self._answer(500, "No available agent to submit job")

    def _answer(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(autouse=True)
def _auth_mode_restored():
    """``jobs.client`` turns on Ray's token mode in its process when a token exists (``~/.ray/auth_token``): in a
    test session that would flip every later local Ray's mode mid-session, which Ray's clients do not follow."""
    saved = os.environ.get("RAY_AUTH_MODE")
    yield
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = saved


@pytest.fixture
def head():
    server = http.server.HTTPServer(("127.0.0.1", 0), _HeadWithoutAgent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_head_without_job_agent_is_explained_and_exits_1(head, tiny_bert, sentiment_csv, tmp_path, monkeypatch,
                                                            capsys):
    monkeypatch.setattr(jobs, "AGENT_WAIT_S", 3.0)  # instead of 90 s: two or three tries
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(cls_config(tiny_bert, sentiment_csv, tmp_path, output_dir="runs")))
    code = main(["submit", str(config), "--address", head, "--working-dir", str(tmp_path)])
    err = capsys.readouterr().err

    assert code == 1
    assert len(_HeadWithoutAgent.posts) >= 2  # it retried while the agent might still come up
    assert "has no job agent yet; retrying" in err
    assert f"could not submit to {head}: its head node has no job agent" in err  # what failed
    assert "What it means:" in err and "port was already taken" in err
    assert "What to try:" in err and "--dashboard-agent-listen-port" in err
    assert "Traceback" not in err


def test_any_other_refusal_is_a_cluster_error_too(head, monkeypatch):
    monkeypatch.setattr(_HeadWithoutAgent, "do_POST", lambda self: (
        self.rfile.read(int(self.headers.get("Content-Length") or 0)), self._answer(500, "disk full")))
    with pytest.raises(jobs.ClusterError, match="refused the job: Request failed with status code 500: disk full"):
        jobs.submit(head, jobs.Submission(entrypoint="python -c pass", runtime_env={}))
    assert jobs.ClusterError.exit_code == 1


def test_the_message_names_the_cause_and_the_remedy():
    text = jobs.no_agent_message("http://head:8265", RuntimeError("Request failed with status code 500: "
                                                                  "No available agent to submit job."))
    first, meaning, remedy = text.splitlines()
    assert first.startswith("could not submit to http://head:8265") and "No available agent" in first
    assert meaning.strip().startswith("What it means:") and remedy.strip().startswith("What to try:")
    assert Path("/tmp/ray/session_latest/logs").name in remedy
