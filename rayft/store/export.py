"""Export a training checkpoint (a trial's or a run's) into the adapter store."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from rayft.config.schema import ExperimentConfig
from rayft.errors import StoreError
from rayft.store.store import AdapterStore, Manifest
from rayft.train.handoff import MODEL_DIR, STATE_FILE, CheckpointState, LoopState


def default_adapter_id(cfg: ExperimentConfig, trial_id: str | None = None) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{cfg.name}-{trial_id}" if trial_id else cfg.name).strip("-.")
    return base[:128] or "adapter"


def export_checkpoint(checkpoint_dir: str, cfg: ExperimentConfig | None, store: AdapterStore, *,
                      adapter_id: str | None = None, sweep_id: str | None = None, trial_id: str | None = None,
                      metrics: dict[str, Any] | None = None, overwrite: bool = False) -> Manifest:
    """Copy ``checkpoint_dir/model`` into ``store`` with a manifest describing where it came from.

    ``cfg`` defaults to the experiment config recorded in the checkpoint.

    Raises:
        StoreError: if the checkpoint has no model folder or the id is taken.
    """
    from rayft.methods import get_method
    from rayft.models import fingerprint, resolve_model

    ckpt = _local_checkpoint(checkpoint_dir)
    model_dir = ckpt / MODEL_DIR
    if not model_dir.is_dir():
        raise StoreError(f"{ckpt} is not a rayft checkpoint (no {MODEL_DIR}/ folder)")
    state = CheckpointState.read(str(ckpt)) if (ckpt / STATE_FILE).is_file() else CheckpointState(LoopState())
    if cfg is None:
        if state.config is None:
            raise StoreError(f"{ckpt} records no experiment config; pass the config to export")
        cfg = ExperimentConfig.model_validate(state.config)
    method = get_method(cfg.method.name)
    base_path = resolve_model(cfg.model.name)
    config_json = model_dir / {"adapter": "adapter_config.json", "full": "config.json"}.get(method.artifact, "")
    architecture = None
    if method.artifact == "full" and config_json.is_file():
        architecture = (json.loads(config_json.read_text()).get("architectures") or [None])[0]
    manifest = Manifest(
        adapter_id=adapter_id or default_adapter_id(cfg, trial_id),
        kind=method.artifact, hot_swappable=method.hot_swappable,
        base_model=cfg.model.name, base_fingerprint=fingerprint(base_path), method=cfg.method.name,
        task=cfg.task.name, labels=state.labels or None, metrics=_numeric(metrics or state.metrics),
        config=cfg.model_dump(mode="json"), sweep_id=sweep_id, trial_id=trial_id,
        architecture=architecture, max_length=cfg.model.max_length,
        prompt_format=_prompt_format(cfg, base_path),
    )
    store.put(model_dir, manifest, overwrite=overwrite)
    return manifest


def _prompt_format(cfg: ExperimentConfig, base_path: str) -> dict[str, Any] | None:
    """How training rendered prompts, for results the completion and chat routes serve (else None)."""
    import rayft.tasks  # noqa: F401  (registers the tasks serving_task looks up)
    from rayft.models import load_tokenizer
    from rayft.tasks.base import serving_task
    from rayft.tasks.prompt_format import PromptFormat

    if serving_task(cfg.task.name, cfg.model_dump(mode="json")) != "sft":
        return None
    return PromptFormat.of_training(load_tokenizer(base_path), cfg).to_dict()


def _local_checkpoint(checkpoint_dir: str) -> Path:
    """The checkpoint as a local folder: itself, or a download of a remote (``s3://...``) checkpoint."""
    import hashlib

    from rayft.storage import local_copy

    return local_copy(checkpoint_dir, "checkpoints/" + hashlib.sha256(checkpoint_dir.encode()).hexdigest()[:16])


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
