"""A sweep's results: one table row per experiment, mean ± std over seeds, paper-style plots.

``write_sweep_report`` writes ``<home>/sweeps/<id>/`` with ``report.html`` (self-contained), the
per-experiment table ``results.csv`` / ``results.parquet`` and the aggregated ``summary.csv`` /
``summary.parquet``. Plots: ASR (and clean accuracy) against the poisoning rate with one line per value of
the other swept fields, when ``attack.rate`` is swept (Turner Figs. 5–6); and a matrix of mean ASR for
every pair of swept fields (attack × defence, attack × class, …), averaged over the others.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.store import RunStore, SweepRow
from backdoorlab.experiments.tables import scalar_metrics, write_table
from backdoorlab.fileio import write_atomic

METRICS = ("victim.clean_acc", "victim.asr", "clean.clean_acc", "clean.asr")
SEED_FIELDS = ("seed",)


def _cell(v: Any) -> Any:
    """Override values as table cells: mappings and lists as JSON text, ``None`` as "null"."""
    if v is None:
        return "null"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return v


def sweep_frame(store: RunStore, sweep_id: str) -> tuple[Any, SweepRow, list[str]]:
    """``(frame, sweep, axes)``: one row per experiment — its swept fields, status and scalar metrics."""
    import pandas as pd

    sweep = store.get_sweep(sweep_id)
    items = store.sweep_items(sweep.id)
    axes: list[str] = []
    for it in items:
        axes.extend(k for k in it.overrides if k not in axes)
    runs = {}
    for it in items:
        if it.run_id:
            runs[it.run_id] = store.get(it.run_id)
    rows = []
    for it in items:
        row: dict[str, Any] = {"idx": it.idx}
        row.update({a: _cell(it.overrides.get(a)) for a in axes})
        row.update(
            status=it.status,
            attempts=it.attempts,
            run_id=it.run_id,
            seconds=it.seconds,
            error=it.error if it.status == "failed" else None,
        )
        if it.run_id in runs:
            row.update(scalar_metrics(runs[it.run_id].metrics))
        rows.append(row)
    return pd.DataFrame(rows), sweep, axes


def aggregate(frame: Any, axes: list[str]) -> Any:
    """Mean, std and count of the main metrics over seeds, per combination of the other swept fields."""
    import pandas as pd

    done = frame[frame["status"] == "done"]
    metrics = [m for m in METRICS if m in done.columns]
    keys = [a for a in axes if a not in SEED_FIELDS]
    if done.empty or not metrics:
        return pd.DataFrame(columns=[*keys, "n"])
    if keys:
        grouped = done.groupby(keys, sort=False, dropna=False)[metrics]
        out = grouped.agg(["mean", "std"])
        out.columns = [f"{m}.{s}" for m, s in out.columns]
        out["n"] = grouped.size()
        return out.reset_index()
    row = {f"{m}.{s}": getattr(done[m], s)() for m in metrics for s in ("mean", "std")}
    row["n"] = len(done)
    return pd.DataFrame([row])


def _pm(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.2%}"
    return f"{mean:.2%} ± {std:.2%}"


def _rate_figure(summary: Any, keys: list[str], metric: str) -> Any:
    import matplotlib.pyplot as plt

    others = [k for k in keys if k != "attack.rate"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    groups = summary.groupby(others, sort=False) if others else [((), summary)]
    for n, (label, part) in enumerate(groups):
        if n >= 12:
            break
        part = part.sort_values("attack.rate")
        label = label if isinstance(label, tuple) else (label,)
        name = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(others, label)) or "all"
        ax.errorbar(
            part["attack.rate"].astype(float),
            part[f"{metric}.mean"],
            yerr=part[f"{metric}.std"].fillna(0),
            marker="o",
            capsize=3,
            label=name,
        )
    rates = summary["attack.rate"].astype(float)
    if rates.min() > 0 and rates.max() / rates.min() >= 10:
        ax.set_xscale("log")
    ax.set_xlabel("poisoning rate (attack.rate)")
    ax.set_ylabel(metric.replace("victim.", "poisoned model ").replace("clean.", "clean model "))
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if others:
        ax.legend(fontsize=7, loc="best")
    return fig


def _matrix_figure(frame: Any, row_field: str, col_field: str, metric: str) -> Any:
    import matplotlib.pyplot as plt

    done = frame[frame["status"] == "done"]
    pivot = done.pivot_table(index=row_field, columns=col_field, values=metric, aggfunc="mean", sort=False)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * pivot.shape[1], 1.0 + 0.55 * pivot.shape[0]))
    im = ax.imshow(pivot.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(pivot.shape[1]), [str(c) for c in pivot.columns], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(pivot.shape[0]), [str(r) for r in pivot.index], fontsize=8)
    ax.set_xlabel(col_field)
    ax.set_ylabel(row_field)
    for (i, j), v in _cells(pivot):
        ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(f"mean {metric} (over the other fields)", fontsize=9)
    return fig


def _cells(pivot: Any) -> list[tuple[tuple[int, int], float]]:
    values = pivot.to_numpy(dtype=float)
    return [
        ((i, j), values[i, j])
        for i in range(values.shape[0])
        for j in range(values.shape[1])
        if values[i, j] == values[i, j]
    ]


def render_sweep_report(frame: Any, summary: Any, sweep: SweepRow, axes: list[str]) -> str:
    from backdoorlab.experiments.report import figure_png, html_page, table

    keys = [a for a in axes if a not in SEED_FIELDS]
    metrics = [m for m in METRICS if f"{m}.mean" in summary.columns]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(sweep.counts.items()))
    body = [
        f"<h1>Sweep {html.escape(sweep.name)} <span class='muted'>{sweep.id}</span></h1>",
        f"<p class='note'>{sweep.total} experiments ({html.escape(counts)}); swept fields: "
        f"{html.escape(', '.join(axes) or 'none')}. Mean ± std over "
        f"{'seeds' if 'seed' in axes else 'repeats'}; ASR counts triggered test images of non-target "
        "classes classified as the target.</p>",
        "<h2>Summary</h2>",
        table(
            [*keys, *metrics, "n"],
            [
                [*(r[k] for k in keys), *(_pm(r[f"{m}.mean"], r[f"{m}.std"]) for m in metrics), int(r["n"])]
                for _, r in summary.iterrows()
            ],
        ),
    ]
    if "attack.rate" in keys and "victim.asr" in metrics and summary["attack.rate"].nunique() > 1:
        body.append("<h2>Attack success against the poisoning rate</h2>")
        body.append(figure_png(_rate_figure(summary, keys, "victim.asr")))
        body.append(figure_png(_rate_figure(summary, keys, "victim.clean_acc")))
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1 :]]
    pairs = [(a, b) for a, b in pairs if frame[a].nunique() <= 15 and frame[b].nunique() <= 15][:6]
    if pairs and "victim.asr" in frame.columns:
        body.append("<h2>Matrices</h2>")
        body.extend(figure_png(_matrix_figure(frame, a, b, "victim.asr")) for a, b in pairs)
    body.append("<h2>Experiments</h2>")
    cols = ["idx", *axes, "status", "attempts", "run_id", *[m for m in METRICS if m in frame.columns]]
    body.append(
        table(cols, [[("—" if _missing(r.get(c)) else r.get(c)) for c in cols] for _, r in frame.iterrows()])
    )
    failed = frame[frame["status"] == "failed"]
    if not failed.empty:
        body.append("<h2>Failed experiments</h2>")
        body.append(
            table(
                ["idx", "attempts", "error"],
                [[r["idx"], r["attempts"], r["error"]] for _, r in failed.iterrows()],
            )
        )
    return html_page(f"Sweep {sweep.name}", "\n".join(body))


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def write_sweep_report(workspace: str | Path, sweep_id: str) -> Path:
    """Aggregate a sweep of ``workspace`` into ``<home>/sweeps/<id>/``; returns the HTML report's path."""
    from backdoorlab.experiments.runner import Workspace

    ws = Workspace(Path(workspace))
    frame, sweep, axes = sweep_frame(ws.store, sweep_id)
    if frame.empty:
        raise BackdoorLabError(f"sweep {sweep.id} has no experiments")
    summary = aggregate(frame, axes)
    out = ws.root / "sweeps" / sweep.id
    for name, df in (("results", frame), ("summary", summary)):
        write_table(df, out / f"{name}.csv")
        write_table(df, out / f"{name}.parquet")
    return write_atomic(out / "report.html", render_sweep_report(frame, summary, sweep, axes))


__all__ = ["aggregate", "render_sweep_report", "sweep_frame", "write_sweep_report"]
