"""Runs, checkpoints and the adapter store on S3: a real S3-compatible server (moto) on 127.0.0.1.

The server is moto's standalone ``moto_server`` (``tests/integration/s3_server.py``); rayft talks to it only
through pyarrow's S3 filesystem, as it would to AWS, MinIO or Ceph.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rayft.store import AdapterStore, Manifest, export_checkpoint, load_for_inference
from tests.support import cls_config, s3_server
from tests.support.s3_server import s3_uri, trial_progress
from tests.support.sweep_driver import kill_when, resume, sweep_command

pytestmark = pytest.mark.integration
s3_endpoint = s3_server.s3_endpoint  # the local S3 server (a module fixture)


def _adapter(tiny_bert: Path, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    lora = LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(out)
    return out


def test_adapter_store_on_s3_publishes_whole_versions(s3_endpoint, tiny_bert, tmp_path):
    from rayft.storage import resolve

    resolve(s3_uri(s3_endpoint, "store-bucket")).fs.create_dir("store-bucket")
    store = AdapterStore(s3_uri(s3_endpoint, "store-bucket/adapters"))
    assert store.list() == [] and not store.exists("a1")
    manifest = Manifest("a1", "adapter", str(tiny_bert), "", "lora", "sequence_classification", ["neg", "pos"],
                        {"eval_accuracy": 0.5}, {})
    store.put(_adapter(tiny_bert, tmp_path / "v1", seed=1), manifest)
    first = store.path("a1")  # a local copy for the loaders
    assert (first / "adapter_model.safetensors").is_file() and (first / "rayft.json").is_file()
    with pytest.raises(Exception, match="already exists"):
        store.put(tmp_path / "v1", manifest)
    manifest.metrics = {"eval_accuracy": 0.9}
    store.put(_adapter(tiny_bert, tmp_path / "v2", seed=2), manifest, overwrite=True)
    second = store.path("a1")
    assert second != first and store.manifest("a1").metrics == {"eval_accuracy": 0.9}
    assert (second / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "v2" / "adapter_model.safetensors").read_bytes()
    assert [m.adapter_id for m in store.list()] == ["a1"]


def test_training_checkpoints_and_export_on_s3(s3_endpoint, ray_local, tiny_bert, sentiment_csv, tmp_path):
    from rayft.config import build_config
    from rayft.storage import resolve
    from rayft.train import run_training

    resolve(s3_uri(s3_endpoint, "runs-bucket")).fs.create_dir("runs-bucket")
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name="on-s3", output_dir=s3_uri(s3_endpoint, "runs-bucket/x"),
                     train={"max_steps": 8, "eval_every": 4, "batch_size": 8})
    cfg = build_config(raw)
    out = run_training(cfg, verbose=False)
    assert out.checkpoint_path.startswith("s3://runs-bucket/x/on-s3/train-") and out.metrics["step"] == 8
    assert not (tmp_path / "runs").exists()  # nothing went to local disk
    ckpt = resolve(out.checkpoint_path)
    assert ckpt.is_file("rayft_state.json") and ckpt.exists("model/adapter_model.safetensors")

    store = AdapterStore(s3_uri(s3_endpoint, "runs-bucket/store"))
    export_checkpoint(out.checkpoint_path, None, store, adapter_id="from-s3")
    model, _, manifest = load_for_inference(store, "from-s3")
    assert manifest.labels == ["neg", "pos"] and manifest.metrics["step"] == 8
    assert type(model).__name__ == "PeftModelForSequenceClassification"


def _s3_sweep_config(tmp_path: Path, tiny_bert: Path, sentiment_csv: Path, endpoint: str, name: str,
                     **sweep) -> Path:
    import yaml

    bucket = f"{name}-bucket"
    resolve_bucket(endpoint, bucket)
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name=name, output_dir=s3_uri(endpoint, f"{bucket}/runs"),
                     store={"path": s3_uri(endpoint, f"{bucket}/store")},
                     train={"max_steps": sweep.pop("max_steps", 8), "eval_every": 4, "batch_size": 8},
                     sweep={"searcher": "random", "scheduler": "none", "seed": 0,
                            "space": {"train.lr": {"loguniform": [1e-3, 1e-2]}, "method.r": {"choice": [2, 4, 8]}},
                            **sweep})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def resolve_bucket(endpoint: str, bucket: str) -> None:
    from rayft.storage import resolve

    resolve(s3_uri(endpoint, bucket)).fs.create_dir(bucket)


def test_sweep_on_s3_resumes_and_exports_from_s3(s3_endpoint, ray_local, tiny_bert, sentiment_csv, tmp_path,
                                                  capsys, monkeypatch):
    """A whole sweep with its runs, results and adapters on S3; --resume finds it there; export reads it there."""
    import json

    from rayft.cli import main
    from rayft.storage import resolve

    monkeypatch.setenv("RAYFT_CACHE", str(tmp_path / "driver"))  # the driver-side study, kept out of ~/.cache
    config = _s3_sweep_config(tmp_path, tiny_bert, sentiment_csv, s3_endpoint, "s3-sweep", num_trials=2)
    assert main(["sweep", str(config), "--id", "s3-best"]) == 0
    out = capsys.readouterr().out
    runs = resolve(s3_uri(s3_endpoint, "s3-sweep-bucket/runs/s3-sweep"))
    (name,) = [n for n in runs.subdirs() if n.startswith("sweep-")]
    sweep_uri = runs.child(name).uri()
    assert f"results in {sweep_uri}" in out and "exported best trial as 's3-best'" in out
    summary = json.loads(runs.child(name).read_text("rayft_sweep.json"))
    assert len(summary["trials"]) == 2 and all(t["status"] == "DONE" for t in summary["trials"])
    assert all(t["checkpoint_path"].startswith("s3://s3-sweep-bucket/runs/s3-sweep/") for t in summary["trials"])
    store = AdapterStore(s3_uri(s3_endpoint, "s3-sweep-bucket/store"))
    assert store.manifest("s3-best").sweep_id == name and not (tmp_path / "runs").exists()
    assert (tmp_path / "driver" / "runs" / "s3-sweep" / name / "optuna.db").is_file()  # only the study is local

    # --resume finds the latest sweep on S3 (not on this disk); a finished sweep has nothing left to run.
    assert main(["sweep", str(config), "--resume", "--no-export"]) == 0
    resumed = capsys.readouterr().out
    assert f"resuming sweep {name}" in resumed and f"results in {sweep_uri}" in resumed
    again = json.loads(runs.child(name).read_text("rayft_sweep.json"))
    assert {t["trial_id"] for t in again["trials"]} == {t["trial_id"] for t in summary["trials"]}

    # `rayft export` of the remote sweep: every trial, from S3 into the S3 store.
    assert main(["export", sweep_uri, "--all", "--store", store.root]) == 0
    ids = {f"s3-sweep-{t['trial_id']}" for t in summary["trials"]}
    assert ids <= {m.adapter_id for m in store.list()}
    model, _, manifest = load_for_inference(store, sorted(ids)[0])
    assert manifest.sweep_id == name and manifest.metrics["step"] == 8

    assert main(["report", sweep_uri]) == 0 and runs.child(name).is_file("report.html")  # beside the sweep, on S3
    capsys.readouterr()

    # Another machine (no driver-side study here) is told why it cannot resume, and what to do instead.
    monkeypatch.setenv("RAYFT_CACHE", str(tmp_path / "elsewhere"))
    assert main(["sweep", str(config), "--resume"]) == 2
    assert "Optuna study" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_sweep_on_s3_resumes_to_completion(s3_endpoint, tiny_bert, sentiment_csv, tmp_path):
    """The driver (and the Ray it started) is killed mid-sweep; `rayft sweep --resume` finishes it from S3."""
    import json

    from rayft.paths import cache_dir
    from rayft.storage import resolve

    config = _s3_sweep_config(tmp_path, tiny_bert, sentiment_csv, s3_endpoint, "s3-resume", num_trials=3,
                              max_concurrent=1, max_steps=40)
    cmd, env = sweep_command(config)
    runs = resolve(s3_uri(s3_endpoint, "s3-resume-bucket/runs/s3-resume"))
    alive = kill_when(cmd + ["--no-export"], env, tmp_path, lambda: all(trial_progress(runs)), timeout=600,
                      poll_s=1.0)  # once one trial is done and the next one midway
    assert alive, "the sweep ended before it could be interrupted"
    (name,) = [n for n in runs.subdirs() if n.startswith("sweep-")]
    before = set(runs.child(name, "trials").subdirs())
    assert not runs.child(name).is_file("rayft_sweep.json")

    resumed = resume(cmd, env, tmp_path, "--id", "s3-resumed-best", timeout=900)
    assert f"resuming sweep {name}" in resumed.stdout
    trials = json.loads(runs.child(name).read_text("rayft_sweep.json"))["trials"]
    assert len(trials) == 3 and all(t["status"] == "DONE" and t["metrics"]["step"] == 40 for t in trials)
    assert before <= {t["trial_id"] for t in trials}  # the trials started before the kill are the same trials
    assert len({(t["params"]["train.lr"], t["params"]["method.r"]) for t in trials}) == 3  # none repeated
    assert any(t["metrics"]["resumed_from_step"] > 0 for t in trials)  # the interrupted one continued
    store = AdapterStore(s3_uri(s3_endpoint, "s3-resume-bucket/store"))
    assert store.manifest("s3-resumed-best").sweep_id == name  # the best trial's adapter, exported to S3
    shutil.rmtree(cache_dir("runs", "s3-resume"), ignore_errors=True)  # the drivers' local side (the study)
