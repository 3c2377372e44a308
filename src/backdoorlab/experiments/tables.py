"""Runs as tables: flatten configs and metrics into columns, filter by any field, export for pandas.

A run becomes one row: ``id``, ``name``, ``created``, ``seconds``, then ``config.<dotted field>`` for every
config leaf (``config.attack.rate``) and ``metrics.<dotted field>`` for every scalar metric
(``metrics.victim.asr``; per-epoch histories and per-class lists are left out). Filters are
``field=value`` with the field dotted from the config (``attack.name=badnets``) or, when it starts with
``metrics.``, from the metrics; values are parsed as YAML, so ``attack.rate=0.1`` compares numbers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.store import RunRecord, RunStore


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": leaf}``; lists are kept as JSON text (one cell each)."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        if not obj and prefix:
            out[prefix] = None
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        out[prefix] = json.dumps(obj)
    else:
        out[prefix] = obj
    return out


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A run's metrics flattened to scalar columns (histories and per-class lists left out)."""
    return {
        k: v
        for k, v in flatten({k: v for k, v in metrics.items() if k != "history"}).items()
        if isinstance(v, (int, float, str, bool)) or v is None
        if not (isinstance(v, str) and v.startswith("["))  # per-class lists: not a column
    }


def run_row(record: RunRecord) -> dict[str, Any]:
    """One run as a flat dict of columns."""
    row: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "created": record.created,
        "seconds": record.seconds,
        "report": record.report,
    }
    row.update({f"config.{k}": v for k, v in flatten(record.config).items()})
    row.update({f"metrics.{k}": v for k, v in scalar_metrics(record.metrics).items()})
    return row


def parse_where(filters: Iterable[str]) -> list[tuple[str, Any]]:
    """``["attack.name=badnets", "metrics.victim.asr=0.5"]`` as ``[(column, value), …]``."""
    import yaml

    out = []
    for text in filters:
        if "=" not in text:
            raise BackdoorLabError(f"--where {text!r}: write it as field=value, e.g. attack.name=badnets")
        key, value = (t.strip() for t in text.split("=", 1))
        if not key:
            raise BackdoorLabError(f"--where {text!r}: the field name is empty")
        column = key if key.startswith(("metrics.", "config.")) or key in ("id", "name") else f"config.{key}"
        out.append((column, yaml.safe_load(value)))
    return out


def _matches(row: dict[str, Any], where: Sequence[tuple[str, Any]]) -> bool:
    for column, value in where:
        have = row.get(column)
        if isinstance(value, (int, float)) and isinstance(have, (int, float)) and not isinstance(have, bool):
            if abs(float(have) - float(value)) > 1e-12 * max(1.0, abs(float(value))):
                return False
        elif have != value and str(have) != str(value):
            return False
    return True


def run_rows(store: RunStore, where: Iterable[str] = (), ids: Iterable[str] | None = None) -> list[dict]:
    """The runs of ``store`` (optionally only ``ids``) that match every ``where`` filter, as rows."""
    conditions = parse_where(where)
    records = store.list() if ids is None else [store.get(i) for i in ids]
    rows = [run_row(r) for r in records]
    if conditions:
        known = set().union(*(r.keys() for r in rows)) if rows else set()
        for column, _ in conditions:
            if rows and column not in known:
                raise BackdoorLabError(
                    f"--where: no run has the field {column!r}; fields look like attack.rate, "
                    "model.name, metrics.victim.asr"
                )
    return [r for r in rows if _matches(r, conditions)]


def runs_frame(store: RunStore, where: Iterable[str] = (), ids: Iterable[str] | None = None) -> Any:
    """The matching runs as a pandas DataFrame (one row per run, one column per field)."""
    import pandas as pd

    return pd.DataFrame(run_rows(store, where, ids))


def write_table(frame: Any, path: str | Path) -> Path:
    """Write a DataFrame as Parquet (``.parquet``) or CSV (``.csv``), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise BackdoorLabError(f"--out {path}: the file must end in .parquet or .csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame = frame.copy()
    for column in frame.columns:  # a column mixing numbers and text (e.g. a swept "null") becomes text
        kinds = {type(v) for v in frame[column] if v is not None and v == v}
        if frame[column].dtype == object and len(kinds) > 1:
            frame[column] = [None if v is None else str(v) for v in frame[column]]
    try:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            try:
                frame.to_parquet(tmp, index=False)
            except ImportError:
                raise BackdoorLabError(
                    "writing Parquet needs pyarrow: pip install pyarrow (or write .csv)"
                ) from None
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def compare(store: RunStore, ids: Sequence[str]) -> str:
    """A text table of the config fields that differ between runs, then their main metrics."""
    if len(ids) < 2:
        raise BackdoorLabError("runs compare: give at least two run ids")
    rows = run_rows(store, ids=ids)
    configs = [{k: v for k, v in r.items() if k.startswith("config.")} for r in rows]
    fields = sorted({k for c in configs for k in c})
    differ = [f for f in fields if len({json.dumps(c.get(f), sort_keys=True) for c in configs}) > 1]
    metrics = [
        m
        for m in (
            "metrics.victim.clean_acc",
            "metrics.victim.asr",
            "metrics.clean.clean_acc",
            "metrics.clean.asr",
        )
        if any(m in r for r in rows)
    ]
    width = max([len(f) - 7 for f in differ + metrics] + [10])
    lines = [f"{'field':<{width}}  " + "  ".join(f"{r['id']:>12}" for r in rows)]
    for f in differ:
        lines.append(f"{f[7:]:<{width}}  " + "  ".join(f"{_cell(c.get(f)):>12}" for c in configs))
    if not differ:
        lines.append("(the configs are identical)")
    for m in metrics:
        lines.append(f"{m[8:]:<{width}}  " + "  ".join(f"{_cell(r.get(m), pct=True):>12}" for r in rows))
    return "\n".join(lines)


def _cell(v: Any, pct: bool = False) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2%}" if pct else f"{v:g}"
    return str(v)[:12]


def export_runs(store: RunStore, out: str | Path, where: Iterable[str] = ()) -> tuple[Path, int]:
    """Write the matching runs to ``out`` (.parquet or .csv); returns the path and the row count."""
    frame = runs_frame(store, where)
    return write_table(frame, out), len(frame)


__all__ = [
    "compare",
    "export_runs",
    "flatten",
    "parse_where",
    "run_row",
    "run_rows",
    "runs_frame",
    "scalar_metrics",
    "write_table",
]
