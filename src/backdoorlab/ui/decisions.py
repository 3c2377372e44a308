"""Analysts' verdicts on models — poisoned or clean, with a note — and the score of a user study (Sun et al. Table 2).

In the paper's user study (§4.2, App. D.2) each participant marks 50 TrojAI classifiers as poisoned or clean
with the interactive tool ("Denoised Smoothing"), with the same tool on the bare model ("Basic Adv") or from
saliency maps ("Saliency Map"), and Table 2 reports each participant's accuracy. Here every verdict is a row
of the table ``decisions`` in ``<home>/decisions.sqlite``, keyed by the model id (the sha256 of its weights,
so the verdict follows the weights wherever they are loaded from) and the analyst's name; :meth:`study`
scores the verdicts against the ground truth where the tool knows it (models of stored runs).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backdoorlab.errors import BackdoorLabError

VERDICTS = ("poisoned", "clean")
# the approaches of Table 2 (and the tool's third attack), recorded so accuracies can be compared per approach
APPROACHES = ("denoised-smoothing", "basic-adv", "smoothing", "saliency-map", "other")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    model_id TEXT NOT NULL,
    analyst TEXT NOT NULL DEFAULT '',
    verdict TEXT NOT NULL CHECK (verdict IN ('poisoned', 'clean')),
    note TEXT NOT NULL DEFAULT '',
    approach TEXT NOT NULL DEFAULT 'denoised-smoothing',
    model_name TEXT NOT NULL DEFAULT '',
    decided REAL NOT NULL,
    PRIMARY KEY (model_id, analyst)
)
"""


@dataclass(frozen=True)
class Decision:
    model_id: str
    analyst: str
    verdict: str
    note: str
    approach: str
    model_name: str
    decided: float

    def to_json(self, truth: str | None = None) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["truth"] = truth
        out["correct"] = None if truth is None else truth == self.verdict
        return out


class DecisionStore:
    """The ``decisions`` table: one verdict per (model, analyst); a later verdict replaces the earlier one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def put(
        self,
        model_id: str,
        verdict: str,
        note: str = "",
        *,
        analyst: str = "",
        approach: str = "denoised-smoothing",
        model_name: str = "",
    ) -> Decision:
        if verdict not in VERDICTS:
            raise BackdoorLabError(f"verdict: must be 'poisoned' or 'clean', got {verdict!r}")
        if approach not in APPROACHES:
            raise BackdoorLabError(f"approach: must be one of {', '.join(APPROACHES)}, got {approach!r}")
        d = Decision(model_id, analyst, verdict, note, approach, model_name, time.time())
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (d.model_id, d.analyst, d.verdict, d.note, d.approach, d.model_name, d.decided),
            )
        return d

    def list(self, model_id: str | None = None) -> list[Decision]:
        sql, args = "SELECT * FROM decisions", ()
        if model_id is not None:
            sql, args = sql + " WHERE model_id = ?", (model_id,)
        with closing(self._connect()) as db:
            rows = db.execute(sql + " ORDER BY decided DESC", args).fetchall()
        return [Decision(**dict(r)) for r in rows]

    def delete(self, model_id: str, analyst: str = "") -> bool:
        with closing(self._connect()) as db, db:
            cur = db.execute("DELETE FROM decisions WHERE model_id = ? AND analyst = ?", (model_id, analyst))
        return cur.rowcount > 0

    def study(self, truths: Mapping[str, str | None]) -> dict[str, Any]:
        """Accuracy per (approach, analyst) over the decided models whose ground truth is known (Table 2).

        ``truths`` maps model ids to ``"poisoned"`` / ``"clean"`` (or None: unknown, not scored). Each row holds
        the counts of true/false positives ("poisoned" is the positive class) and negatives and the accuracy.
        """
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for d in self.list():
            g = groups.setdefault(
                (d.approach, d.analyst),
                {
                    "approach": d.approach,
                    "analyst": d.analyst,
                    "decided": 0,
                    "scored": 0,
                    "correct": 0,
                    "tp": 0,
                    "fp": 0,
                    "tn": 0,
                    "fn": 0,
                },
            )
            g["decided"] += 1
            truth = truths.get(d.model_id)
            if truth not in VERDICTS:
                continue
            g["scored"] += 1
            g["correct"] += int(truth == d.verdict)
            key = ("t" if truth == d.verdict else "f") + ("p" if d.verdict == "poisoned" else "n")
            g[key] += 1
        rows = sorted(groups.values(), key=lambda g: (APPROACHES.index(g["approach"]), g["analyst"]))
        for g in rows:
            g["accuracy"] = round(g["correct"] / g["scored"], 4) if g["scored"] else None
        known = sum(1 for t in truths.values() if t in VERDICTS)
        return {"rows": rows, "models_with_truth": known}


__all__ = ["APPROACHES", "VERDICTS", "Decision", "DecisionStore"]
