"""Worker side of the method table test: inside one real 2-worker Ray Train run, every method trains a tiny
model through rayft's own building blocks (model + method, DeepSpeed engine with the configured ZeRO stage,
the unfreezing hook, saving). Rank 0 records what the driver checks: losses, which parameters changed, the
trained model's logits on a fixed batch, and the saved result."""

from __future__ import annotations

import json
import os
from typing import Any

import torch


def table_loop(config: dict[str, Any]) -> None:
    """Train every case in ``config["cases"]`` one after another on this worker."""
    from rayft.config.schema import ExperimentConfig
    from rayft.train.worker import driver_worker

    rank, world = driver_worker(threads=1)
    for case in config["cases"]:
        cfg = ExperimentConfig.model_validate(case["experiment"])
        record = train_case(cfg, config["data"], rank, world, os.path.join(config["out"], case["id"]))
        if rank == 0:
            with open(os.path.join(config["out"], case["id"], "record.json"), "w") as fh:
                json.dump(record, fh)


def train_case(cfg, data, rank: int, world: int, out_dir: str) -> dict[str, Any]:
    """Train one method for ``cfg.train.max_steps`` steps; save it; return what the driver checks."""
    from rayft.methods import method_summary
    from rayft.train import engine as E
    from rayft.train.recipe import Recipe
    from rayft.train.worker import _unfreeze_hook

    torch.manual_seed(cfg.train.seed)
    recipe = Recipe.of(cfg)
    model = E.build_model(recipe, data)
    info = method_summary(recipe.method, model, recipe.method_params)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loader = E.make_loader(data.splits["train"], recipe, data.pad_id, rank, world, train=True)
    engine = E.build_engine(model, recipe, cfg.train.max_steps, steps_per_epoch=len(loader))
    hook = _unfreeze_hook(engine, recipe, len(loader), lambda message: None)
    losses: list[float] = []
    while engine.global_steps < cfg.train.max_steps:
        for batch in loader:
            loss = engine(**E.model_inputs(batch, engine.device)).loss
            engine.backward(loss)
            engine.step()
            hook(engine.global_steps)
            losses.append(loss.item())
            if engine.global_steps >= cfg.train.max_steps:
                break
    changed = changed_parameters(engine.module, before, cfg.scaling.zero_stage == 3)
    model_dir = os.path.join(out_dir, "model")
    os.makedirs(out_dir, exist_ok=True)
    E.save_model(engine, recipe, data, model_dir, rank)
    engine.eval()
    with torch.no_grad():
        logits = engine.module(**E.model_inputs(probe_batch(data), engine.device)).logits.float()
    if rank == 0:
        with open(os.path.join(out_dir, "rayft_state.json"), "w") as fh:
            json.dump({"labels": data.labels, "config": cfg.model_dump(mode="json"), "metrics": {}}, fh)
    return {"losses": losses, "changed": changed, "logits": logits.tolist(), **info,
            "trainable": sorted(n for n, p in engine.module.named_parameters() if p.requires_grad)}


def changed_parameters(module: torch.nn.Module, before: dict[str, torch.Tensor], zero3: bool) -> list[str]:
    """Names of parameters that differ from ``before`` (gathered first under ZeRO-3)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None, enabled=zero3):
        return sorted(n for n, p in module.named_parameters() if not torch.equal(p.detach(), before[n]))


def probe_batch(data) -> dict[str, torch.Tensor]:
    """The first validation rows as one padded batch (labels dropped)."""
    from rayft.data import Columnar, pad_batch

    rows = Columnar(data.splits["validation"])
    batch = pad_batch([rows[i] for i in range(min(8, len(rows)))], data.pad_id)
    return {k: v for k, v in batch.items() if k not in ("labels", "index")}
