"""Sweep results: one row per trial (with its learning curve), the best trial, the summary file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from rayft.sweep.space import flat_params

SUMMARY_FILE = "rayft_sweep.json"
CURVE_KEYS = ("training_iteration", "timestamp", "step", "epoch", "train_loss", "lr", "samples_per_s", "eval_",
              "test_")


def _plain(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def _curve(result: Any) -> list[dict[str, Any]]:
    frame = getattr(result, "metrics_dataframe", None)
    if frame is None or frame.empty:
        return []
    cols = [c for c in frame.columns if c.startswith(CURVE_KEYS)]
    rows = frame[cols].to_dict(orient="records")
    return [{k: v for k, v in r.items() if _plain(v) and v == v} for r in rows]  # drop NaN gaps


def result_rows(grid: Any, row_type: type, loc: Any = None) -> list[Any]:
    """A row per trial of a Tune ``ResultGrid``: status, flat params, last metrics, curve.

    ``loc`` is the runs' storage location: checkpoint paths on remote storage become full URIs."""
    rows = []
    for result in grid:
        metrics = dict(result.metrics or {})
        config = metrics.pop("config", None) or result.config or {}
        status = "ERROR" if result.error else ("DONE" if metrics.get("final") else "STOPPED")
        rows.append(row_type(trial_id=str(metrics.get("trial_id") or Path(result.path).name), status=status,
                             params=flat_params(config), metrics={k: v for k, v in metrics.items() if _plain(v)},
                             checkpoint_path=loc.uri(metrics["checkpoint_path"])
                             if loc is not None and metrics.get("checkpoint_path") else metrics.get("checkpoint_path"),
                             evaluations=int(metrics.get("training_iteration") or 0), curve=_curve(result)))
    return rows


def best_trial(rows: list[Any], metric: str, mode: str) -> Any | None:
    """The best trial on the primary metric, preferring trials that trained to the end."""
    scored = [r for r in rows if isinstance(r.metrics.get(metric), (int, float)) and r.checkpoint_path]
    if not scored:
        return None
    return sorted(scored, key=lambda r: (not r.metrics.get("final"),
                                         -r.metrics[metric] if mode == "max" else r.metrics[metric]))[0]


def ranked(trials: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Summary trials with a checkpoint, best first on ``metric`` (finished trials before stopped ones)."""
    scored = [t for t in trials if t.get("checkpoint_path") and isinstance(t["metrics"].get(metric), (int, float))]
    return sorted(scored, key=lambda t: (not t["metrics"].get("final"),
                                         -t["metrics"][metric] if mode == "max" else t["metrics"][metric]))


def write_summary(outcome: Any, config: dict[str, Any]) -> str:
    """Write ``rayft_sweep.json`` atomically (a reader never sees half a file), locally or on remote storage."""
    from rayft.storage import resolve

    payload = {"name": outcome.name, "metric": outcome.metric, "mode": outcome.mode, "seconds": outcome.seconds,
               "best": outcome.best.trial_id if outcome.best else None, "config": config,
               "objectives": [list(p) for p in outcome.objectives], "pareto": outcome.pareto,
               "storage": outcome.storage, "trials": [vars(t) for t in outcome.trials]}
    where = resolve(outcome.path)
    where.write_text(SUMMARY_FILE, json.dumps(payload, indent=2, default=str))
    return where.uri(where.child(SUMMARY_FILE).path)


def read_summary(sweep_dir: str | Path) -> dict[str, Any]:
    """The summary of a finished sweep.

    Raises:
        RayftError: if the folder holds no finished sweep.
    """
    from rayft.errors import RayftError
    from rayft.storage import resolve

    where = resolve(str(sweep_dir))  # a local folder or a URI (s3://...)
    if not where.is_file(SUMMARY_FILE):
        hint = "; pass runs/<experiment>/sweep-<time>" if where.local else ""
        raise RayftError(f"{sweep_dir}: not a finished sweep folder (no {SUMMARY_FILE}){hint}")
    return json.loads(where.read_text(SUMMARY_FILE))
