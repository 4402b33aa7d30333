"""Teachers for the ``distill`` tests: a tiny model trained in-process through rayft's own building blocks and put
in a store as a full-weight result, as ``rayft export`` would."""

from __future__ import annotations

from pathlib import Path

import torch

from rayft.config import build_config
from rayft.data import prepare_data
from rayft.models import fingerprint, load_tokenizer
from rayft.store import AdapterStore, Manifest
from rayft.train import engine as E
from rayft.train.recipe import Recipe


def store_teacher(raw: dict, store: Path, teacher_id: str = "teacher", *, steps: int = 30, lr: float = 3e-3,
                  task: str | None = None) -> Manifest:
    """Train ``raw``'s task (full fine-tuning, ``steps`` steps of 16 rows) and store the model as ``teacher_id``.

    ``task`` overrides the task the manifest records (for a teacher of an unsupported task)."""
    cfg = build_config({**raw, "method": {"name": "full"}})
    data = prepare_data(cfg)
    recipe = Recipe.of(cfg)
    torch.manual_seed(0)
    model = E.build_model(recipe, data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    train = data.splits["train"]
    n = len(train["input_ids"])
    for step in range(steps):
        rows = [{k: v[(step * 16 + i) % n] for k, v in train.items()} | {"index": i} for i in range(16)]
        loss = recipe.task.compute_loss(model, recipe.task.collate(rows, data.pad_id), recipe.task_params)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = store.parent / f"{teacher_id}-model"
    model.save_pretrained(folder, safe_serialization=True)
    load_tokenizer(data.model_path).save_pretrained(folder)
    manifest = Manifest(adapter_id=teacher_id, kind="full", base_model=cfg.model.name,
                        base_fingerprint=fingerprint(data.model_path), method="full", task=task or cfg.task.name,
                        labels=data.labels, metrics={}, config=cfg.model_dump(mode="json"),
                        max_length=cfg.model.max_length)
    AdapterStore(store).put(folder, manifest, overwrite=True)
    return manifest
