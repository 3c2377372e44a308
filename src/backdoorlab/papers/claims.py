"""The claims table every reproduction writes: each paper claim, what was measured, the paper's figure, PASS/FAIL."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def claims_table(claims: Iterable[Mapping[str, Any]]) -> list[str]:
    """Markdown rows (header first) of claims with keys ``id``, ``claim``, ``measured``, ``paper``, ``status``."""
    lines = ["| claim | statement | measured | paper | status |", "|---|---|---|---|---|"]
    lines += [
        f"| {c['id']} | {c['claim']} | {c['measured']} | {c['paper']} | **{c['status']}** |" for c in claims
    ]
    return lines
