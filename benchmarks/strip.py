"""STRIP: backdoorlab vs ART (Adversarial Robustness Toolbox 1.20.1) on the same model and the same inputs.

Trains (or reuses from ``--cache``) a BadNets LeNet on mnist5k — white 3×3 square at the bottom-right, target 0,
10 % poisoned, SGD lr 0.05 momentum 0.9, batch 64, 8 epochs (the model of ``benchmarks/neural_cleanse.py``) —
then, for each number of overlays N, runs in one process, alternating, best of ``--repeats`` timings:

* **ART** ``art.defences.transformer.poisoning.STRIP`` on a ``PyTorchClassifier`` of the model with a softmax
  appended (ART needs probabilities): ``mitigate(x_val)`` fits the threshold, ``predict(x)`` abstains (all-zero
  row) on suspected trojans. ART overlays ``0.5·x + 0.5·x_k`` with ``x_k`` drawn with replacement from
  ``x_val`` by ``np.random.choice``, one Python iteration per input, and its entropy is
  ``Σ_c H(p[:, c] / Σ_n p[n, c]) / N`` — the entropy *across the overlays* of each class column (scipy
  ``entropy(..., axis=0)``), not Gao et al.'s.
* **ours, ART's definition**: the same overlays (ART's ``np.random`` draws replayed from the same seed), the
  same formula, batched in torch — checks that the two agree number for number, and times the formula alone.
* **ours, Gao's definition** (``backdoorlab.defenses.strip.STRIP``): the mean over the N overlays of each
  overlay's Shannon entropy (Gao et al. 2019), all N blends of many inputs in one forward. Once with ART's
  overlay protocol (``blend="mean"``, ``draw="random"`` from the same validation set, threshold fitted on it)
  and once with the paper's (``blend="sum"``, a fixed pool of N reserved images, threshold on the rest).

Detection quality at each method's own threshold (normal fit of clean entropies at a 1 % false-rejection
rate, Gao et al.; ART calls it ``false_acceptance_rate``): FRR = clean inputs flagged, FAR = triggered inputs
missed, and the AUROC of the entropy score. Speed: inputs per second of the detection call on clean +
triggered inputs (ART: ``predict``; ours: ``entropy``); the speed-up compares ours (Gao) with ART at the same N.

    benchmarks/.venv-art/bin/python benchmarks/strip.py [--n 20 100] [--inputs 150] [--val 200]
                                                       [--repeats 2] [--threads 1]

Writes ``benchmarks/results/strip.md``.
"""

from __future__ import annotations

import argparse
import inspect
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from neural_cleanse import (
    backdoored_lenet,  # the same BadNets LeNet and cache file (benchmarks/ is on sys.path)
)

from backdoorlab import (
    accuracy,
    make_generator,
)
from backdoorlab.defenses.strip import STRIP, auroc, normal_threshold, roc_curve

RESULTS = Path(__file__).parent / "results" / "strip.md"
# the library's default images per forward pass, read from STRIP's signature so the labels follow it
DEFAULT_BATCH: int = inspect.signature(STRIP).parameters["batch_size"].default
TARGET = 0
LOG2 = math.log(2.0)


class Bf16(torch.nn.Module):
    """``model`` run under bfloat16 autocast (fast on CPUs with AVX512-BF16 / AMX), logits back in float32: what
    ``STRIP(bf16=True)`` does inside, given to ART (and to the compute ceiling) for a like-for-like row."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.model(x).float()


# -- ART -----------------------------------------------------------------------------------------------------
def art_strip(model: torch.nn.Module, n: int, frr: float):
    """A fresh ART STRIP-wrapped classifier (``STRIP.__call__`` rewrites the classifier's class in place)."""
    import importlib

    from art.defences.transformer.poisoning import STRIP as ArtSTRIP
    from art.estimators.classification import PyTorchClassifier

    art_strip_module = importlib.import_module("art.estimators.poison_mitigation.strip.strip")
    art_strip_module.tqdm = lambda it, *a, **k: it  # mitigate() draws a progress bar per image otherwise

    clf = PyTorchClassifier(
        model=torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval(),
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    return ArtSTRIP(clf)(num_samples=n, false_acceptance_rate=frr)


def replay_art_draws(seed: int, n_val: int, n: int, count: int) -> np.ndarray:
    """The overlay indices ART draws for ``count`` consecutive inputs after ``np.random.seed(seed)``."""
    np.random.seed(seed)
    return np.stack([np.random.choice(np.arange(n_val), n) for _ in range(count)])


@torch.no_grad()
def art_entropy_batched(
    model: torch.nn.Module, x: torch.Tensor, val: torch.Tensor, idx: np.ndarray, batch: int = 512
) -> torch.Tensor:
    """ART's entropy, batched: ``Σ_c H_2(p[:, c] / Σ_n p[n, c]) / N`` over the overlays ``0.5·x + 0.5·val[idx]``."""
    n = idx.shape[1]
    ov = val[torch.from_numpy(idx)]  # inputs × N × C × H × W
    out = []
    per = max(1, batch // n)
    for s in range(0, len(x), per):
        blends = (0.5 * x[s : s + per, None] + 0.5 * ov[s : s + per]).flatten(0, 1)
        p = model(blends).float().softmax(1).view(-1, n, 10).double()
        q = p / p.sum(1, keepdim=True)
        out.append(torch.special.entr(q).sum((1, 2)) / LOG2 / n)
    return torch.cat(out)


# -- measurement ---------------------------------------------------------------------------------------------
def rates(
    h_clean: torch.Tensor, h_troj: torch.Tensor, threshold: float, inclusive: bool
) -> tuple[float, float]:
    """(FRR, FAR): clean flagged, trojaned missed, flagged when the entropy is below (ART: ≤) the threshold."""
    below = (lambda h: h <= threshold) if inclusive else (lambda h: h < threshold)
    return float(below(h_clean).double().mean()), float((~below(h_troj)).double().mean())


def best_of(fns: dict[str, callable], repeats: int) -> dict[str, float]:
    """Best wall time of each function over ``repeats`` rounds, the functions alternating within a round."""
    best = dict.fromkeys(fns, math.inf)
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[20, 100], help="overlays per input (ART default 20)")
    ap.add_argument("--inputs", type=int, default=150, help="clean inputs; as many triggered ones")
    ap.add_argument("--val", type=int, default=200, help="held-out clean images: overlays and threshold")
    ap.add_argument(
        "--frr", type=float, default=0.01, help="false-rejection rate of the threshold (Gao: 1 %)"
    )
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--batch-size", type=int, default=512, help="images per forward pass of ours (STRIP batch_size)"
    )
    ap.add_argument("--train-epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/backdoorlab_bench_cache"))
    ap.add_argument("--no-write", action="store_true", help="print only; do not write the markdown")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import art

    t_start = time.perf_counter()
    model, attack, test = backdoored_lenet(args.cache, args.train_epochs)
    clean_acc = accuracy(model, test)
    perm = torch.randperm(len(test), generator=make_generator(args.seed))
    val = test.float01(perm[: args.val].sort().values)
    rest = test.subset(perm[args.val :].sort().values)
    clean = rest.float01(torch.arange(args.inputs))
    victims = rest.subset((rest.labels != TARGET).nonzero().squeeze(1)[: args.inputs])
    troj = attack.apply_trigger(victims.float01())
    with torch.no_grad():
        asr = float((model(troj).argmax(1) == TARGET).double().mean())
    both = torch.cat([clean, troj])
    val_np, clean_np, troj_np = val.numpy(), clean.numpy(), troj.numpy()
    m = len(clean)

    def measure(n: int) -> dict:
        def fitted_art(net: torch.nn.Module):
            """ART's STRIP fitted on the validation set; its seeded predictions on clean and triggered inputs,
            and the FRR / FAR they give."""
            clf = art_strip(net, n, args.frr)
            np.random.seed(args.seed)
            clf.mitigate(val_np)

            def predict_both() -> tuple[np.ndarray, np.ndarray]:
                out = []
                for x, seed in ((clean_np, args.seed + 1), (troj_np, args.seed + 2)):
                    np.random.seed(seed)
                    out.append(clf.predict(x))
                return out[0], out[1]

            pred_c, pred_t = predict_both()
            return (
                clf,
                predict_both,
                float((np.abs(pred_c).sum(1) == 0).mean()),
                float((np.abs(pred_t).sum(1) != 0).mean()),
            )

        # ART: fit on the validation set, then predict on clean and triggered inputs (seeded np.random)
        art_clf, art_run, art_frr, art_far = fitted_art(model)

        # ours, ART's definition with ART's own draws replayed: must give the same entropies and threshold
        idx_val = replay_art_draws(args.seed, len(val), n, len(val))
        idx_c = replay_art_draws(args.seed + 1, len(val), n, m)
        idx_t = replay_art_draws(args.seed + 2, len(val), n, m)
        h_val = art_entropy_batched(model, val, val, idx_val)
        th_art = normal_threshold(float(h_val.mean()), float(h_val.std(unbiased=False)), args.frr)
        h_c = art_entropy_batched(model, clean, val, idx_c)
        h_t = art_entropy_batched(model, troj, val, idx_t)
        rep_frr, rep_far = rates(h_c, h_t, th_art, inclusive=True)
        same = (rep_frr, rep_far) == (art_frr, art_far) and abs(th_art - art_clf.entropy_threshold) < 1e-6
        art_auroc = auroc(*roc_curve(-h_c, -h_t))

        # ART with its model under bf16 autocast: the same cheaper forward that STRIP(bf16=True) uses
        _, art_bf_run, art_bf_frr, art_bf_far = fitted_art(Bf16(model))

        # ours, Gao's definition: ART's overlay protocol, and the paper's
        held = test.subset(perm[: args.val].sort().values)
        bs = max(args.batch_size, n)
        ours_def = STRIP(n=n, frr=args.frr, blend="mean", draw="random", seed=args.seed).fit(model, held, val)
        ours_art = STRIP(n=n, frr=args.frr, blend="mean", draw="random", seed=args.seed, batch_size=bs)
        ours_art.fit(model, held, calibration=val)
        ours_gao = STRIP(n=n, frr=args.frr, blend="sum", draw="fixed", seed=args.seed, batch_size=bs)
        ours_gao.fit(model, held)
        ours_bf16 = STRIP(
            n=n, frr=args.frr, blend="mean", draw="random", seed=args.seed, batch_size=bs, bf16=True
        )
        ours_bf16.fit(model, held, calibration=val)
        det = {}
        for name, s in (
            ("default batch", ours_def),
            ("protocol of ART", ours_art),
            ("paper protocol", ours_gao),
            ("bf16", ours_bf16),
        ):
            e = s.evaluate(clean, troj, fprs=())
            det[name] = (e["frr"], e["far"], e["auroc"])

        times = best_of(
            {
                "art": art_run,
                "replay": lambda: (
                    art_entropy_batched(model, clean, val, idx_c, bs),
                    art_entropy_batched(model, troj, val, idx_t, bs),
                ),
                "ours_def": lambda: ours_def.entropy(both),
                "ours_art": lambda: ours_art.entropy(both),
                "ours_gao": lambda: ours_gao.entropy(both),
                "ours_bf16": lambda: ours_bf16.entropy(both),
                "art_bf16": art_bf_run,
            },
            args.repeats,
        )
        ips = {k: 2 * m / v for k, v in times.items()}
        row = {
            "n": n,
            "art": (ips["art"], art_frr, art_far, art_auroc),
            "replay": (ips["replay"], rep_frr, rep_far, art_auroc),
            "ours_def": (ips["ours_def"], *det["default batch"]),
            "ours_art": (ips["ours_art"], *det["protocol of ART"]),
            "ours_gao": (ips["ours_gao"], *det["paper protocol"]),
            "ours_bf16": (ips["ours_bf16"], *det["bf16"]),
            "art_bf16": (ips["art_bf16"], art_bf_frr, art_bf_far, math.nan),
            "same": same,
            "speedup": ips["ours_art"] / ips["art"],
            "speedup_default": ips["ours_def"] / ips["art"],
            "speedup_paper": ips["ours_gao"] / ips["art"],
            "speedup_bf16": ips["ours_bf16"] / ips["art"],
            "speedup_bf16_both": ips["ours_bf16"] / ips["art_bf16"],
        }
        print(f"N={n}: inputs/s ART {ips['art']:.0f}, ART-def batched {ips['replay']:.0f}, ours "
              f"{ips['ours_art']:.0f} (ART protocol) / {ips['ours_gao']:.0f} (paper); ART FRR/FAR "
              f"{art_frr:.3f}/{art_far:.3f}, ours {det['protocol of ART'][0]:.3f}/{det['protocol of ART'][1]:.3f}; "
              f"replay identical: {same}", flush=True)  # fmt: skip
        return row

    rows = [measure(n) for n in args.n]

    @torch.no_grad()
    def forward_rate(net: torch.nn.Module, batch: int, total: int = 4000) -> float:
        """Best-of-repeats images/s of plain forward passes of ``batch`` images (the compute ceiling)."""
        xb = torch.rand(batch, 1, 28, 28)
        net(xb)
        best = math.inf
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            for _ in range(max(1, total // batch)):
                net(xb)
            best = min(best, time.perf_counter() - t0)
        return max(1, total // batch) * batch / best

    ceiling = {b: forward_rate(model, b) for b in sorted({*args.n, args.batch_size, 4096})}
    ceiling_bf16 = forward_rate(Bf16(model), args.batch_size)
    notes = [
        f"N = {r['n']}: the replayed ART entropies did not reproduce ART's decisions exactly."
        for r in rows
        if not r["same"]
    ]

    seconds = time.perf_counter() - t_start
    lines = [
        "# STRIP: backdoorlab vs ART",
        "",
        f"Command: `benchmarks/.venv-art/bin/python benchmarks/strip.py --n {' '.join(map(str, args.n))} "
        f"--inputs {args.inputs} --val {args.val} --repeats {args.repeats} --threads {args.threads} "
        f"--batch-size {args.batch_size}` (repository "
        f"root; ART {art.__version__} in `benchmarks/.venv-art`). Wall time of the whole run {seconds:.0f} s.",
        "",
        f"Machine: {platform.machine()}, torch {torch.__version__}, {args.threads} CPU thread(s), CPU only; "
        "timings on a shared machine under load: each row is the best of "
        f"{args.repeats} alternating repeats in the same process.",
        "",
        f"Model: BadNets LeNet (AdvTrojan Table 6) on mnist5k, white 3×3 square bottom-right, target {TARGET}, "
        f"10 % poisoned, {args.train_epochs} epochs: clean accuracy {clean_acc:.4f}, ASR on the triggered "
        f"inputs {asr:.4f}. Inputs: {m} clean test images and {m} triggered non-target test images; "
        f"{args.val} other held-out clean test images are the validation set (overlays and threshold) of every "
        f"method. Threshold: normal fit of clean entropies at a {100 * args.frr:g} % false-rejection rate "
        "(Gao et al.; ART's `false_acceptance_rate`).",
        "",
        "Inputs/s = (clean + triggered inputs) / wall time of the detection call (ART `predict`, ours `entropy`).",
        "FRR = clean inputs flagged; FAR = triggered inputs missed; AUROC of the entropy as a score (— where only "
        "ART's decisions are read).",
        "",
        "| N | method | entropy definition | overlays | inputs/s | FRR | FAR | AUROC |",
        "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        for key, method, definition, overlays in (
            ("art", "ART `STRIP`", "ART: across overlays", "0.5·x + 0.5·x_k, x_k drawn per input"),
            ("replay", "ours, batched replica of ART", "ART: across overlays", "ART's own draws, replayed"),
            ("ours_def", f"ours `STRIP(blend='mean', draw='random')`, default `batch_size={DEFAULT_BATCH}`",
             "Gao: mean per-overlay", "0.5·x + 0.5·x_k, x_k drawn per input"),
            ("ours_art", "ours `STRIP(blend='mean', draw='random', batch_size=B)`", "Gao: mean per-overlay",
             "0.5·x + 0.5·x_k, x_k drawn per input"),
            ("ours_gao", "ours `STRIP(batch_size=B)` (paper protocol)", "Gao: mean per-overlay",
             "x + x_k, fixed pool of N reserved images"),
            ("ours_bf16", "ours `STRIP(blend='mean', draw='random', batch_size=B, bf16=True)`",
             "Gao: mean per-overlay", "0.5·x + 0.5·x_k, x_k drawn per input"),
            ("art_bf16", "ART `STRIP`, its model under bf16", "ART: across overlays",
             "0.5·x + 0.5·x_k, x_k drawn per input"),
        ):  # fmt: skip
            ips, frr, far, au = r[key]
            au_s = "—" if math.isnan(au) else f"{au:.3f}"
            lines.append(
                f"| {r['n']} | {method} | {definition} | {overlays} | {ips:,.0f} | {frr:.3f} | {far:.3f} | {au_s} |"
            )
    lines += [""]
    for r in rows:
        lines.append(
            f"- N = {r['n']}: ours (Gao's definition, ART's overlay protocol, B = {max(args.batch_size, r['n'])}) "
            f"is **{r['speedup']:.1f}×** ART's inputs/s (library default batch {DEFAULT_BATCH}: {r['speedup_default']:.1f}×; "
            f"paper protocol: {r['speedup_paper']:.1f}×; `bf16=True`: {r['speedup_bf16']:.1f}× fp32 ART and "
            f"{r['speedup_bf16_both']:.1f}× ART with its model under bf16 too; "
            f"target ≥ 3× at equal detection quality). The batched replica of ART's "
            f"definition reproduces ART's threshold and every decision: **{r['same']}**."
        )
    lines += [f"- {note}" for note in notes]
    lines += [
        "",
        "Compute ceiling — LeNet forward passes alone, images/s (fp32): "
        + ", ".join(f"batch {b}: {v:,.0f}" for b, v in ceiling.items())
        + f"; bf16 autocast, batch {args.batch_size}: {ceiling_bf16:,.0f}. Every method classifies N blends per "
        "input, so "
        "inputs/s cannot exceed (images/s) / N: at N = 100 ART's one-`predict`-per-input loop already runs a "
        "100-image batch and sits near that ceiling, and batching many inputs per forward pass cannot make the "
        "same fp32 arithmetic ≥ 3× faster on this CPU. What does: a cheaper forward (bf16 autocast on CPUs with "
        "AVX512-BF16/AMX: `STRIP(bf16=True)`; the same autocast speeds ART's forward as well: the row 'ART `STRIP`, its model under bf16'), "
        "or a GPU, "
        "where ART's per-input calls are launch-bound (not measured here: no GPU in this session).",
    ]
    lines += [
        "",
        "ART's entropy `Σ_c H(p[:, c] / Σ_n p[n, c]) / N` measures how evenly each class's probability mass is "
        "spread over the N overlays, not how uncertain each overlay's prediction is (Gao et al.'s "
        "`−(1/N) Σ_n Σ_c p log₂ p`), so the two definitions give different thresholds and rates; both are shown. "
        "ART loops over inputs in Python (N blends, one `predict` call and one scipy call per input); ours "
        f"classifies the N blends of `batch_size // N` inputs in one forward pass (B = max({args.batch_size}, N) "
        f"images per forward in the rows marked B; the library default is {DEFAULT_BATCH}, see the compute "
        "ceiling for other batch sizes).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
