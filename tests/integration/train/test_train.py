"""Ray Train + DeepSpeed on a real local Ray: 2 workers at ZeRO-2 and ZeRO-3, checkpoints, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rayft.config import build_config
from rayft.data import prepare_data
from rayft.store import AdapterStore, export_checkpoint, load_for_inference
from tests.support import cls_config

pytestmark = pytest.mark.integration


def _state(checkpoint: str) -> dict:
    return json.loads((Path(checkpoint) / "rayft_state.json").read_text())


def _accuracy(model, data, split: str) -> float:
    from rayft.data import Columnar, pad_batch

    rows = Columnar(data.splits[split])
    batch = pad_batch([rows[i] for i in range(len(rows))], data.pad_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"]).logits
    return (logits.argmax(-1) == batch["labels"]).float().mean().item()


@pytest.mark.parametrize("stage", [2, 3])
def test_two_workers_learn_checkpoint_and_resume(stage, ray_local, tiny_bert, sentiment_csv, tmp_path):
    from rayft.train import run_training

    # LoRA on the tiny random BERT sits at ln 2 for its first ~15 steps: 24 steps at a high lr leave that plateau.
    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name=f"zero{stage}",
                     train={"max_steps": 24, "eval_every": 8, "batch_size": 8, "lr": 5e-2},
                     scaling={"num_workers": 2, "cpus_per_worker": 1, "zero_stage": stage})
    cfg = build_config(raw)
    first = run_training(cfg, verbose=False)
    assert first.metrics["step"] == 24 and first.checkpoint_path

    # The loss goes down, on training batches and on held-out data.
    history = _state(first.checkpoint_path)["history"]
    assert [h["step"] for h in history] == [8, 16, 24]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]

    # The checkpoint round-trips: the exported adapter predicts what the run measured.
    store = AdapterStore(tmp_path / "store")
    manifest = export_checkpoint(first.checkpoint_path, None, store, adapter_id=f"z{stage}")
    assert manifest.labels == ["neg", "pos"] and manifest.kind == "adapter"
    model, _, _ = load_for_inference(store, f"z{stage}")
    data = prepare_data(cfg)
    assert _accuracy(model, data, "validation") == pytest.approx(first.metrics["eval_accuracy"], abs=1e-6)

    # Resume continues the step count from the last checkpoint instead of starting over.
    longer = build_config({**raw, "train": {**raw["train"], "max_steps": 32}})
    second = run_training(longer, resume=True, verbose=False)
    assert second.run_dir == first.run_dir
    history = _state(second.checkpoint_path)["history"]
    assert [h["step"] for h in history] == [8, 16, 24, 32]
    assert second.metrics["step"] == 32


def test_full_fine_tune_with_optimizer_offload_exports_a_model_folder(ray_local, tiny_bert, sentiment_csv, tmp_path):
    from rayft.train import run_training

    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name="full-offload", method={"name": "full"},
                     train={"max_steps": 24, "eval_every": 8, "batch_size": 16, "lr": 3e-3},
                     scaling={"num_workers": 1, "zero_stage": 1, "offload_optimizer": True})
    raw["method"] = {"name": "full"}
    cfg = build_config(raw)
    out = run_training(cfg, verbose=False)
    history = _state(out.checkpoint_path)["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    store = AdapterStore(tmp_path / "store")
    manifest = export_checkpoint(out.checkpoint_path, None, store, adapter_id="full-model")
    assert manifest.kind == "full" and (store.path("full-model") / "config.json").is_file()
    model, _, _ = load_for_inference(store, "full-model")
    assert _accuracy(model, prepare_data(cfg), "validation") == pytest.approx(out.metrics["eval_accuracy"], abs=1e-6)


def test_sft_on_a_tiny_llama_masks_prompts_and_learns(ray_local, tiny_llama, chat_jsonl, tmp_path):
    from rayft.train import run_training

    raw = cls_config(tiny_llama, chat_jsonl, tmp_path, name="tiny-sft", task={"name": "sft"},
                     method={"target_modules": ["q_proj", "v_proj"], "r": 8},
                     train={"max_steps": 12, "eval_every": 6, "batch_size": 8, "lr": 1e-2},
                     scaling={"num_workers": 1, "zero_stage": 0})
    raw["data"] = {"source": str(chat_jsonl), "validation_size": 8, "test_size": 8}
    out = run_training(build_config(raw), verbose=False)
    history = _state(out.checkpoint_path)["history"]
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]
    assert out.metrics["test_perplexity"] > 1.0


def test_a_run_on_a_ray_of_its_own_leaves_out_the_dashboard_and_the_cleaner(tiny_bert, sentiment_csv, tmp_path):
    """`rayft train` with no cluster starts a local Ray that ends with the run: nothing can outlive it, so the
    dashboard and Ray Train's placement-group cleaner (which polls the dashboard every second) are left out, and
    it has no autoscaler, so Ray Train's autoscaling coordinator is too."""
    raw = tmp_path / "experiment.json"
    raw.write_text(json.dumps(cls_config(tiny_bert, sentiment_csv, tmp_path, train={"max_steps": 4, "eval_every": 2})))
    script = f"""
import json, ray
from rayft.config import build_config
from rayft.train import run_training
out = run_training(build_config(json.load(open({str(raw)!r}))), verbose=False)
actors = sorted({{a["ActorClassName"] for a in ray._private.state.actors().values()}})
print(json.dumps({{"step": out.metrics["step"], "actors": actors,
                  "dashboard": ray._private.worker.global_worker.node.address_info.get("webui_url")}}))
"""
    env = {**os.environ, "RAY_ADDRESS": ""}  # whatever the test session runs: this process starts its own Ray
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["step"] == 4 and not seen["dashboard"]
    assert "RayTrainWorker" in seen["actors"] and "PlacementGroupCleaner" not in seen["actors"]
    assert not [name for name in seen["actors"] if "AutoscalingCoordinator" in name]  # no autoscaler to ask
