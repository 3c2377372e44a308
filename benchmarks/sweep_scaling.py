"""Sweep scaling: the same 16-experiment sweep with 1 and 2 local workers, and on a local Ray.

The sweep: BadNets on mnist5k (``--per-class`` training images per class, 20 test images per class), LeNet,
``--epochs`` epochs, no clean reference, a product of 4 target classes × 4 seeds = 16 experiments, each
worker on one torch thread. Every configuration runs in a fresh workspace (so nothing comes from the
artefact cache) and is timed from ``run_sweep`` call to return, pool start-up included.

Figures: wall time, experiments per minute, speed-up of 2 workers over 1, and the Ray backend's overhead
per experiment over the local backend at the same worker count, ``(ray wall − local wall) / 16``, where the
Ray wall includes starting a local Ray (``ray.init``, like the local pool's start-up in the local wall);
the start-up alone is reported too. The three configurations run ``--repeats`` times in alternating order
(best of each kept), because the machine is shared. The metrics of every run are compared experiment by
experiment: the backends must agree bit for bit.

    .venv/bin/python benchmarks/sweep_scaling.py [--per-class 60] [--epochs 2] [--repeats 2] [--no-ray]

Writes ``benchmarks/results/sweep_scaling.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from backdoorlab.experiments.runner import Workspace
from backdoorlab.experiments.sweep import load_sweep, run_sweep

RESULTS = Path(__file__).parent / "results" / "sweep_scaling.md"


def spec(per_class: int, epochs: int) -> dict:
    return {
        "name": "scaling",
        "base": {
            "name": "scaling",
            "data": {"name": "mnist5k", "train_per_class": per_class, "test_per_class": 20},
            "attack": {"name": "badnets", "target": 0, "rate": 0.1},
            "train": {"epochs": epochs, "batch_size": 32, "lr": 0.05},
            "clean_reference": False,
            "report_samples": 8,
        },
        "grid": {"product": {"attack.target": [0, 1, 2, 3], "seed": [0, 1, 2, 3]}},
        "retries": 0,
        "threads_per_worker": 1,
    }


def timed(sweep, root: Path, **kw) -> tuple[float, dict[int, dict]]:
    t0 = time.perf_counter()
    out = run_sweep(sweep, root, **kw)
    wall = time.perf_counter() - t0
    bad = [it for it in out.items if it.status != "done"]
    if bad:
        raise SystemExit(f"{len(bad)} experiments failed: {bad[0].error}")
    store = Workspace(root).store
    return wall, {it.idx: store.get(it.run_id).metrics["victim"] for it in out.items}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    sweep = load_sweep(spec(args.per_class, args.epochs))
    n = len(sweep.items)
    configs = [("local", 1), ("local", 2)] + ([] if args.no_ray else [("ray", 2)])
    best: dict[tuple[str, int], float] = {}
    results = []
    ray_init = float("inf")
    load = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for backend, workers in configs if rep % 2 == 0 else configs[::-1]:
                root = Path(tmp) / f"{backend}{workers}-{rep}"
                load.append(os.getloadavg()[0])
                t0 = time.perf_counter()
                if backend == "ray":
                    import ray

                    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                    ray_init = min(ray_init, time.perf_counter() - t0)
                    try:
                        _, metrics = timed(sweep, root, workers=workers, backend="ray")
                    finally:
                        ray.shutdown()
                else:
                    _, metrics = timed(sweep, root, workers=workers)
                wall = time.perf_counter() - t0
                results.append(metrics)
                best[(backend, workers)] = min(best.get((backend, workers), float("inf")), wall)
                print(f"{backend}, {workers} worker(s), repeat {rep}: {wall:.1f} s", flush=True)
    rows = [(b, w, best[(b, w)]) for b, w in configs]
    same = all(r == results[0] for r in results)
    w1 = rows[0][2]
    w2 = rows[1][2]
    lines = [
        "# Sweep scaling: 1 vs 2 local workers, and the Ray backend",
        "",
        f"`.venv/bin/python benchmarks/sweep_scaling.py --per-class {args.per_class} --epochs {args.epochs}`"
        f" · {platform.processor() or platform.machine()}, {os.cpu_count()} cores · "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        f"{n} experiments (BadNets, mnist5k {args.per_class}/class, LeNet, {args.epochs} epochs, 4 targets × "
        "4 seeds), fresh workspace each, one torch thread per worker; wall time includes pool start-up "
        f"(for Ray: `ray.init`). Best of {args.repeats} alternating repeats; 1-minute load average at the "
        f"starts {min(load):.1f}–{max(load):.1f} (it counts this benchmark's own workers).",
        "",
        "| backend | workers | wall (s) | experiments/min | speed-up vs 1 local worker |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for backend, workers, wall in rows:
        lines.append(f"| {backend} | {workers} | {wall:.1f} | {n / wall * 60:.1f} | {w1 / wall:.2f}× |")
    lines.append("")
    if len(rows) == 3:
        overhead = (rows[2][2] - w2) / n
        lines.append(
            f"Ray overhead over the local backend at 2 workers: **{overhead:+.2f} s per experiment**, "
            f"`ray.init` of a local Ray included (it alone took {ray_init:.1f} s, paid once per sweep)."
        )
    lines.append(
        f"Metrics identical across backends and worker counts, experiment by experiment: **{same}**."
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not same:
        raise SystemExit("the backends disagree")


if __name__ == "__main__":
    main()
