"""Choosing what to export into the store from a finished sweep or a training run (``rayft export``,
``rayft serve --sweep``).

A source is a location (a local folder or a URI, see :mod:`rayft.storage`): a sweep folder (it holds the
sweep's summary), a Ray Train run folder (its newest published checkpoint is exported) or a checkpoint folder.
"""

from __future__ import annotations

from typing import Any

from rayft.config.schema import ExperimentConfig
from rayft.errors import RayftError, StoreError
from rayft.store.export import MODEL_DIR, default_adapter_id, export_checkpoint
from rayft.store.store import AdapterStore, Manifest
from rayft.storage import resolve


def sweep_summary(source: str) -> dict[str, Any] | None:
    """The summary of the finished sweep at ``source``, or None if ``source`` holds no sweep."""
    from rayft.sweep.results import SUMMARY_FILE, read_summary

    return read_summary(source) if resolve(source).is_file(SUMMARY_FILE) else None


def export_trials(sweep_dir: str, store: AdapterStore, *, top_k: int | None = None,
                  overwrite: bool = False) -> list[Manifest]:
    """Export the ``top_k`` best trials of a sweep (all with a checkpoint when ``None``), best first.

    Each adapter is named ``<experiment>-<trial id>`` and its manifest records the sweep, the trial and
    its metrics.

    Raises:
        RayftError: for a folder that is not a finished sweep, a bad ``top_k`` or no exportable trial.
    """
    from rayft.sweep.results import ranked, read_summary

    if top_k is not None and top_k < 1:
        raise RayftError(f"--top-k must be at least 1, got {top_k}")
    summary = read_summary(sweep_dir)
    trials = ranked(summary["trials"], summary["metric"], summary["mode"])
    if not trials:
        raise RayftError(f"{sweep_dir}: no trial has a checkpoint with {summary['metric']}; nothing to export")
    cfg = ExperimentConfig.model_validate(summary["config"])
    return [_export_trial(summary, cfg, trial, store, overwrite=overwrite) for trial in trials[:top_k or None]]


def export_one(source: str, store: AdapterStore, *, trial: str | None = None, adapter_id: str | None = None,
               overwrite: bool = False) -> Manifest:
    """Export one result: a sweep's best trial (or ``trial``), a run's newest published checkpoint, or a checkpoint.

    Raises:
        RayftError: if the sweep has no such trial with a checkpoint, or ``source`` is no sweep, run or checkpoint.
        StoreError: if the id is taken (without ``overwrite``) or the checkpoint holds no model.
    """
    summary = sweep_summary(source)
    if summary is None:
        return export_checkpoint(_checkpoint_of(source), None, store, adapter_id=adapter_id, overwrite=overwrite)
    trial_id = trial or summary.get("best")
    chosen = next((t for t in summary["trials"] if t["trial_id"] == trial_id), None)
    if chosen is None or not chosen.get("checkpoint_path"):
        raise RayftError(f"--trial {trial_id!r}: no checkpoint in sweep {source}; trials: "
                         f"{', '.join(t['trial_id'] for t in summary['trials'])}")
    return export_checkpoint(chosen["checkpoint_path"], None, store, adapter_id=adapter_id, sweep_id=summary["name"],
                             trial_id=trial_id, metrics=chosen["metrics"], overwrite=overwrite)


def export_sweep(sweep_dir: str, store: AdapterStore) -> list[tuple[str, bool]]:
    """Export every finished trial of a sweep that left a checkpoint; already exported trials are kept.

    Returns:
        ``(adapter_id, newly_exported)`` per trial, in the sweep's order.

    Raises:
        StoreError: if ``sweep_dir`` holds no sweep summary.
    """
    from rayft.sweep.results import SUMMARY_FILE

    summary = sweep_summary(sweep_dir)
    if summary is None:
        raise StoreError(f"{sweep_dir} is not a sweep folder (no {SUMMARY_FILE}); run `rayft sweep` first")
    cfg = ExperimentConfig.model_validate(summary["config"])
    out = []
    for trial in summary.get("trials", []):
        ckpt = trial.get("checkpoint_path")
        if str(trial.get("status", "")).upper() == "ERROR" or not ckpt or not resolve(ckpt).exists(MODEL_DIR):
            continue
        adapter_id = default_adapter_id(cfg, trial["trial_id"])
        if store.exists(adapter_id):
            out.append((adapter_id, False))
            continue
        out.append((_export_trial(summary, cfg, trial, store).adapter_id, True))
    return out


def _export_trial(summary: dict[str, Any], cfg: ExperimentConfig, trial: dict[str, Any], store: AdapterStore, *,
                  overwrite: bool = False) -> Manifest:
    """One trial of a sweep as ``<experiment>-<trial id>``, its manifest naming the sweep, trial and metrics."""
    return export_checkpoint(trial["checkpoint_path"], None, store, adapter_id=default_adapter_id(cfg, trial["trial_id"]),
                             sweep_id=summary.get("name"), trial_id=trial["trial_id"], metrics=trial.get("metrics"),
                             overwrite=overwrite)


def _checkpoint_of(source: str) -> str:
    """``source`` itself when it is a checkpoint, else the newest checkpoint Ray published in that run folder
    (never a half-copied one).

    Raises:
        RayftError: if ``source`` is neither.
    """
    from rayft.sweep.results import SUMMARY_FILE
    from rayft.train.checkpoints import latest_checkpoint

    if resolve(source).exists(MODEL_DIR):
        return source
    found = latest_checkpoint(source)
    if not found:
        raise RayftError(f"{source}: not a sweep folder (no {SUMMARY_FILE}), a run folder or a checkpoint")
    return found
