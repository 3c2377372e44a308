"""Turner et al. on more target classes: the small recipe's "all classes" variants on extra classes.

The small reproduction (``benchmarks/turner2019.py``) measures every figure on class 4 only, so its T2, T3,
T5 and T6 verdicts rest on one class. This script trains the victims of the five variants the paper plots
per class — baseline (Fig. 2 right), PGD L2 ε 600 (Fig. 6), amplitude 32 (Fig. 8), one- and four-corner
amplitude 32 with augmentation (Fig. 11) — at every rate of the recipe for ``--n-classes`` more target
classes (a seeded draw among the other nine, so the choice is not ours), reusing the reproduction's cached
robust model and victims (run ``benchmarks/turner2019.py`` in the same workspace first). It then judges the
claims with the reproduction's own ``evaluate_claims`` over class 4 plus the new classes (T1, T4 and the ε
sweep of T3 stay on class 4, as in the reproduction) and writes a per-class table and the per-class figures.

    python benchmarks/turner2019_classes.py [--home /tmp/turner_ws] [--n-classes 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _progress import StagePrinter

from backdoorlab.experiments.batch import run_experiments
from backdoorlab.experiments.report import figure_png
from backdoorlab.experiments.reproduce import recipe_path
from backdoorlab.fileio import write_atomic
from backdoorlab.papers.claims import claims_table
from backdoorlab.papers.turner2019 import (
    asr_figure,
    evaluate_claims,
    load_turner2019_config,
    variants,
    victim_config,
)

RESULTS = Path(__file__).parent / "results" / "turner2019_classes.md"
FIGURES = Path(__file__).parent / "results" / "turner2019_classes"


def per_class_labels(main_l2: float, amp: float) -> list[str]:
    """The variants the paper plots for every class (the reproduction's ``classes`` variants minus GAN)."""
    return [
        "baseline",
        f"PGD L2 ε={main_l2:g}",
        f"amplitude {amp:g}",
        f"one-corner amplitude {amp:g}, augmented",
        f"four-corner amplitude {amp:g}, augmented",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default="/tmp/turner_ws", help="the turner2019-small workspace")
    ap.add_argument("--n-classes", type=int, default=3, help="extra target classes, drawn with --seed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    cfg = load_turner2019_config(recipe_path("turner2019", "small"))
    done = Path(args.home) / "reproductions" / cfg.name / "results.json"
    if not done.is_file():
        raise SystemExit(f"{done} not found: run benchmarks/turner2019.py --home {args.home} first")
    res = json.loads(done.read_text())
    others = [c for c in range(10) if c != cfg.main_class]
    draw = torch.randperm(len(others), generator=torch.Generator().manual_seed(args.seed))
    extra = sorted(others[int(i)] for i in draw[: args.n_classes])
    labels = per_class_labels(cfg.main_l2_eps, cfg.main_amplitude)
    specs = variants(cfg)
    jobs = [(label, c, r) for c in extra for label in labels for r in cfg.rates]
    print(f"classes {extra}: {len(jobs)} victims on {args.workers} workers", flush=True)
    records = run_experiments(
        [victim_config(cfg, label, specs[label], c, r) for label, c, r in jobs],
        args.home,
        workers=args.workers,
        progress=StagePrinter(),
        label="turner2019: more classes",
    )
    for (label, c, r), record in zip(jobs, records, strict=True):
        m = record.metrics["victim"]
        res["asr"].setdefault(label, {}).setdefault(str(c), {})[str(r)] = m["asr"]
        res["clean_acc"].setdefault(label, {}).setdefault(str(c), {})[str(r)] = m["clean_acc"]
    wide = cfg.model_copy(update={"classes": (cfg.main_class, *extra)})
    claims = evaluate_claims(res, wide)
    every = [cfg.main_class, *extra]
    minutes = (time.time() - t0) / 60

    names = records[0].metrics["classes"]  # the data set's class names, as every run stores them
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = [
        "# Turner et al. — the per-class figures on more target classes",
        "",
        f"Command: `python benchmarks/turner2019_classes.py --home {args.home} --n-classes {args.n_classes} "
        f"--seed {args.seed} --workers {args.workers}` after `benchmarks/turner2019.py` in the same workspace "
        f"(its class-4 victims and robust model come from the cache). {len(jobs)} victims (trained, or from the "
        "cache when run again), "
        f"**{minutes:.1f} min** on the shared 2-core machine.",
        "",
        f"Classes: {cfg.main_class} ({names[cfg.main_class]}, the reproduction's) and "
        + ", ".join(f"{c} ({names[c]})" for c in extra)
        + f", drawn with seed {args.seed} among the other nine. Recipe `turner2019/small.yaml` (Fashion-MNIST "
        "2,000 images per class, LeNet, the robust source model Madry-trained at L∞ ε 0.1).",
        "",
        "## Claims judged over these classes",
        "",
        "The reproduction's own criteria (`evaluate_claims`), now averaged over every class above where the "
        "claim is per class (T2, T3's gain, T5, T6, T7); T1 (the filter), T4 (GAN, class 4 only here) and "
        "T3's ε sweep are the class-4 figures of `turner2019.md`.",
        "",
        *claims_table(claims),
        "",
        "## ASR (%) per class and poisoning rate (of the target class)",
        "",
        "| variant | class | " + " | ".join(f"{100 * r:g} %" for r in cfg.rates) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in cfg.rates) + " |",
    ]
    for label in labels:
        for c in every:
            row = res["asr"][label][str(c)]
            lines.append(
                f"| {label} | {c} {names[c]} | " + " | ".join(pct(row[str(r)]) for r in cfg.rates) + " |"
            )
    figs = {
        "fig2_right": ("baseline", "All classes — baseline (Fig. 2 right)"),
        "fig6_pgd": (labels[1], f"All classes — PGD L2 ε = {cfg.main_l2_eps:g} (Fig. 6)"),
        "fig8_all": (labels[2], f"All classes — amplitude {cfg.main_amplitude:g} (Fig. 8)"),
        "fig11_one": (labels[3], "All classes — one corner, augmented (Fig. 11)"),
        "fig11_four": (labels[4], "All classes — four corners, augmented (Fig. 11)"),
    }
    lines += [
        "",
        "Figures (one line per class): " + ", ".join(f"[{k}](turner2019_classes/{k}.png)" for k in figs),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        for key, (label, title) in figs.items():
            lines_by_class = {f"class {c} ({names[c]})": (label, c) for c in every}
            figure_png(asr_figure(res, wide, lines_by_class, title), FIGURES / f"{key}.png")
        write_atomic(RESULTS, text)


if __name__ == "__main__":  # workers are spawned and import this script again
    main()
