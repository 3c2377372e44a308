"""Training throughput: backdoorlab's ``fit`` vs a plain ``DataLoader`` + loop, same LeNet, same data.

Both sides train AdvTrojan's LeNet (Table 6) on the mnist5k training split from the same initial weights
with the same recipe (SGD, momentum 0.9, weight decay 5e-4, cosine schedule, batch 64); the plain loop
uses ``torch.utils.data.DataLoader`` over a ``TensorDataset`` of float images, as a typical script would.
Images/s counts training time only (evaluation excluded), median over epochs; the final test accuracy of
each run shows whether a speed lever cost accuracy. Variants are interleaved in rounds so that machine
noise hits every variant alike, and each figure is reported as a ratio to the plain loop of its round.

    python benchmarks/train_throughput.py [--epochs 6] [--rounds 2] [--batch-size 64]

Writes ``benchmarks/results/train_throughput.md``.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from backdoorlab import TrainRecipe, accuracy, create_model, fit, load_dataset
from backdoorlab.training import bf16_supported, lr_at

RESULTS = Path(__file__).parent / "results" / "train_throughput.md"


def new_lenet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("lenet", in_channels=1, num_classes=10, input_size=28)


def plain_loop(train, recipe: TrainRecipe, seed: int) -> tuple[torch.nn.Module, list[float]]:
    """What a typical PyTorch script does: DataLoader over a TensorDataset, fp32, unfused SGD."""
    model = new_lenet()
    ds = TensorDataset(train.float01(), train.labels)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(ds, batch_size=recipe.batch_size, shuffle=True, generator=gen)
    opt = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    speeds = []
    for epoch in range(recipe.epochs):
        for g in opt.param_groups:
            g["lr"] = lr_at(recipe, epoch)
        model.train()
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
        speeds.append(seen / (time.perf_counter() - t0))
    return model.eval(), speeds


def ours(train, recipe: TrainRecipe, seed: int) -> tuple[torch.nn.Module, list[float]]:
    model = new_lenet()
    history = fit(model, train, recipe, seed=seed, device="cpu")
    return model, [h["images_per_s"] for h in history]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    train, test = load_dataset("mnist5k")
    base = TrainRecipe(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        channels_last=False,
        bf16=False,
    )
    has_bf16 = bf16_supported(torch.device("cpu"))
    variants = {
        "plain DataLoader loop (fp32)": (plain_loop, base),
        "fit: in-memory batches, fused SGD (fp32)": (ours, base),
        "fit + channels-last (fp32)": (ours, base.model_copy(update={"channels_last": True})),
    }
    if has_bf16:
        variants["fit + bf16 autocast"] = (ours, base.model_copy(update={"bf16": True}))
        variants["fit + channels-last + bf16 autocast"] = (
            ours,
            base.model_copy(update={"bf16": True, "channels_last": True}),
        )

    speed: dict[str, list[float]] = {k: [] for k in variants}
    ratio: dict[str, list[float]] = {k: [] for k in variants}
    acc: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        plain_speed = math.nan
        for name, (fn, recipe) in variants.items():
            model, speeds = fn(train, recipe, seed=r)
            s = statistics.median(speeds)
            if fn is plain_loop:
                plain_speed = s
            speed[name].append(s)
            ratio[name].append(s / plain_speed)
            acc[name].append(accuracy(model, test))
            print(
                f"round {r + 1}: {name:<44} {s:8.0f} img/s  ×{s / plain_speed:4.2f}  acc {acc[name][-1]:.2%}"
            )

    lines = [
        "# Training throughput: `fit` vs a plain DataLoader loop",
        "",
        f"LeNet (AdvTrojan Table 6) on mnist5k ({len(train)} train / {len(test)} test), {args.epochs} epochs, "
        f"batch {args.batch_size}, SGD lr 0.05 momentum 0.9 wd 5e-4 cosine, {args.threads} threads, "
        f"{args.rounds} interleaved rounds; CPU: {platform.processor() or platform.machine()}, "
        f"bf16 instructions: {'yes' if has_bf16 else 'no'}, torch {torch.__version__}.",
        "",
        "Command: `python benchmarks/train_throughput.py "
        f"--epochs {args.epochs} --rounds {args.rounds} --batch-size {args.batch_size}`",
        "",
        "| variant | images/s (median) | × plain loop (same round) | test accuracy |",
        "|---|---:|---:|---:|",
    ]
    for name in variants:
        lines.append(
            f"| {name} | {statistics.median(speed[name]):.0f} | ×{statistics.median(ratio[name]):.2f} "
            f"| {statistics.mean(acc[name]):.2%} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
