"""Terminal tables for results people compare."""

from __future__ import annotations

from typing import Any, Iterable

from rich.console import Console
from rich.table import Table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return "" if value is None else str(value)


def trials_table(trials: Iterable[Any], metric: str, mode: str, best_id: str | None = None,
                 extra: tuple[str, ...] = ("test_accuracy", "test_loss", "samples_per_s")) -> Table:
    """A rich table of sweep trials, best first (trials are :class:`rayft.sweep.TrialRow`)."""
    rows = list(trials)
    params = sorted({k for t in rows for k in t.params})
    extra = tuple(k for k in extra if any(k in t.metrics for t in rows) and k != metric)
    table = Table(title=f"trials ({mode} {metric})", show_lines=False)
    for col in ["trial", "status", *params, metric, *extra, "evals"]:
        table.add_column(col, justify="left" if col in ("trial", "status") else "right")

    def key(t: Any) -> tuple[bool, float]:
        v = t.metrics.get(metric)
        missing = not isinstance(v, (int, float))
        return missing, 0.0 if missing else (-v if mode == "max" else v)

    for t in sorted(rows, key=key):
        mark = " *" if t.trial_id == best_id else ""
        table.add_row(t.trial_id + mark, t.status, *(_fmt(t.params.get(p)) for p in params),
                      _fmt(t.metrics.get(metric)), *(_fmt(t.metrics.get(k)) for k in extra), str(t.evaluations))
    return table


def print_table(table: Table, file: Any = None) -> None:
    """Print ``table`` to ``file`` (default: ``sys.stdout``), at least 120 columns wide."""
    Console(file=file, width=max(Console(file=file).width, 120)).print(table)
