"""A local S3-compatible server (moto's standalone ``moto_server``) for the tests that keep runs on S3.

The server is kept in its own virtualenv (``make s3-test-server``) because its boto dependencies pin versions that
the main environment does not use; rayft talks to it only through pyarrow's S3 filesystem, as it would to AWS,
MinIO or Ceph.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from rayft.cluster import free_port

_PINNED = Path.home() / ".cache" / "rayft" / "moto-venv" / "bin" / "moto_server"  # moto 5.1.22 (5.2.x breaks pyarrow)
MOTO = os.environ.get("RAYFT_MOTO_SERVER") or (str(_PINNED) if _PINNED.is_file() else shutil.which("moto_server") or "")
# Fake credentials for the local server; set at import so that every Ray worker started later inherits them.
for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
    os.environ.setdefault(key, value)


@pytest.fixture(scope="module")
def s3_endpoint():
    """``host:port`` of a fresh moto S3 server on 127.0.0.1 (skips when moto_server is not installed)."""
    if not MOTO or not Path(MOTO).is_file():
        pytest.skip(f"moto_server not found at {MOTO}: run `make s3-test-server`")
    port = free_port()
    proc = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def s3_uri(endpoint: str, path: str) -> str:
    return f"s3://{path}?endpoint_override={endpoint}&scheme=http&allow_bucket_creation=true"


def trial_progress(runs) -> tuple[list[str], list[str]]:
    """Trials of an experiment's sweeps (``runs``: a ``rayft.storage.Location``, S3 or local) that finished,
    and those with two or more checkpoints that are still training."""
    done, midway = [], []
    for sweep in (n for n in runs.subdirs() if n.startswith("sweep-")):
        trials = runs.child(sweep, "trials")
        for trial in trials.subdirs():
            states = [json.loads(trials.child(trial, c).read_text("rayft_state.json")) for c in
                      trials.child(trial).subdirs() if c.startswith("checkpoint_")
                      and trials.child(trial, c).is_file("rayft_state.json")]
            if any(s.get("metrics", {}).get("final") for s in states):
                done.append(trial)
            elif len(states) >= 2:  # its first checkpoint is registered by now, not merely uploaded
                midway.append(trial)
    return done, midway
