"""The audit's numbers in the report and the JSON summary: the K×classes success matrix as a table and as
``success_percent``, how many candidates the figure shows, and a verdict score that never prints "-0.00"."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import pytest
import torch

from backdoorlab.audit import report
from backdoorlab.audit.pipeline import audit
from backdoorlab.audit.report import render_audit_report, success_table
from backdoorlab.audit.verdict import decide
from tests.test_audit_pipeline import small_net, toy_rgb

TINY = {
    "sigma": 0.1,
    "eps": 2.0,
    "m": 2,
    "steps": 2,
    "n_images": 4,
    "n_eval": 30,
    "reps": 1,
    "n_null": 4,
    "basic": False,
    "denoiser": False,
}


@pytest.fixture(scope="module")
def result():
    """An audit of an untrained toy net: seconds, and enough candidates and classes to check the tables."""
    torch.set_num_threads(1)
    return audit(small_net().eval(), toy_rgb(60, 1), patch_size=3, seed=0, **TINY)


def _rows(page: str) -> list[list[str]]:
    """The body rows of the success table as lists of cell HTML (with their attributes)."""
    body = re.search(r"<tbody>(.*?)</tbody>", page, re.S).group(1)
    return [re.findall(r"<td[^>]*>[^<]*</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_summary_has_the_success_matrix_in_percent(result):
    summary = json.loads(json.dumps(result.summary()))
    matrix = summary["success_percent"]
    k, c = result.success.shape
    assert k == len(result.candidates) and c == len(result.classes) == 3
    assert len(matrix) == k and all(len(row) == c for row in matrix)
    expected = (100 * result.success).tolist()
    for row, want in zip(matrix, expected):
        assert row == pytest.approx(want, abs=0.051)  # rounded to 0.1 %
    assert all(0 <= v <= 100 for row in matrix for v in row)


def test_success_table_lists_every_candidate_and_highlights_the_best(result):
    # a known matrix: candidate 1 best toward class 0, candidate 0 toward class 2, nobody toward class 1
    k, c = result.success.shape
    s = torch.zeros(k, c)
    s[0, 2], s[1, 0], s[1, 2] = 0.754, 0.9, 0.3
    meas = replace(result.measurement, random=s, found=None)
    fake = replace(result, measurement=meas)
    rows = _rows(success_table(fake))
    assert len(rows) == k and all(len(r) == 3 + c for r in rows)
    assert rows[0][0] == "<td>#0</td>" and result.candidates[0].kind in rows[0][1]
    assert rows[0][2] == f"<td>{result.candidates[0].info['method']}</td>"
    bold = {(i, j) for i, r in enumerate(rows) for j, cell in enumerate(r[3:]) if "font-weight" in cell}
    assert bold == {(1, 0), (0, 2)}  # the best per class; an all-zero class highlights nothing
    assert rows[0][3 + 2].endswith(">75</td>") and rows[1][3 + 0].endswith(">90</td>")
    assert "overflow:auto" not in success_table(fake, scroll_after=k)
    assert "overflow:auto" in success_table(fake, scroll_after=k - 1)


def test_report_has_the_table_and_says_how_many_candidates_it_draws(result, monkeypatch):
    k = len(result.candidates)
    page = render_audit_report(result)
    assert "success_percent" in page and len(_rows(page)) == k
    assert f"All {k} candidates shown." in page
    monkeypatch.setattr(report, "CANDIDATES_SHOWN", 2)
    assert f"Top 2 of {k} shown" in render_audit_report(result)


def test_a_clean_looking_score_is_never_negative_zero(result):
    # nothing works and random patches do the same: adjusted p = 1, −log10 1 = −0.0 before the fix
    zeros = torch.zeros_like(result.success)
    v = decide(zeros, torch.zeros(6, zeros.shape[1]))
    assert v.p_value == 1.0 and not v.poisoned
    assert v.score == 0.0 and math.copysign(1.0, v.score) == 1.0
    assert all(math.copysign(1.0, c.score) == 1.0 for c in v.per_class)
    assert f"{v.score:.2f}" == "0.00" and json.dumps(v.describe()["score"]) == "0.0"
    page = render_audit_report(replace(result, verdict=v))
    assert "<td>score (−log10 adjusted p)</td><td>0.00</td>" in page and "-0.00" not in page
