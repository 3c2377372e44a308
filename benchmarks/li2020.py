"""Fidelity benchmark for Li et al. (Rethinking the Trigger): claims L1–L9 measured vs the paper.

Runs the li2020 reproduction (``backdoorlab reproduce li2020``) at the chosen scale and writes its claims
table, with the measured value, the paper's value and PASS/FAIL/NOT MEASURED, to
``benchmarks/results/li2020.md``; the full HTML report lands in the workspace.

    python benchmarks/li2020.py [--scale small] [--home /tmp/li2020-bench]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _progress import StagePrinter

from backdoorlab.experiments.reproduce import recipe_path
from backdoorlab.papers.li2020 import claims_markdown, load_li2020_config, run_li2020

RESULTS = Path(__file__).parent / "results" / "li2020.md"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=["small", "paper"], default="small")
    ap.add_argument("--home", default="/tmp/li2020-bench", help="workspace (models are cached there)")
    args = ap.parse_args()
    cfg = load_li2020_config(recipe_path("li2020", args.scale))
    t0 = time.time()

    res = run_li2020(cfg, args.home, StagePrinter())
    minutes = (time.time() - t0) / 60
    md = claims_markdown(res["claims"], cfg)
    md += (
        f"\nCommand: `python benchmarks/li2020.py --scale {args.scale}` "
        f"({minutes:.1f} min on this machine, models trained from scratch unless cached).\n"
        f"Table 2 cost (s): " + ", ".join(f"{k} {v:.2f}" for k, v in res["table2"].items()) + "\n"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(md)
    print(md)
    print(f"report: {res['report']}\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
