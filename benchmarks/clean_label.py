"""Clean-label poison generation: ours vs IBM ART's ``PoisoningAttackCleanLabelBackdoor`` in the same run.

Two settings, each with the same data, LeNet (AdvTrojan Table 6), target class, share of the target class,
PGD ball, step (2.5·ε/100), iteration count (100, no random start), trigger (Turner's 3×3 pattern at the
bottom-right) and victim recipe in every row:

- ``mnist5k``: the issue's reference point (4,000 images, 33 % of class 0, L∞ ε 0.3);
- ``fashion``: the turner2019-small regime (20,000 Fashion-MNIST images, 25 % of class 4, L2 ε 600/255), where
  clean-label poisoning moves the victim at all.

Rows: 1. ART, source model = a normally trained LeNet (ART's documented use); 2. ours, the same source model
(equal settings: the speed comparison); 3. ours, an adversarially trained source model (Turner §4.2/§5.3: the
attack as the paper specifies). For each: poison-generation wall time, images/s, how many *distinct* images were
poisoned (ART draws the indices with replacement), and the clean accuracy and ASR of a victim trained on them.

Needs ART, which the package does not depend on; install it in the benchmark's own environment::

    python -m venv benchmarks/.venv-art
    benchmarks/.venv-art/bin/pip install torch==2.13.0 adversarial-robustness-toolbox
    benchmarks/.venv-art/bin/pip install -e .
    benchmarks/.venv-art/bin/python benchmarks/clean_label.py [--threads 1] [--settings mnist5k fashion]

Writes ``benchmarks/results/clean_label.md``.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backdoorlab import TrainRecipe, accuracy, attack_success_rate, create_model, fit, load_dataset
from backdoorlab.adversarial import madry_objective
from backdoorlab.attacks.clean_label import CleanLabel
from backdoorlab.data.tensors import ImageTensors, make_generator
from backdoorlab.fileio import write_atomic
from backdoorlab.triggers import stamp, turner_pattern

RESULTS = Path(__file__).parent / "results" / "clean_label.md"


@dataclass(frozen=True)
class Setting:
    """One comparison: data, target, share of the target class, PGD ball, victim recipe."""

    name: str
    data: str
    per_class: int | None
    target: int
    share: float
    norm: str  # "linf" or "l2"
    eps: float  # [0, 1] pixel scale
    victim: TrainRecipe
    steps: int = 100
    robust_eps: float = 0.1  # the Madry source model's L∞ training ε (trainable at this scale)
    robust_epochs: int = 5

    @property
    def step(self) -> float:
        return 2.5 * self.eps / self.steps


SETTINGS = {
    # the reference point: ART's documented attack on the LeNet / mnist5k split
    "mnist5k": Setting(
        "mnist5k (4,000 train / 1,000 test), target 0, 33 % of the target class, L∞ ε 0.3",
        "mnist5k", None, 0, 0.33, "linf", 0.3,
        TrainRecipe(epochs=10, batch_size=64, lr=0.05, momentum=0.9), robust_epochs=8,
    ),
    # the turner2019-small regime, where clean-label poisoning moves the victim at all
    "fashion": Setting(
        "Fashion-MNIST (20,000 train / 2,000 test), target 4 (coat), 25 % of the target class, L2 ε 600/255",
        "fashion-mnist", 2000, 4, 0.25, "l2", 600 / 255,
        TrainRecipe(epochs=6, batch_size=50, lr=0.05, momentum=0.9, weight_decay=2e-4, schedule="cosine"),
    ),
}  # fmt: skip


def lenet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("lenet", in_channels=1, num_classes=10, input_size=28)


def load(setting: Setting) -> tuple[ImageTensors, ImageTensors]:
    train, test = load_dataset(setting.data)
    if setting.per_class is not None:
        train, test = (
            train.per_class(setting.per_class, seed=0),
            test.per_class(setting.per_class // 10, seed=0),
        )
    return train, test


def source_models(setting: Setting, train: ImageTensors) -> dict[str, torch.nn.Module]:
    """A normally trained LeNet (ART's documented use) and a Madry-trained one (Turner §4.2, §5.3).

    The robust model is trained at a small L∞ ε (0.1): Madry training at ε 0.3 from scratch for a few epochs
    collapses to chance on mnist5k (10 % clean accuracy), and PGD on a collapsed model is noise.
    """
    plain = lenet(1)
    fit(plain, train, setting.victim, seed=1, device="cpu")
    robust = lenet(2)
    e = setting.robust_eps
    objective = madry_objective(e, e / 4, 7, norm="linf", random_start=True, gen=2)
    recipe = setting.victim.model_copy(update={"epochs": setting.robust_epochs})
    fit(robust, train, recipe, objective=objective, seed=2, device="cpu")
    return {"plain": plain.eval(), "robust": robust.eval()}


def art_poison(
    setting: Setting, model: torch.nn.Module, train: ImageTensors
) -> tuple[ImageTensors, torch.Tensor, float]:
    from art.attacks.poisoning import PoisoningAttackBackdoor, PoisoningAttackCleanLabelBackdoor
    from art.estimators.classification import PyTorchClassifier

    trigger = turner_pattern()

    def add_trigger(x: np.ndarray) -> np.ndarray:
        return stamp(torch.from_numpy(x).float(), trigger).numpy()

    clf = PyTorchClassifier(
        model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10, clip_values=(0, 1)
    )
    attack = PoisoningAttackCleanLabelBackdoor(
        PoisoningAttackBackdoor(add_trigger),
        clf,
        np.eye(10, dtype=np.float32)[setting.target],
        pp_poison=setting.share,
        norm=np.inf if setting.norm == "linf" else 2,
        eps=setting.eps,
        eps_step=setting.step,
        max_iter=setting.steps,
    )
    x = train.float01().numpy()
    y = np.eye(10, dtype=np.float32)[train.labels.numpy()]
    np.random.seed(0)
    t0 = time.perf_counter()
    xp, _ = attack.poison(x, y)
    seconds = time.perf_counter() - t0
    images = torch.from_numpy(xp)
    changed = (images != torch.from_numpy(x)).flatten(1).any(1).nonzero().squeeze(1)
    return train.with_images(ImageTensors.quantize(images)), changed, seconds


def ours_poison(
    setting: Setting, model: torch.nn.Module, train: ImageTensors
) -> tuple[ImageTensors, torch.Tensor, float]:
    attack = CleanLabel(
        turner_pattern(), target=setting.target, rate=setting.share, perturbation="pgd", norm=setting.norm,
        eps=setting.eps * 255, step=setting.step * 255, steps=setting.steps, robust_model=model, batch_size=1024,
    )  # fmt: skip
    t0 = time.perf_counter()
    p = attack.poison(train, make_generator(0))
    return p.data, p.poison_idx, time.perf_counter() - t0


def victim_scores(setting: Setting, data: ImageTensors, test: ImageTensors) -> tuple[float, float]:
    model = lenet(3)
    fit(model, data, setting.victim, seed=3, device="cpu")
    probe = CleanLabel(turner_pattern(), target=setting.target)
    return accuracy(model, test), attack_success_rate(model, test, probe, seed=0)


def asr_verdict(rows: list[tuple]) -> str:
    """What the ASR column shows, from the measured numbers (not from what the paper leads one to expect)."""
    (art, n_art), (same, n_same), (robust, _) = ((r[-1], r[3]) for r in rows)
    pts = lambda v: f"{100 * v:+.1f} points"  # noqa: E731
    if max(art, same, robust) < 0.10:
        return (
            f"**No row reaches a meaningful ASR** (ART {100 * art:.1f} %, ours {100 * same:.1f} % / "
            f"{100 * robust:.1f} %): with this few poisons the LeNet victim fits them without using the trigger, "
            "so this setting compares speed only."
        )
    if robust >= art + 0.10:
        return (
            f"With the adversarially trained source model (Turner §4.2, §5.3) ours reaches **{100 * robust:.1f} %"
            f"** ASR against ART's {100 * art:.1f} % ({pts(robust - art)}) at the same PGD settings: "
            "robust-model perturbations carry features of other classes, so the victim leans on the trigger "
            f"to fit the poisons; and ours poisons {n_same} distinct images where ART's draws give {n_art}."
        )
    return (
        f"Every row plants the backdoor. Ours is {pts(same - art)} above ART with the same source model "
        f"({n_same} distinct poisons against ART's {n_art}: ART draws with replacement) and {pts(robust - art)} "
        "with the adversarially trained one — **not the clearly higher ASR** Turner's robust source model should "
        "give: here it adds nothing over the plain model."
    )


def run_setting(key: str, threads: int) -> list[str]:
    setting = SETTINGS[key]
    train, test = load(setting)
    n_target = int((train.labels == setting.target).sum())
    sources = source_models(setting, train)
    source_acc = {k: accuracy(m, test) for k, m in sources.items()}
    rows = []
    for name, fn, src in (
        ("ART PoisoningAttackCleanLabelBackdoor", art_poison, "plain"),
        ("backdoorlab CleanLabel", ours_poison, "plain"),
        ("backdoorlab CleanLabel", ours_poison, "robust"),
    ):
        data, idx, seconds = fn(setting, sources[src], train)
        clean, asr = victim_scores(setting, data, test)
        n = len(idx)
        rows.append((name, src, seconds, n, clean, asr))
        print(f"[{key}] {name:40s} source={src:6s} {seconds:7.2f} s  {n / seconds:7.1f} img/s  distinct={n}  "
              f"clean={clean:.3f}  ASR={asr:.3f}", flush=True)  # fmt: skip
    speed = rows[0][2] / rows[1][2]
    print(f"[{key}] speed-up at equal settings (ART time / ours): {speed:.2f}x")
    v = setting.victim
    lines = [
        f"## {setting.name}",
        "",
        f"LeNet, target class {setting.target} ({n_target} training images), {setting.steps} PGD steps of "
        f"{setting.step:.4f}, no random start, Turner's 3×3 trigger; victim: LeNet, {v.epochs} epochs SGD lr "
        f"{v.lr}. Source models: plain {100 * source_acc['plain']:.1f} % clean accuracy, robust (Madry L∞ ε "
        f"{setting.robust_eps}, {setting.robust_epochs} epochs) {100 * source_acc['robust']:.1f} %.",
        "",
        "| attack | source model | poison time (s) | images/s | distinct poisons | victim clean acc | ASR |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, src, seconds, n, clean, asr in rows:
        lines.append(
            f"| {name} | {src} | {seconds:.2f} | {n / seconds:.1f} | {n} | {100 * clean:.1f} % | {100 * asr:.1f} % |"
        )
    lines += [
        "",
        f"Speed-up at equal settings (rows 1–2, same source model): **{speed:.2f}×** "
        f"(images/s: {rows[1][3] / rows[1][2]:.1f} vs {rows[0][3] / rows[0][2]:.1f}).",
        "",
        asr_verdict(rows),
        "",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    body = [line for key in args.settings for line in run_setting(key, args.threads)]
    lines = [
        "# Clean-label poison generation: backdoorlab vs ART",
        "",
        f"`benchmarks/.venv-art/bin/python benchmarks/clean_label.py --threads {args.threads} --settings "
        f"{' '.join(args.settings)}` on {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), CPU; {(time.time() - t0) / 60:.1f} min in all.",
        "",
        "Rows per setting: ART with a normally trained source model (its documented use); ours with the same "
        "model (equal settings: the speed comparison); ours with an adversarially trained source model (the "
        "attack as Turner §4.2/§5.3 specify). Same data, trigger, share of the target class, PGD ball, step and "
        "iteration count, and victim recipe in every row.",
        "",
        "Poison sets differ in size: ART draws the poisoned indices *with replacement* (`np.random.choice` "
        "without `replace=False`), so the same share of the target class yields fewer distinct poisons; ours "
        "takes a seeded permutation (REFERENCE_NOTES 002).",
        "",
        *body,
    ]
    write_atomic(RESULTS, "\n".join(lines).rstrip() + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
