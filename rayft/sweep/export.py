"""Export several trials of a finished sweep (``rayft export SWEEP --top-k K`` / ``--all``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rayft.errors import RayftError
from rayft.sweep.results import ranked, read_summary


def export_trials(sweep_dir: str | Path, store: Any, *, top_k: int | None = None,
                  overwrite: bool = False) -> list[Any]:
    """Export the ``top_k`` best trials (all with a checkpoint when ``None``), best first.

    Each adapter is named ``<experiment>-<trial id>`` and its manifest records the sweep, the trial and
    its metrics.

    Raises:
        RayftError: for a folder that is not a finished sweep, a bad ``top_k`` or no exportable trial.
    """
    from rayft.config.schema import ExperimentConfig
    from rayft.store import default_adapter_id, export_checkpoint

    if top_k is not None and top_k < 1:
        raise RayftError(f"--top-k must be at least 1, got {top_k}")
    summary = read_summary(sweep_dir)
    trials = ranked(summary["trials"], summary["metric"], summary["mode"])
    if not trials:
        raise RayftError(f"{sweep_dir}: no trial has a checkpoint with {summary['metric']}; nothing to export")
    cfg = ExperimentConfig.model_validate(summary["config"])
    exported = []
    for trial in trials[:top_k] if top_k else trials:
        exported.append(export_checkpoint(
            trial["checkpoint_path"], None, store, adapter_id=default_adapter_id(cfg, trial["trial_id"]),
            sweep_id=summary["name"], trial_id=trial["trial_id"], metrics=trial["metrics"], overwrite=overwrite))
    return exported
