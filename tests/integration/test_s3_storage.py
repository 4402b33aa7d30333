"""Runs, checkpoints and the adapter store on S3: a real S3-compatible server (moto) on 127.0.0.1.

The server is moto's standalone ``moto_server``, kept in its own virtualenv (``make s3-test-server``) because
its boto dependencies pin versions that the main environment does not use; rayft talks to it only through
pyarrow's S3 filesystem, as it would to AWS, MinIO or Ceph.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import cls_config

from rayft.cluster import free_port
from rayft.store import AdapterStore, Manifest, export_checkpoint, load_for_inference

pytestmark = pytest.mark.integration

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
