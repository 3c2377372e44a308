"""The run store: SQLite tables of finished experiment runs and of sweeps.

A run row is written once, in one transaction, after the run's artefacts exist, so a failed or killed run
leaves no row behind. Rows hold the config, the metrics and where the artefacts and report live.

A sweep is a row in ``sweeps`` and one row per expanded experiment in ``sweep_items`` (status ``pending``,
``running``, ``done`` or ``failed``, attempts, the run id or the error). The sweep's driver is the one
writer: a finished experiment's run row and its item's ``done`` are committed in the same transaction, so
a sweep killed at any moment never shows a run without its item or an item without its run.
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
);
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sweep_items (
    sweep_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    digest TEXT NOT NULL,
    overrides TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    run_id TEXT,
    error TEXT,
    seconds REAL,
    updated REAL NOT NULL,
    PRIMARY KEY (sweep_id, idx)
);
"""

ITEM_STATES = ("pending", "running", "done", "failed")


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


@dataclass(frozen=True)
class SweepItem:
    """One expanded experiment of a sweep: its overrides of the base config and where it stands."""

    idx: int
    digest: str
    overrides: dict[str, Any]
    config: dict[str, Any]
    status: str = "pending"
    attempts: int = 0
    run_id: str | None = None
    error: str | None = None
    seconds: float | None = None


@dataclass
class SweepRow:
    id: str
    name: str
    created: float
    spec: dict[str, Any]
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class RunStore:
    """A SQLite file of runs; IDs are short hex strings and may be abbreviated to a unique prefix."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def add(self, record: RunRecord) -> None:
        with closing(self._connect()) as db, db:
            self._insert_run(db, record)

    @staticmethod
    def _insert_run(db: sqlite3.Connection, record: RunRecord) -> None:
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

    def count(self) -> int:
        with closing(self._connect()) as db:
            return int(db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    # -- sweeps ---------------------------------------------------------------------------------------
    def open_sweep(self, sweep_id: str, name: str, spec: dict[str, Any], items: list[SweepItem]) -> None:
        """Record a sweep and its items unless already there (a resumed sweep keeps its progress)."""
        now = time.time()
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT OR IGNORE INTO sweeps VALUES (?, ?, ?, ?)",
                (sweep_id, name, now, json.dumps(spec, sort_keys=True)),
            )
            db.executemany(
                "INSERT OR IGNORE INTO sweep_items (sweep_id, idx, digest, overrides, config, status, "
                "attempts, updated) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?)",
                [
                    (sweep_id, it.idx, it.digest, json.dumps(it.overrides), json.dumps(it.config), now)
                    for it in items
                ],
            )

    def set_item(self, sweep_id: str, idx: int, status: str, *, error: str | None = None) -> None:
        """Mark an item ``running``/``pending``, or ``failed`` with ``error`` (counts the attempt)."""
        if status not in ITEM_STATES:
            raise BackdoorLabError(f"sweep item status must be one of {ITEM_STATES}, got {status!r}")
        bump = 1 if error is not None else 0
        with closing(self._connect()) as db, db:
            db.execute(
                "UPDATE sweep_items SET status = ?, error = COALESCE(?, error), attempts = attempts + ?, "
                "updated = ? WHERE sweep_id = ? AND idx = ?",
                (status, error, bump, time.time(), sweep_id, idx),
            )

    def finish_item(self, sweep_id: str, idx: int, record: RunRecord) -> None:
        """The run row and the item's ``done`` in one transaction."""
        with closing(self._connect()) as db, db:
            self._insert_run(db, record)
            db.execute(
                "UPDATE sweep_items SET status = 'done', run_id = ?, error = NULL, seconds = ?, updated = ? "
                "WHERE sweep_id = ? AND idx = ?",
                (record.id, record.seconds, time.time(), sweep_id, idx),
            )

    def sweep_items(self, sweep_id: str) -> list[SweepItem]:
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT * FROM sweep_items WHERE sweep_id = ? ORDER BY idx", (sweep_id,)
            ).fetchall()
        return [
            SweepItem(
                idx=r["idx"],
                digest=r["digest"],
                overrides=json.loads(r["overrides"]),
                config=json.loads(r["config"]),
                status=r["status"],
                attempts=r["attempts"],
                run_id=r["run_id"],
                error=r["error"],
                seconds=r["seconds"],
            )
            for r in rows
        ]

    def sweeps(self) -> list[SweepRow]:
        """All sweeps, newest first, with their item counts by status."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT s.id, s.name, s.created, s.spec, i.status, COUNT(i.idx) AS n FROM sweeps s "
                "LEFT JOIN sweep_items i ON i.sweep_id = s.id GROUP BY s.id, i.status ORDER BY s.created DESC"
            ).fetchall()
        out: dict[str, SweepRow] = {}
        for r in rows:
            row = out.setdefault(
                r["id"], SweepRow(r["id"], r["name"], r["created"], json.loads(r["spec"]), {})
            )
            if r["status"] is not None:
                row.counts[r["status"]] = r["n"]
        return list(out.values())

    def get_sweep(self, sweep_id: str) -> SweepRow:
        """The sweep whose ID is or starts with ``sweep_id``."""
        if not sweep_id or not all(c in "0123456789abcdef" for c in sweep_id.lower()):
            raise BackdoorLabError(
                f"sweep id {sweep_id!r} is not valid: ids are hex strings (see `backdoorlab sweep list`)"
            )
        found = [s for s in self.sweeps() if s.id.startswith(sweep_id.lower())]
        if not found:
            raise BackdoorLabError(
                f"no sweep with id {sweep_id!r} in {self.path} (see `backdoorlab sweep list`)"
            )
        if len(found) > 1:
            raise BackdoorLabError(
                f"sweep id {sweep_id!r} is ambiguous ({len(found)} match); give more characters"
            )
        return found[0]

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
