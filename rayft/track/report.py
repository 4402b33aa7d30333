"""``rayft report SWEEP``: a self-contained HTML page with plots, and a terminal summary.

The page inlines plotly.js once, so it opens offline in any browser: learning curves per trial,
parallel coordinates of the hyperparameters against the objective, the Pareto front (or the objective
against trainable parameters for a single-objective sweep) and a sortable table of every trial.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from rayft.errors import MissingExtraError

def _plotly():
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise MissingExtraError("plotly", "report") from None
    return go


def _metric_curve(trial: dict[str, Any], metric: str) -> tuple[list[Any], list[Any]]:
    points = [(c.get("training_iteration"), c[metric]) for c in trial.get("curve", []) if metric in c]
    return [p[0] for p in points], [p[1] for p in points]


def curves_figure(summary: dict[str, Any]):
    """One line per trial: the primary metric at each evaluation."""
    go = _plotly()
    metric = summary["metric"]
    fig = go.Figure()
    for t in summary["trials"]:
        x, y = _metric_curve(t, metric)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"{t['trial_id']} ({t['status']})"))
    fig.update_layout(title=f"Learning curves: {metric} per evaluation", xaxis_title="evaluation",
                      yaxis_title=metric, height=420)
    return fig


def _dimension(label: str, values: list[Any]) -> dict[str, Any]:
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None):
        return {"label": label, "values": [v if v is not None else float("nan") for v in values]}
    cats = sorted({json.dumps(v) for v in values})
    return {"label": label, "values": [cats.index(json.dumps(v)) for v in values],
            "tickvals": list(range(len(cats))), "ticktext": [c.strip('"') for c in cats]}


def parallel_figure(summary: dict[str, Any]):
    """Parallel coordinates: every hyperparameter and the objective, coloured by the objective."""
    go = _plotly()
    metric = summary["metric"]
    trials = [t for t in summary["trials"] if isinstance(t["metrics"].get(metric), (int, float))]
    params = sorted({k for t in trials for k in t["params"]})
    dims = [_dimension(p, [t["params"].get(p) for t in trials]) for p in params]
    scores = [t["metrics"][metric] for t in trials]
    dims.append({"label": metric, "values": scores})
    fig = go.Figure(go.Parcoords(line={"color": scores, "colorscale": "Viridis", "showscale": True},
                                 dimensions=dims))
    fig.update_layout(title=f"Hyperparameters vs {metric}", height=460)
    return fig


def pareto_figure(summary: dict[str, Any]):
    """The first two objectives of every trial, the Pareto front highlighted and joined."""
    go = _plotly()
    objectives = summary.get("objectives") or [[summary["metric"], summary["mode"]]]
    if len(objectives) < 2:
        objectives = [objectives[0], ["trainable_params", "min"]]
    (mx, _), (my, _) = objectives[0], objectives[1]
    front = set(summary.get("pareto") or [])
    trials = [t for t in summary["trials"] if all(isinstance(t["metrics"].get(m), (int, float)) for m in (mx, my))]
    fig = go.Figure()
    for on_front in (False, True):
        group = [t for t in trials if (t["trial_id"] in front) == on_front]
        if on_front:
            group.sort(key=lambda t: t["metrics"][mx])
        fig.add_trace(go.Scatter(
            x=[t["metrics"][mx] for t in group], y=[t["metrics"][my] for t in group],
            text=[t["trial_id"] for t in group], mode="lines+markers" if on_front else "markers",
            name="Pareto front" if on_front else "other trials",
            marker={"size": 11 if on_front else 8, "symbol": "star" if on_front else "circle"}))
    title = "Pareto front" if summary.get("pareto") else "Objective vs cost"
    fig.update_layout(title=f"{title}: {mx} vs {my}", xaxis_title=mx, yaxis_title=my, height=420)
    return fig


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return html.escape("" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value))


def table_html(summary: dict[str, Any], columns: list[str]) -> str:
    """Every trial as a sortable table (click a header); numbers sort as numbers."""
    params = sorted({k for t in summary["trials"] for k in t["params"]})
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["trial", "status", *params, *columns])
    body = []
    front = set(summary.get("pareto") or [])
    for t in summary["trials"]:
        mark = " ★" if t["trial_id"] == summary.get("best") else ""
        mark += " ◆" if t["trial_id"] in front else ""
        cells = [html.escape(t["trial_id"]) + mark, html.escape(t["status"])]
        cells += [_cell(t["params"].get(p)) for p in params] + [_cell(t["metrics"].get(c)) for c in columns]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table id="trials"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


SORT_JS = """
document.querySelectorAll('#trials th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const asc = th.dataset.order !== 'asc';
  th.closest('tr').querySelectorAll('th').forEach(h => delete h.dataset.order);
  th.dataset.order = asc ? 'asc' : 'desc';
  const key = r => { const t = r.cells[col].textContent.replace(/[★◆]/g, '').trim();
                     const n = parseFloat(t); return t !== '' && !isNaN(n) && /^[-+0-9.eE]+$/.test(t) ? n : t; };
  const rows = Array.from(body.rows).sort((a, b) => { const x = key(a), y = key(b);
    const c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
    return asc ? c : -c; });
  rows.forEach(r => body.appendChild(r));
}));
"""
STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{cursor:pointer;background:#f3f3f3}
th[data-order=asc]::after{content:' ▲'}th[data-order=desc]::after{content:' ▼'}td:first-child{text-align:left}"""


def render_html(summary: dict[str, Any]) -> str:
    """The whole report page as one string (plotly.js inlined once)."""
    objectives = summary.get("objectives") or [[summary["metric"], summary["mode"]]]
    columns = [m for m, _ in objectives]
    extra = ("test_accuracy", "eval_loss", "trainable_params", "latency_ms", "trial_startup_s", "training_iteration")
    columns += [c for c in extra if c not in columns and any(c in t["metrics"] for t in summary["trials"])]
    figures = {"curves": curves_figure(summary), "parallel": parallel_figure(summary), "pareto": pareto_figure(summary)}
    plots = [fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=name)
             for i, (name, fig) in enumerate(figures.items())]
    best = summary.get("best")
    goal = ", ".join(f"{mode} {metric}" for metric, mode in objectives)
    front = f"; Pareto front: {', '.join(summary['pareto'])}" if summary.get("pareto") else ""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>rayft sweep {html.escape(summary['name'])}"
            f"</title><style>{STYLE}</style></head><body><h1>Sweep {html.escape(summary['name'])}</h1>"
            f"<p>{len(summary['trials'])} trials in {summary.get('seconds', 0):.0f}s; objectives: {html.escape(goal)}; "
            f"best: {html.escape(str(best))} ★{html.escape(front)} ◆</p>"
            + "".join(f"<section>{p}</section>" for p in plots)
            + f"<h2>Trials</h2>{table_html(summary, columns)}<script>{SORT_JS}</script></body></html>")


def write_report(sweep_dir: str | Path, out: str | Path | None = None) -> Path | str:
    """Render ``<sweep>/report.html`` (or ``out``) atomically and return its path.

    A sweep on remote storage (``s3://...``) gets its report beside it there (one PUT), unless ``out`` is given.

    Raises:
        RayftError: if ``sweep_dir`` is not a finished sweep.
    """
    from rayft.storage import resolve
    from rayft.sweep.results import read_summary

    summary = read_summary(sweep_dir)
    where = resolve(str(sweep_dir))
    if not where.local and not out:
        where.write_text("report.html", render_html(summary))
        return where.uri(where.child("report.html").path)
    path = Path(out) if out else Path(sweep_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".report.", suffix=".html", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(render_html(summary))
    os.replace(tmp, path)
    return path


def print_summary(summary: dict[str, Any]) -> None:
    """The terminal side of the report: the trial table (best first) and the Pareto front."""
    from types import SimpleNamespace

    from rayft.track.table import print_table, trials_table

    rows = [SimpleNamespace(**{k: t.get(k) for k in ("trial_id", "status", "params", "metrics", "evaluations")})
            for t in summary["trials"]]
    objectives = summary.get("objectives") or [[summary["metric"], summary["mode"]]]
    extra = tuple(m for m, _ in objectives[1:]) + ("test_accuracy", "trial_startup_s")
    print_table(trials_table(rows, summary["metric"], summary["mode"], summary.get("best"), extra=extra))
    if summary.get("pareto"):
        goal = ", ".join(f"{mode} {metric}" for metric, mode in objectives)
        print(f"Pareto front ({goal}): {', '.join(summary['pareto'])}")
