"""Fidelity benchmark for Turner et al. (Clean-Label Backdoor Attacks): claims T1–T7 measured vs the paper.

Runs the turner2019 reproduction (``backdoorlab reproduce turner2019``) at the chosen scale and writes its
claims table (measured value, the paper's statement, PASS/FAIL) with the wall time to
``benchmarks/results/turner2019.md``; the HTML report with every figure lands in the workspace. Every victim,
the robust source model and the WGAN-GP are cached there, so an interrupted run resumes.

    python benchmarks/turner2019.py [--scale small] [--home /tmp/turner2019-bench] [--workers 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _progress import StagePrinter

from backdoorlab.experiments.reproduce import recipe_path
from backdoorlab.fileio import write_atomic
from backdoorlab.papers.turner2019 import claims_markdown, load_turner2019_config, run_turner2019

RESULTS = Path(__file__).parent / "results" / "turner2019.md"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=["small", "paper"], default="small")
    ap.add_argument("--home", default="/tmp/turner2019-bench", help="workspace (models are cached there)")
    ap.add_argument("--workers", type=int, default=1, help="victims trained in parallel, one thread each")
    args = ap.parse_args()
    cfg = load_turner2019_config(recipe_path("turner2019", args.scale))
    t0 = time.time()

    if args.workers > 1:
        torch.set_num_threads(1)  # the main process trains the clean references beside the workers
    res = run_turner2019(cfg, args.home, StagePrinter(), workers=args.workers)
    minutes = (time.time() - t0) / 60
    md = claims_markdown(res["claims"], cfg)
    md += (
        f"\nCommand: `python benchmarks/turner2019.py --scale {args.scale} --workers {args.workers}` "
        f"({minutes:.1f} min on this "
        "machine; models trained from scratch unless cached in the workspace).\n"
    )
    write_atomic(RESULTS, md)
    print(md)
    print(f"report: {res['report']}\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
