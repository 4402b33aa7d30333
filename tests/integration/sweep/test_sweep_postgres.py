"""The Optuna study of a sweep in PostgreSQL (Debian's server on 127.0.0.1) instead of the SQLite default."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support import cls_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = next((p for p in ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin") if Path(p, "initdb").exists()),
           str(Path(shutil.which("initdb") or "/nonexistent").parent))


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture()
def postgres_url():
    pytest.importorskip("psycopg2", reason="pip install psycopg2-binary")
    if not Path(BIN, "initdb").exists():
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    from rayft.cluster import free_port

    data = Path(tempfile.mkdtemp(prefix="rayft-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    subprocess.run(_as_postgres([f"{BIN}/initdb", "-D", str(data / "db"), "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True)
    port = free_port()
    subprocess.run(_as_postgres([f"{BIN}/pg_ctl", "-D", str(data / "db"), "-w", "-l", str(data / "log"), "-o",
                                 f"-h 127.0.0.1 -p {port} -k {data}", "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"  # SQLAlchemy 2.1 defaults to psycopg 3
    finally:
        subprocess.run(_as_postgres([f"{BIN}/pg_ctl", "-D", str(data / "db"), "-m", "fast", "stop"]),
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_study_lives_in_postgres(ray_local, postgres_url, tiny_bert, sentiment_csv, tmp_path):
    import optuna
    from ray import tune

    from rayft.config import build_config
    from rayft.sweep import apply_sample
    from rayft.sweep.search import make_searcher

    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, sweep={
        "num_trials": 4, "searcher": "tpe", "storage": postgres_url,
        "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}, "method.name": {"choice": ["lora", "full"]}},
        "methods": {"lora": {"r": {"choice": [2, 4]}}, "full": {}}})
    cfg = build_config(raw)
    searcher, num_trials, param_space = make_searcher(cfg, tmp_path / "sweep", "pg-sweep")
    base = cfg.model_dump(mode="json")

    def trial(config):
        c = apply_sample(base, config)
        tune.report({"eval_accuracy": c.train.lr * 10 + (0.1 if c.method.name == "lora" else 0.0)})

    tune.Tuner(tune.with_resources(trial, {"CPU": 0.01}), param_space=param_space,
               tune_config=tune.TuneConfig(search_alg=searcher, num_samples=num_trials),
               run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0)).fit()
    time.sleep(0.5)
    study = optuna.load_study(study_name="pg-sweep", storage=postgres_url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and not (tmp_path / "sweep" / "optuna.db").exists()
    assert all(("method.lora.r" in t.params) == (t.params["method.name"] == "lora") for t in done)
