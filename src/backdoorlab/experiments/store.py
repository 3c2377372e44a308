"""The run store: one SQLite table of finished experiment runs.

A row is written once, in one transaction, after the run's artefacts exist, so a failed or killed run
leaves no row behind. Rows hold the config, the metrics and where the artefacts and report live.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backdoorlab.errors import BackdoorLabError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    seconds REAL NOT NULL,
    config TEXT NOT NULL,
    metrics TEXT NOT NULL,
    artifacts TEXT NOT NULL,
    report TEXT
)
"""


@dataclass(frozen=True)
class RunRecord:
    id: str
    name: str
    created: float
    seconds: float
    config: dict[str, Any]
    metrics: dict[str, Any]
    artifacts: dict[str, str]
    report: str | None

    @property
    def created_iso(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.created))


class RunStore:
    """A SQLite file of runs; IDs are short hex strings and may be abbreviated to a unique prefix."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def add(self, record: RunRecord) -> None:
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.name,
                    record.created,
                    record.seconds,
                    json.dumps(record.config, sort_keys=True),
                    json.dumps(record.metrics, sort_keys=True),
                    json.dumps(record.artifacts, sort_keys=True),
                    record.report,
                ),
            )

    def set_report(self, run_id: str, report: str) -> None:
        with closing(self._connect()) as db, db:
            db.execute("UPDATE runs SET report = ? WHERE id = ?", (report, run_id))

    def list(self, limit: int | None = None) -> list[RunRecord]:
        sql = "SELECT * FROM runs ORDER BY created DESC"
        with closing(self._connect()) as db:
            rows = db.execute(sql + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
        return [self._record(r) for r in rows]

    def get(self, run_id: str) -> RunRecord:
        """The run whose ID is or starts with ``run_id``."""
        if not run_id or not all(c in "0123456789abcdef" for c in run_id.lower()):
            raise BackdoorLabError(
                f"run id {run_id!r} is not valid: ids are hex strings (see `backdoorlab runs list`)"
            )
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM runs WHERE id LIKE ?", (run_id.lower() + "%",)).fetchall()
        if not rows:
            raise BackdoorLabError(f"no run with id {run_id!r} in {self.path} (see `backdoorlab runs list`)")
        if len(rows) > 1:
            raise BackdoorLabError(
                f"run id {run_id!r} is ambiguous ({len(rows)} runs match); give more characters"
            )
        return self._record(rows[0])

    @staticmethod
    def _record(row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            id=row["id"],
            name=row["name"],
            created=row["created"],
            seconds=row["seconds"],
            config=json.loads(row["config"]),
            metrics=json.loads(row["metrics"]),
            artifacts=json.loads(row["artifacts"]),
            report=row["report"],
        )
