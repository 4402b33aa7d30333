"""Task ``distill`` end to end: a stored teacher scores every batch inside 2 Ray Train workers (DeepSpeed ZeRO-2), the
cut student exports like any result, loads cut and answers on its teacher's classification route. The quickstart-
sized run (MiniLM-L6 with its LoRA teacher from ``experiments/quickstart.yaml``) is slow-marked."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rayft.config import build_config
from rayft.store import AdapterStore, export_checkpoint, load_for_inference
from tests.support import REPO, cls_config
from tests.support.teacher import store_teacher

pytestmark = pytest.mark.integration


def test_a_cut_student_learns_from_its_teacher_on_two_workers(ray_local, tiny_bert, sentiment_csv, tmp_path):
    from rayft.serve.api import build_catalog
    from rayft.tasks.sequence_classification import predict_proba
    from rayft.train import run_training

    raw = cls_config(tiny_bert, sentiment_csv, tmp_path, name="distill")
    store_teacher(raw, tmp_path / "teachers", steps=40)
    raw = {**raw, "task": {"name": "distill", "teacher": {"id": "teacher", "store": str(tmp_path / "teachers")},
                           "layers": 1, "alpha": 0.7, "temperature": 2.0},
           "method": {"name": "full"},
           "train": {"max_steps": 24, "eval_every": 12, "batch_size": 8, "lr": 1e-2, "eval_batch_size": 16},
           "scaling": {"num_workers": 2, "cpus_per_worker": 1, "zero_stage": 2}}
    out = run_training(build_config(raw), verbose=False)
    history = json.loads((Path(out.checkpoint_path) / "rayft_state.json").read_text())["history"]
    assert [h["step"] for h in history] == [12, 24]
    # the teacher's soft targets were computed in the workers: the KL term is reported with the cross-entropy
    assert out.metrics["train_kl"] > 0 and math.isfinite(out.metrics["train_ce"])
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert {"eval_accuracy", "eval_f1_macro", "test_accuracy"} <= set(out.metrics)

    store = AdapterStore(tmp_path / "store")
    manifest = export_checkpoint(out.checkpoint_path, None, store, adapter_id="student")
    assert (manifest.task, manifest.kind, manifest.labels) == ("distill", "full", ["neg", "pos"])
    assert build_catalog([manifest])["student"].task == "sequence_classification"  # the teacher's route
    student, tokenizer, _ = load_for_inference(store, "student")
    teacher, _, _ = load_for_inference(AdapterStore(tmp_path / "teachers"), "teacher")
    assert student.config.num_hidden_layers == 1 and teacher.config.num_hidden_layers == 2
    texts = ["the film was superb", "the film was awful"]
    assert torch.allclose(predict_proba(student, tokenizer, texts, 32).sum(-1), torch.ones(2))


@pytest.mark.slow
def test_quickstart_teacher_distils_into_three_blocks(tmp_path):
    """The quickstart's LoRA result trained and stored by the CLI, then a 3-block MiniLM student on one epoch
    (measured 2026-12-06: teacher 0.804, this student 0.701 test accuracy; docs/benchmarks.md)."""
    store = tmp_path / "store"

    def rayft(*args: str) -> None:
        subprocess.run([str(Path(sys.executable).parent / "rayft"), *args, f"output_dir={tmp_path / 'runs'}",
                        "tracking.wandb=false"], cwd=REPO, check=True, env={**os.environ, "WANDB_MODE": "offline"})

    rayft("train", "experiments/quickstart.yaml", "--export", "--store", str(store), "--id", "teacher")
    rayft("train", "experiments/distill_quickstart.yaml", "--export", "--store", str(store), "--id", "student",
          f"task.teacher.store={store}", "task.teacher.id=teacher", "train.epochs=1", "train.eval_every=125")
    teacher, student = (AdapterStore(store).manifest(i) for i in ("teacher", "student"))
    assert student.metrics["test_accuracy"] >= 0.65 and teacher.metrics["test_accuracy"] >= 0.75
    model, _, _ = load_for_inference(AdapterStore(store), "student")
    assert model.config.num_hidden_layers == 3
