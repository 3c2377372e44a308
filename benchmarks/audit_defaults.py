"""Time one audit at the CLI's defaults (m 8 vs the paper's m 16; 7×32 vs the paper's 17×64 DnCNN).

The audit of one small model must stay under five minutes on two CPU cores (Sun et al. issue); this measures
what the denoiser size and the noise draws cost on a model file of the user's choice (e.g. a shapes ResNet from
the sun2020 workspace), with the pipeline's own ``audit()`` and its defaults otherwise (100 steps, 10 probe and
50 held-out images).

    python benchmarks/audit_defaults.py MODEL.safetensors --data shapes [--threads 2] [--paper-denoiser]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from backdoorlab.audit.pipeline import DENOISER_DEFAULTS, PAPER_DENOISER, audit, denoiser_for
from backdoorlab.data.registry import load_dataset
from backdoorlab.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", default="shapes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paper-denoiser", action="store_true", help="also time the 17×64 DnCNN (slow on a CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)[0]
    train, test = load_dataset(args.data)
    sizes = [(DENOISER_DEFAULTS["depth"], DENOISER_DEFAULTS["width"])]
    if args.paper_denoiser:
        sizes.append((PAPER_DENOISER["depth"], PAPER_DENOISER["width"]))
    res: dict[str, object] = {}
    for depth, width in sizes:
        t = time.perf_counter()  # the audit's own denoiser step: seeded 4,000-image subset, its epoch rule
        den, _info = denoiser_for(
            None, train, 0.5, {"depth": depth, "width": width}, 0, None, torch.device("cpu"), None
        )
        res[f"denoiser {depth}x{width} train s"] = round(time.perf_counter() - t, 1)
        for m in (8, 16):
            t = time.perf_counter()
            r = audit(model, test, m=m, steps=100, denoiser=den, seed=0)
            res[f"audit {depth}x{width} m{m} s"] = round(time.perf_counter() - t, 1)
            res[f"stages {depth}x{width} m{m}"] = {k: round(v, 1) for k, v in r.timings.items()}
            res[f"verdict {depth}x{width} m{m}"] = (
                r.verdict.poisoned,
                r.verdict.target,
                round(r.verdict.score, 2),
            )
            print(json.dumps(res, indent=1, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
