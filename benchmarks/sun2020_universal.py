"""Could full-image candidates catch the Blended backdoors the sun2020 audit misses (S5)? A probe.

The audit's alternative triggers are patches (Sun et al. §3.3), and a patch cannot reproduce Chen et al.'s
full-image noise key: the two Blended models of the `small` suite are the audit's main misses. This probe asks
whether a *full-image* candidate would do better: each probe image's adversarial perturbation δᵢ = adv − x
(Denoised Smoothing's SmoothAdv and the Basic Adv baseline, from the audit itself) is added to every held-out
image, as is the mean δ of the images that moved to each class (rescaled to ε), and — as the null — 24 random
Gaussian directions of the same norm ε. For each it measures the success toward every class (share of the
other classes' held-out images sent there), exactly like :func:`backdoorlab.audit.alt_triggers.measure` does
for patches.

A full-image family is worth adding to the audit only if it flags the Blended models and no clean model. This is
a diagnostic of the reproduction, not a claim of the paper. Writes ``benchmarks/results/sun2020_universal.md``.

    python benchmarks/sun2020_universal.py [--home /tmp/sun2020-bench] [MODEL ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from backdoorlab.experiments.reproduce import recipe_path
from backdoorlab.experiments.runner import Workspace
from backdoorlab.fileio import write_atomic
from backdoorlab.papers.sun2020 import _Context, load_sun2020_config

RESULTS = Path(__file__).parent / "results" / "sun2020_universal.md"
N_NOISE = 24


@torch.no_grad()
def success(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, deltas: torch.Tensor, k: int
) -> torch.Tensor:
    """deltas (D×C×H×W) added to every image of x (N): the D×k rates toward each class (other classes' images)."""
    d, n = len(deltas), len(x)
    batch = torch.clamp(x.unsqueeze(0) + deltas.unsqueeze(1), 0, 1).reshape(d * n, *x.shape[1:])
    pred = torch.cat([model(b).argmax(1) for b in batch.split(2048)]).view(d, n)
    hits = pred.unsqueeze(2) == torch.arange(k).view(1, 1, k)  # D×N×k
    others = (y.view(1, n, 1) != torch.arange(k).view(1, 1, k)).float()  # 1×N×k
    return (hits.float() * others).sum(1) / others.sum(1).clamp_min(1)


def class_means(
    delta: torch.Tensor, moved_to: torch.Tensor, start: torch.Tensor, k: int, eps: float
) -> torch.Tensor:
    """The mean δ of the probe images that moved to each class (k×C×H×W, zeros where none did), at norm ε."""
    out = torch.zeros(k, *delta.shape[1:])
    for t in range(k):  # k ≤ 10 classes, not samples
        sel = (moved_to == t) & (start != t)
        if sel.any():
            mu = delta[sel].mean(0)
            out[t] = mu * eps / mu.norm().clamp_min(1e-12)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--home", default="/tmp/sun2020-bench", help="the reproduction's workspace (models cached)"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("models", nargs="*", help="suite models to probe (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    cfg = load_sun2020_config(recipe_path("sun2020", "small"))
    ctx = _Context(cfg, Workspace(Path(args.home)), None)
    ctx.train_victims()
    names = args.models or [m.name for m in cfg.models]
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name in names:
        v = ctx.victims[name]
        res = ctx.audit(v)
        xe, ye = ctx.held_out(v)
        xe = xe.cpu()
        k = v.test.num_classes
        kind = v.spec.attack or "clean"
        row = {"model": name, "kind": kind, "target": None if v.backdoor is None else v.backdoor.target}
        eps = float((res.adversarial - res.images).flatten(1).norm(dim=1).max())
        noise = torch.randn(N_NOISE, *res.images.shape[1:], generator=gen)
        noise = noise * eps / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        row["noise"] = success(v.model, xe, ye, noise, k).max(0).values
        for src, adv, moved in (
            ("ds", res.adversarial, res.adv_labels),
            ("basic", res.basic_adversarial, res.basic_labels),
        ):
            delta = adv - res.images
            per_image = success(v.model, xe, ye, delta, k).max(0).values
            means = (
                success(v.model, xe, ye, class_means(delta, moved, res.model_labels, k, eps), k).max(0).values
            )
            row[src] = torch.maximum(per_image, means)
        row["eps"] = eps
        rows.append(row)
        print(name, {s: [round(float(a), 2) for a in row[s]] for s in ("ds", "basic", "noise")}, flush=True)

    def cell(r: dict, src: str) -> str:
        rate = r[src]
        best = int(rate.argmax())
        t = r["target"]
        at_t = f"{100 * float(rate[t]):.1f} %" if t is not None else "—"
        return f"{at_t} | {100 * float(rate.max()):.1f} % (class {best})"

    def flags(r: dict, src: str) -> str:
        """The simplest rule a full-image family would add: best ≥ ½ and above every noise direction's rate."""
        rate, noise = r[src], r["noise"]
        hit = [c for c in range(len(rate)) if rate[c] >= 0.5 and rate[c] > noise[c]]
        return ", ".join(map(str, hit)) or "none"

    lines = [
        "# sun2020 probe: full-image candidates on the small suite",
        "",
        f"Command: `python benchmarks/sun2020_universal.py --home {args.home}` (models and denoisers cached by "
        "`backdoorlab reproduce sun2020 --scale small`; trained if missing). "
        f"Wall time {(time.perf_counter() - t_start) / 60:.1f} min at {args.threads} thread(s).",
        "",
        "Per model: the success of the best full-image candidate toward the model's target and toward its most-"
        "attracted class, for perturbations from Denoised Smoothing (SmoothAdv) and Basic Adv (each probe image's δ "
        f"on all held-out images, and the per-class mean δ at norm ε), against {N_NOISE} random Gaussian directions "
        "of the same norm ε (the audit's ε, L2 on [0, 1] pixels). 'flags' lists the classes where the best "
        "candidate reaches ≥ 50 % and beats every noise direction.",
        "",
        "| model | attack | target | ε | DS → target | DS best | DS flags | Basic → target | Basic best | "
        "Basic flags | noise → target | noise best |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['kind']} | {r['target'] if r['target'] is not None else '—'} | {r['eps']:.2f} | "
            f"{cell(r, 'ds')} | {flags(r, 'ds')} | {cell(r, 'basic')} | {flags(r, 'basic')} | {cell(r, 'noise')} |"
        )
    write_atomic(RESULTS, "\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
