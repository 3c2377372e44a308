"""Fidelity benchmark for Sun et al. (Poisoned classifiers are fundamentally broken): claims S1–S5 vs the paper.

Runs the sun2020 reproduction (``backdoorlab reproduce sun2020``) at the chosen scale and writes its claims table
(measured value, the paper's statement, PASS/FAIL), Table 1 (original trigger vs the best alternative triggers),
the detection table and the audit time per stage of every model to ``benchmarks/results/sun2020.md``; the HTML
report with every figure lands in the workspace (``reproductions/<name>/report.html``). Every model, the
hidden-trigger poisons and the denoisers are cached there, so a second run only re-audits.

    python benchmarks/sun2020.py [--scale small] [--home /tmp/sun2020-bench] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from _progress import StagePrinter

from backdoorlab.experiments.reproduce import recipe_path
from backdoorlab.fileio import write_atomic
from backdoorlab.papers.sun2020 import (
    claims_markdown,
    detection_markdown,
    load_sun2020_config,
    run_sun2020,
    table1_markdown,
    timing_markdown,
)

RESULTS = Path(__file__).parent / "results" / "sun2020.md"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=["small", "paper"], default="small")
    ap.add_argument("--home", default="/tmp/sun2020-bench", help="workspace (models are cached there)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    ap.add_argument("--out", default=str(RESULTS), help="where to write the results table")
    args = ap.parse_args()
    cfg = load_sun2020_config(recipe_path("sun2020", args.scale)).model_copy(update={"threads": args.threads})
    t0 = time.time()

    res = run_sun2020(
        cfg, args.home, StagePrinter(lambda s, d, t: d != t and ":" in s.removeprefix("sun2020: "))
    )
    minutes = (time.time() - t0) / 60
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    md = claims_markdown(res["claims"], cfg, res)
    md += (
        f"\nCommand: `python benchmarks/sun2020.py --scale {args.scale} --threads {args.threads}` (equivalently "
        f"`backdoorlab reproduce sun2020 --scale {args.scale}`): **{minutes:.1f} min** wall time on this machine "
        f"({platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), load average {load:.1f} at the "
        "end; models, poisons and denoisers trained from scratch unless cached in the workspace). Report: "
        f"`reproductions/{cfg.name}/report.html` in the workspace.\n"
        "\n## Table 1 — original trigger vs the best alternative triggers (toward the true target)\n\n"
        + table1_markdown(res)
        + "\nPaper (ImageNet, highest shown alternative / Trigger A): binary BadNet 98.80 / 91.60, HTBA 99.80 / 94.00, "
        "CLBD 93.80 / 90.00; multi-class 89.20 / 72.60, 82.30 / 74.55, 67.90 / 58.95.\n"
        "\n## Detection (Table 2 analogue)\n\n"
        + detection_markdown(res)
        + "\nPaper: analysts with Denoised Smoothing 94 % and 90 %, with Basic Adv 66 % and 82 %, with saliency maps "
        "54 % (50 TrojAI models each).\n"
        "\n## Audit time per stage (seconds)\n\n"
        + timing_markdown(res)
        + f"\nFigures 6, 9, 18–19 and the S1/S4 extras: {res['extras_seconds']:.0f} s.\n"
    )
    write_atomic(Path(args.out), md)
    print(md)
    print(f"report: {res['report']}\nwrote {args.out}")


if __name__ == "__main__":
    main()
