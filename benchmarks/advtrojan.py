"""Fidelity benchmark for AdvTrojan (Trojans and Adversarial Examples: A Lethal Combination): claims A1–A5.

Runs the advtrojan reproduction from a recipe (default: the packaged ``recipes/advtrojan/small.yaml``;
``--recipe`` takes any file, e.g. ``src/backdoorlab/recipes/advtrojan/fmnist-full.yaml``), prints the claims
A1–A5 and the Table 5 rows of every run beside the paper's ATIM column, and writes them, machine-generated, to
``benchmarks/results/advtrojan_run.md`` (the hand-written reading stays in ``benchmarks/results/advtrojan.md``,
which this script never touches). Every model is cached in the workspace, so a second run only evaluates;
the HTML report with every figure lands in ``<home>/reproductions/<name>/``.

    python benchmarks/advtrojan.py [--recipe PATH] [--home /tmp/advtrojan_ws] [--threads 1] [--no-write]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch
from _progress import StagePrinter

from backdoorlab.experiments.reproduce import recipe_path
from backdoorlab.fileio import write_atomic
from backdoorlab.papers.advtrojan import (
    MODEL_NAMES,
    MODELS,
    PAPER,
    AdvTrojanConfig,
    load_advtrojan_config,
    run_advtrojan,
    table5_rows,
)
from backdoorlab.papers.claims import claims_table

RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "advtrojan_run.md"
HAND_WRITTEN = RESULTS / "advtrojan.md"


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def render(res: dict[str, Any], cfg: AdvTrojanConfig, command: str, minutes: float) -> str:
    """The machine-generated markdown of one benchmark run."""
    lines = [
        f"# AdvTrojan — benchmark run at `{cfg.name}` (machine-generated)",
        "",
        f"Written by `benchmarks/advtrojan.py`; the hand-written reading is `{HAND_WRITTEN.name}`. Command: "
        f"`{command}` — {minutes:.1f} min on this machine ({platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)); {res['seconds']:.0f} s inside `run_advtrojan`.",
        "",
    ]
    for run in cfg.runs:
        r = res["runs"][run.label]
        lines += [f"## {run.label} (paper column: {PAPER[run.paper]['title']})", "", r["data"]["summary"], ""]
        lines += [f"- {note}" for note in ([run.note] if run.note else []) + r["data"]["notes"]]
        p = r["perturbation"]
        lines += [
            "",
            f"Evaluation perturbation (Table 1): L∞ ε = {p['eps']:g}, step {p['step']:g}, {p['steps']} "
            f"iterations; trigger intensity {r['test_intensity']:g} at test time.",
            "",
            "Training (from the workspace cache or trained in this run):",
            "",
        ]
        tr = r["training"]
        lines += _md_table(
            ["model", "init", "epochs", "PGD steps", "training wall time (s)", "this run"],
            [
                [MODEL_NAMES[k], tr[k].get("init", "scratch"), str(tr[k]["epochs"]), str(tr[k]["pgd_steps"] or "—"),
                 f"{tr[k]['seconds']:.1f}", "cached" if tr[k]["cached"] else "trained"]
                for k in (*MODELS, "control", "badnets") if k in tr
            ],
        )  # fmt: skip
        head, rows = table5_rows(r, run.paper)
        lines += ["", f"### Table 5 — test accuracy ({r['table5']['atim']['n']} test images)", ""]
        lines += _md_table(head, rows)
        lines.append("")
    lines += ["## Claims (FIDELITY.md A1–A5)", "", *claims_table(res["claims"]), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=None, help="recipe YAML (default: the packaged small one)")
    ap.add_argument("--home", default="/tmp/advtrojan_ws", help="workspace (models are cached there)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (2 oversubscribe 2 shared cores)")
    ap.add_argument("--no-write", action="store_true", help=f"print only; do not write {OUT.name}")
    args = ap.parse_args()
    recipe = args.recipe or recipe_path("advtrojan", "small")
    cfg = load_advtrojan_config(recipe)
    torch.set_num_threads(args.threads)
    t0 = time.time()

    res = run_advtrojan(cfg, args.home, StagePrinter())
    minutes = (time.time() - t0) / 60
    shown = "" if args.recipe is None else f" --recipe {args.recipe}"
    command = f"python benchmarks/advtrojan.py{shown} --home {args.home} --threads {args.threads}"

    print(f"\nclaims ({cfg.name}):")
    for c in res["claims"]:
        print(f"  {c['id']}: {c['status']} — {c['measured']}")
    for run in cfg.runs:
        head, rows = table5_rows(res["runs"][run.label], run.paper)
        print(f"\nTable 5 — {run.label}:")
        width = max(len(row[0]) for row in rows)
        print("  " + " | ".join([head[0].ljust(width), *head[1:]]))
        for row in rows:
            print("  " + " | ".join([row[0].ljust(width), *row[1:]]))
    print(f"\nreport: {res['report']} ({minutes:.1f} min)")
    if not args.no_write:
        if OUT.resolve() == HAND_WRITTEN.resolve():  # pragma: no cover - guards a future edit of OUT
            raise SystemExit(f"refusing to overwrite the hand-written {HAND_WRITTEN}")
        write_atomic(OUT, render(res, cfg, command, minutes))
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
