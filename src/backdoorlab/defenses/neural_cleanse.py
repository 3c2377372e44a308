"""Neural Cleanse (Wang et al., IEEE S&P 2019): reverse-engineer a trigger per class, flag small outliers.

For every class ``t`` Neural Cleanse searches the smallest trigger that sends clean images to ``t``: a mask
``m`` (H×W, shared over channels) and a pattern ``p`` (C×H×W) with ``x' = (1 − m)·x + m·p`` (Wang et al.
§4, Eq. 2–3). A backdoor target needs a much smaller mask than the other classes, so the L1 norms of the
masks are screened with the median absolute deviation (§4.2): a class whose norm lies below the median by
more than two consistent MADs is flagged.

Everything follows the authors' released code (``bolunwang/backdoor``, ``visualizer.py``, as summarised in
REFERENCE_NOTES "Defences → Neural Cleanse"):

- Parametrisation: ``m = tanh(m_raw)/(2 − 1e-7) + 0.5``, ``p = tanh(p_raw)/(2 − 1e-7) + 0.5`` in raw pixel
  space ([0, 1] here; our models normalise inside, so the blend happens on raw pixels as in the paper).
- Initialisation: ``m`` and ``p`` uniform in [0, 1) (``np.random.random``), mapped to ``atanh((v − 0.5)·(2 −
  1e-7))``; here drawn from the seeded generator given to :meth:`NeuralCleanse.inspect`.
- Loss: ``CE(f(x'), t) + cost·‖m‖₁`` with ``‖m‖₁`` the sum over the H×W mask (the authors sum the
  channel-repeated mask and divide by the channel count). The authors' Keras loss is the per-sample vector,
  i.e. the sum over the batch of both terms; we use the batch mean of both, the same ratio, which Adam does
  not distinguish.
- Optimiser: Adam, lr 0.1, β = (0.5, 0.9), ε = 1e-7, with Keras' update rule
  ``p ← p − lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ) · m̂/(√v̂ + ε)`` (implemented here element-wise, so every class
  row has its own moments and a finished class can simply stop being updated).
- Schedule (one *step* = one epoch of ``batches_per_epoch`` mini-batches; attack accuracy is averaged over
  the epoch's images, the L1 norm over its mini-batches, both measured before each update as the authors'
  ``K.function`` returns them): see :class:`CostSchedule` and :class:`EarlyStop`. The best (smallest
  average L1) mask and pattern of an epoch with attack accuracy ≥ 0.99 are kept; when no epoch reaches it,
  the last ones are returned (the authors' ``mask_best is None`` fallback). The L1 norm fed to the outlier
  test is the sum of that best mask, as in the authors' example script.
- Early stop threshold: the authors' example script uses ``EARLY_STOP_THRESHOLD = 1.0`` (any improvement of
  the best L1 resets the counter; the ``Visualizer`` class default is 0.99); we default to 1.0.

**Batched over classes.** All ``K`` classes are optimised in one loop: the parameters are ``K×H×W`` and
``K×C×H×W`` tensors, each mini-batch of ``B`` clean images is stamped with every active class's trigger into
one ``K·B`` batch, and the per-class losses are summed, so each class's gradient (and, Adam being
element-wise, each class's update) is exactly what it would be on its own. Costs, counters, best masks and
early stops are per class; a class that stops is dropped from the batch and frozen. ``batched=False`` runs the
same engine with one class at a time (the reference the benchmark compares against); both modes see the
same sequence of mini-batches and the same initial values.

**Adaptive Neural Cleanse** (AdvTrojan §4, Eq. 11): :class:`AdaptiveNeuralCleanse` runs the same engine with
the loss of Eq. 11 — the reverse-engineered trigger must send *adversarially perturbed* triggered inputs to the
class while leaving the merely triggered inputs at their true labels.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backdoorlab.adversarial import pgd
from backdoorlab.data.tensors import ImageTensors, make_generator
from backdoorlab.defenses.base import Verdict
from backdoorlab.errors import BackdoorLabError
from backdoorlab.models.registry import check_input_shape
from backdoorlab.training import TrainRecipe, fit
from backdoorlab.triggers import Placement, Trigger

Progress = Callable[[int, int, dict], None]

TANH_EPS = 1e-7  # Keras' K.epsilon(): keeps tanh(.)/(2 − ε) + 0.5 strictly inside (0, 1)
MAD_CONSISTENCY = 1.4826  # makes the MAD a consistent estimator of σ for normal data (Wang et al. §4.2)


# ---------------------------------------------------------------------------------------------------------
# outlier test
# ---------------------------------------------------------------------------------------------------------
def median(values: torch.Tensor) -> torch.Tensor:
    """The median as ``np.median`` computes it: the mean of the two middle values for an even count.

    ``torch.median`` returns the *lower* middle value instead; the authors' ``mad_outlier_detection.py``
    uses numpy, so this is the one that reproduces their anomaly indices.
    """
    v = values.detach().flatten().double().sort().values
    n = v.numel()
    if n == 0:
        raise BackdoorLabError(
            "the median of an empty set of L1 norms is undefined; inspect at least 1 class"
        )
    mid = n // 2
    return v[mid] if n % 2 else (v[mid - 1] + v[mid]) / 2


def mad_anomaly_index(l1: torch.Tensor) -> torch.Tensor:
    """Anomaly index ``|l1 − median| / (1.4826 · median(|l1 − median|))`` of every class (Wang et al. §4.2).

    Medians are numpy-style (see :func:`median`). When the MAD is 0 (half the norms or more are equal), a
    class equal to the median scores 0 and any other class scores +inf. Returns float64, same shape as ``l1``.
    """
    x = l1.detach().double()
    med = median(x)
    dev = (x - med).abs()
    mad = MAD_CONSISTENCY * median(dev)
    index = dev / mad
    return torch.nan_to_num(index, nan=0.0, posinf=math.inf)


def flag_outliers(l1: torch.Tensor, threshold: float = 2.0) -> torch.Tensor:
    """Which classes the MAD test flags: L1 norm below the median *and* anomaly index > ``threshold``.

    Only small norms count, as in the authors' ``mad_outlier_detection.py`` (a class above the median is
    skipped whatever its index): a backdoor target is the class that is unusually *easy* to reach.
    """
    x = l1.detach().double()
    return (x < median(x)) & (mad_anomaly_index(x) > threshold)


# ---------------------------------------------------------------------------------------------------------
# schedule
# ---------------------------------------------------------------------------------------------------------
class CostSchedule:
    """The authors' dynamic weight of the L1 term, one per class, updated once per epoch.

    Starting at 0, the cost is set to ``init_cost`` once the attack accuracy has been ≥ ``threshold`` for
    ``patience`` consecutive epochs (this also clears the up/down counters and flags). From then on it is
    multiplied by ``multiplier_up`` after ``patience`` consecutive epochs at or above the threshold and
    divided by ``multiplier_down`` (``2^1.5`` in the authors' code: the up multiplier to the power 1.5) after
    ``patience`` consecutive epochs below it. ``adjusted_both`` records whether a class has seen at least one
    up and one down adjustment, a precondition of the early stop.

    All state is a tensor with one entry per class (CPU, float64 for the cost), so one call updates all
    classes; :meth:`update` takes the epoch's attack accuracy per class and returns the new costs.
    """

    def __init__(
        self,
        num_classes: int,
        init_cost: float = 1e-3,
        patience: int = 5,
        threshold: float = 0.99,
        multiplier_up: float = 2.0,
        multiplier_down: float | None = None,
    ) -> None:
        self.init_cost = float(init_cost)
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.multiplier_up = float(multiplier_up)
        self.multiplier_down = float(multiplier_up**1.5 if multiplier_down is None else multiplier_down)
        self.cost = torch.zeros(num_classes, dtype=torch.float64)
        self.set_counter = torch.zeros(num_classes, dtype=torch.long)
        self.up_counter = torch.zeros(num_classes, dtype=torch.long)
        self.down_counter = torch.zeros(num_classes, dtype=torch.long)
        self.up_flag = torch.zeros(num_classes, dtype=torch.bool)
        self.down_flag = torch.zeros(num_classes, dtype=torch.bool)

    @property
    def adjusted_both(self) -> torch.Tensor:
        """Classes whose (non-zero) cost has been raised and lowered at least once each."""
        return self.up_flag & self.down_flag & (self.cost > 0)

    def update(self, acc: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Apply one epoch's attack accuracy ``acc`` (of the classes ``rows``, default all); return all costs."""
        idx = torch.arange(len(self.cost)) if rows is None else rows.cpu()
        ok = acc.detach().cpu() >= self.threshold
        cost = self.cost[idx]
        set_counter = torch.where((cost == 0) & ok, self.set_counter[idx] + 1, 0)
        do_set = set_counter >= self.patience
        cost = torch.where(do_set, torch.full_like(cost, self.init_cost), cost)
        up_counter = torch.where(do_set, 0, self.up_counter[idx])
        down_counter = torch.where(do_set, 0, self.down_counter[idx])
        up_flag = self.up_flag[idx] & ~do_set
        down_flag = self.down_flag[idx] & ~do_set
        up_counter = torch.where(ok, up_counter + 1, 0)
        down_counter = torch.where(ok, 0, down_counter + 1)
        up = up_counter >= self.patience
        down = ~up & (down_counter >= self.patience)
        cost = torch.where(
            up, cost * self.multiplier_up, torch.where(down, cost / self.multiplier_down, cost)
        )
        self.cost[idx] = cost
        self.set_counter[idx] = set_counter
        self.up_counter[idx] = torch.where(up, 0, up_counter)
        self.down_counter[idx] = torch.where(down, 0, down_counter)
        self.up_flag[idx] = up_flag | up
        self.down_flag[idx] = down_flag | down
        return self.cost


class EarlyStop:
    """The authors' early-stop counter, one per class.

    Once a valid trigger exists (the best L1 is finite), an epoch whose best L1 is not below ``threshold``
    times the previous best counts as stalled; any improvement resets the count. :meth:`update` returns the
    classes whose count reached ``patience``; the caller also requires :attr:`CostSchedule.adjusted_both`.
    """

    def __init__(self, num_classes: int, patience: int = 25, threshold: float = 1.0) -> None:
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.counter = torch.zeros(num_classes, dtype=torch.long)
        self.best = torch.full((num_classes,), math.inf, dtype=torch.float64)

    def update(self, reg_best: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Feed the current best L1 of the classes ``rows`` (default all); return who ran out of patience."""
        idx = torch.arange(len(self.counter)) if rows is None else rows.cpu()
        reg = reg_best.detach().cpu().double()
        found = torch.isfinite(reg)
        stalled = reg >= self.threshold * self.best[idx]
        counter = self.counter[idx]
        self.counter[idx] = torch.where(found, torch.where(stalled, counter + 1, 0), counter)
        self.best[idx] = torch.minimum(self.best[idx], reg)
        return self.counter[idx] >= self.patience


# ---------------------------------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, kw_only=True)
class NeuralCleanseResult(Verdict):
    """What :meth:`NeuralCleanse.inspect` found, per class of the model (row ``c`` is class ``c``).

    ``masks`` (K×H×W) and ``patterns`` (K×C×H×W, [0, 1]) are the reverse-engineered triggers, ``l1`` their
    mask norms, ``attack_acc`` the epoch-average attack accuracy of the kept trigger, ``anomaly_index`` the
    unsigned MAD index over the inspected classes, ``epochs`` how many epochs each class ran. Classes not
    inspected (see ``classes``) are NaN (``epochs`` 0). ``scores`` (from :class:`Verdict`) is the signed index
    ``(median − l1)/MAD``: large and positive for an unusually small trigger.
    """

    classes: tuple[int, ...]
    masks: torch.Tensor
    patterns: torch.Tensor
    l1: torch.Tensor
    attack_acc: torch.Tensor
    anomaly_index: torch.Tensor
    epochs: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def trigger(self, cls: int) -> Trigger:
        """The reverse-engineered trigger of class ``cls`` as a full-image blend :class:`Trigger`."""
        if int(cls) not in self.classes:
            raise BackdoorLabError(
                f"class {cls} was not inspected; inspected classes: {', '.join(map(str, self.classes))}"
            )
        return Trigger(
            self.patterns[cls].clamp(0, 1),
            self.masks[cls][None].clamp(0, 1),
            "blend",
            Placement("top-left"),
            {"kind": "neural-cleanse", "class": int(cls)},
        )


# ---------------------------------------------------------------------------------------------------------
# the reverse-engineering engine
# ---------------------------------------------------------------------------------------------------------
def _squash(raw: torch.Tensor) -> torch.Tensor:
    return torch.tanh(raw) / (2 - TANH_EPS) + 0.5


def _unsquash(v: torch.Tensor) -> torch.Tensor:
    return torch.atanh((v - 0.5) * (2 - TANH_EPS))


class _Stream:
    """An endless stream of clean mini-batches: shuffled passes (a short batch ends each pass), like Keras'
    ``ImageDataGenerator.flow`` that the authors iterate with ``gen.next()``. Seeded, so two streams with the
    same seed yield the same batches.
    """

    def __init__(self, data: ImageTensors, batch_size: int, device: torch.device, seed: int) -> None:
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size = batch_size
        self.gen = make_generator(seed)
        self.device = device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x, y)``: float [0, 1] images and their true labels (plain Neural Cleanse ignores ``y``)."""
        n = len(self.images)
        while True:
            order = torch.randperm(n, generator=self.gen).to(self.device)
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                xb = self.images[idx]
                yield (xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb.float()), self.labels[idx]


@dataclass
class _Run:
    """Per-class outcome of one engine call (rows in the order of the classes given to it)."""

    masks: torch.Tensor
    patterns: torch.Tensor
    acc: torch.Tensor
    epochs: torch.Tensor
    reached: torch.Tensor
    final_cost: torch.Tensor


class NeuralCleanse:
    """Neural Cleanse detection (Wang et al. 2019, §4) with all classes reverse-engineered in one batch.

    ``epochs`` is the maximum number of schedule steps (AdvTrojan App. F runs 100; the authors' script 1000
    with early stop); one epoch is ``batches_per_epoch`` mini-batches of ``batch_size`` clean images
    (default: one pass over the clean images given to :meth:`inspect`). ``classes`` restricts which classes
    are reverse-engineered (default: all); the MAD test then runs over those only. ``class_chunk`` caps how
    many classes share one forward pass (memory), without changing the result. ``batched=False`` runs one
    class at a time (same numbers up to floating-point summation order). ``mad_threshold`` is the anomaly
    index above which a small-norm class is flagged (2, Wang et al. §4.2).
    """

    name = "neural-cleanse"

    def __init__(
        self,
        epochs: int = 100,
        batch_size: int = 32,
        batches_per_epoch: int | None = None,
        *,
        init_cost: float = 1e-3,
        lr: float = 0.1,
        betas: tuple[float, float] = (0.5, 0.9),
        patience: int = 5,
        cost_multiplier: float = 2.0,
        attack_threshold: float = 0.99,
        early_stop: bool = True,
        early_stop_patience: int = 25,
        early_stop_threshold: float = 1.0,
        mad_threshold: float = 2.0,
        classes: Sequence[int] | None = None,
        batched: bool = True,
        class_chunk: int | None = None,
    ) -> None:
        for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BackdoorLabError(f"neural cleanse {name} must be a positive integer, got {value!r}")
        if batches_per_epoch is not None and (
            not isinstance(batches_per_epoch, int) or batches_per_epoch < 1
        ):
            raise BackdoorLabError(f"neural cleanse batches_per_epoch must be ≥ 1, got {batches_per_epoch!r}")
        if class_chunk is not None and (not isinstance(class_chunk, int) or class_chunk < 1):
            raise BackdoorLabError(f"neural cleanse class_chunk must be ≥ 1, got {class_chunk!r}")
        if not init_cost > 0 or not lr > 0:
            raise BackdoorLabError(f"neural cleanse init_cost and lr must be > 0, got {init_cost}, {lr}")
        if not 0 < attack_threshold <= 1:
            raise BackdoorLabError(
                f"neural cleanse attack_threshold must lie in (0, 1], got {attack_threshold}"
            )
        if not cost_multiplier > 1:
            raise BackdoorLabError(f"neural cleanse cost_multiplier must be > 1, got {cost_multiplier}")
        if early_stop_patience < 1:
            raise BackdoorLabError(
                f"neural cleanse early_stop_patience must be ≥ 1, got {early_stop_patience}"
            )
        self.epochs = epochs
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.init_cost = float(init_cost)
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.patience = patience
        self.cost_multiplier = float(cost_multiplier)
        self.attack_threshold = float(attack_threshold)
        self.early_stop = bool(early_stop)
        self.early_stop_patience = int(early_stop_patience)
        self.early_stop_threshold = float(early_stop_threshold)
        self.mad_threshold = float(mad_threshold)
        self.classes = None if classes is None else tuple(int(c) for c in classes)
        self.batched = bool(batched)
        self.class_chunk = class_chunk

    def describe(self) -> dict:
        """The JSON-able configuration (for reports and cache keys)."""
        return {
            "name": self.name,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "batches_per_epoch": self.batches_per_epoch,
            "init_cost": self.init_cost,
            "lr": self.lr,
            "betas": list(self.betas),
            "patience": self.patience,
            "cost_multiplier": self.cost_multiplier,
            "attack_threshold": self.attack_threshold,
            "early_stop": self.early_stop,
            "early_stop_patience": self.early_stop_patience,
            "early_stop_threshold": self.early_stop_threshold,
            "mad_threshold": self.mad_threshold,
            "classes": None if self.classes is None else list(self.classes),
            "batched": self.batched,
        }

    # -- public verb -----------------------------------------------------------------------------------------
    def inspect(
        self,
        model: nn.Module,
        clean: ImageTensors,
        gen: torch.Generator | int | None = None,
        progress: Progress | None = None,
    ) -> NeuralCleanseResult:
        """Reverse-engineer a trigger for every (selected) class of ``model`` on ``clean`` and run the MAD test.

        The model is evaluated in eval mode with its parameters' ``requires_grad`` switched off; both are
        restored afterwards and the weights are never changed. Work happens on the model's device.
        ``gen`` (a generator or seed; ``None`` = seed 0) draws the initial masks and patterns of all classes
        and the seed of the mini-batch order. ``progress(done, total, info)`` is called after every epoch.
        """
        t0 = time.perf_counter()
        if len(clean) == 0:
            raise BackdoorLabError("neural cleanse needs at least one clean image; the clean set is empty")
        params = list(model.parameters())
        device = params[0].device if params else torch.device("cpu")
        c, h, w = clean.shape
        if isinstance(getattr(model, "spec", None), dict):
            check_input_shape(model, clean.images.shape)
        with torch.no_grad():
            was_training = model.training
            model.eval()
            try:
                num_classes = int(model(clean.float01(slice(0, 1), device=device)).shape[1])
            finally:
                model.train(was_training)
        classes = self._resolve_classes(num_classes)
        gen = make_generator(gen)
        init_mask = _unsquash(torch.rand(num_classes, h, w, generator=gen))
        init_pattern = _unsquash(torch.rand(num_classes, c, h, w, generator=gen))
        data_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        bpe = self.batches_per_epoch or -(-len(clean) // self.batch_size)

        flags = [p.requires_grad for p in params]
        was_training = model.training
        model.eval()
        for p in params:
            p.requires_grad_(False)
        try:
            groups = [list(classes)] if self.batched else [[k] for k in classes]
            total = self.epochs * len(groups)
            runs = []
            for i, group in enumerate(groups):
                idx = torch.tensor(group)
                runs.append(
                    self._run(
                        model,
                        clean,
                        group,
                        init_mask[idx],
                        init_pattern[idx],
                        data_seed,
                        bpe,
                        device,
                        progress,
                        (i * self.epochs, total),
                    )
                )
        finally:
            for p, f in zip(params, flags, strict=True):
                p.requires_grad_(f)
            model.train(was_training)
        return self._result(runs, classes, num_classes, (c, h, w), time.perf_counter() - t0, bpe)

    # -- internals -------------------------------------------------------------------------------------------
    def _resolve_classes(self, num_classes: int) -> tuple[int, ...]:
        if self.classes is None:
            return tuple(range(num_classes))
        if not self.classes:
            raise BackdoorLabError("neural cleanse classes is empty; list at least one class or pass None")
        for k in self.classes:
            if not 0 <= k < num_classes:
                raise BackdoorLabError(
                    f"neural cleanse class {k} is out of range 0..{num_classes - 1} "
                    f"(the model has {num_classes} classes)"
                )
        if len(set(self.classes)) != len(self.classes):
            raise BackdoorLabError(f"neural cleanse classes {list(self.classes)} contain a duplicate")
        return self.classes

    def _run(
        self,
        model: nn.Module,
        clean: ImageTensors,
        targets: list[int],
        mask_raw: torch.Tensor,
        pattern_raw: torch.Tensor,
        data_seed: int,
        batches_per_epoch: int,
        device: torch.device,
        progress: Progress | None,
        progress_at: tuple[int, int],
    ) -> _Run:
        """Optimise the triggers of ``targets`` together (one row per class); return the best of each."""
        n = len(targets)
        # parameters and Adam moments of the *active* classes only, compacted when a class stops
        mask_raw = mask_raw.to(device).clone()
        pattern_raw = pattern_raw.to(device).clone()
        moments = [torch.zeros_like(mask_raw), torch.zeros_like(mask_raw)]
        moments += [torch.zeros_like(pattern_raw), torch.zeros_like(pattern_raw)]
        b1, b2 = self.betas
        schedule = CostSchedule(n, self.init_cost, self.patience, self.attack_threshold, self.cost_multiplier)
        stopper = EarlyStop(n, self.early_stop_patience, self.early_stop_threshold)
        best_mask = _squash(mask_raw).cpu()
        best_pattern = _squash(pattern_raw).cpu()
        best_reg = torch.full((n,), math.inf, dtype=torch.float64)
        best_acc = torch.full((n,), math.nan, dtype=torch.float64)
        last_acc = torch.zeros(n, dtype=torch.float64)
        epochs_run = torch.zeros(n, dtype=torch.long)
        active = torch.arange(n)  # engine rows still optimised, in the order of the compact tensors
        target = torch.tensor(targets, device=device)
        stream = iter(_Stream(clean, self.batch_size, device, data_seed))
        step = 0
        for epoch in range(self.epochs):
            if len(active) == 0:
                break
            a = len(active)
            chunk = self.class_chunk or a
            hits = torch.zeros(a, device=device)
            reg_sum = torch.zeros(a, device=device)
            seen = 0
            cost = schedule.cost[active].to(device=device, dtype=torch.float32)
            tgt = target[active.to(device)]
            for _ in range(batches_per_epoch):
                x, x_labels = next(stream)
                bsz = len(x)
                step += 1
                lr_t = self.lr * math.sqrt(1 - b2**step) / (1 - b1**step)
                for lo in range(0, a, chunk):
                    hi = min(lo + chunk, a)
                    mr = mask_raw[lo:hi].detach().requires_grad_(True)
                    pr = pattern_raw[lo:hi].detach().requires_grad_(True)
                    m = _squash(mr)  # A×H×W
                    p = _squash(pr)  # A×C×H×W
                    data_loss, hit, reg = self._chunk_loss(model, x, x_labels, m, p, tgt[lo:hi])
                    loss = (data_loss + cost[lo:hi] * reg).sum()
                    g_m, g_p = torch.autograd.grad(loss, [mr, pr])
                    with torch.no_grad():
                        for param, grad, m1, v1 in (
                            (mask_raw, g_m, moments[0], moments[1]),
                            (pattern_raw, g_p, moments[2], moments[3]),
                        ):
                            mt, vt = m1[lo:hi], v1[lo:hi]
                            mt.mul_(b1).add_(grad, alpha=1 - b1)
                            vt.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                            param[lo:hi].addcdiv_(mt, vt.sqrt().add_(TANH_EPS), value=-lr_t)
                        hits[lo:hi] += hit
                        reg_sum[lo:hi] += reg.detach()
                seen += bsz
            acc = (hits / seen).double().cpu()
            reg_avg = (reg_sum / batches_per_epoch).double().cpu()
            last_acc[active] = acc
            epochs_run[active] += 1
            # keep the smallest-L1 trigger of an epoch that reaches the attack threshold
            better = (acc >= self.attack_threshold) & (reg_avg < best_reg[active])
            if bool(better.any()):
                sel = better.nonzero().flatten()
                best_mask[active[sel]] = _squash(mask_raw[sel.to(device)]).cpu()
                best_pattern[active[sel]] = _squash(pattern_raw[sel.to(device)]).cpu()
                best_reg[active[sel]] = reg_avg[sel]
                best_acc[active[sel]] = acc[sel]
            # early stop (checked before this epoch's cost change, as the authors do)
            stop = stopper.update(best_reg[active], active) & schedule.adjusted_both[active]
            if not self.early_stop:
                stop = torch.zeros_like(stop)
            schedule.update(acc, active)
            finished = active[stop]
            if len(finished):
                keep = (~stop).nonzero().flatten().to(device)
                mask_raw, pattern_raw = mask_raw[keep], pattern_raw[keep]
                moments = [t[keep] for t in moments]
                active = active[~stop]
            if progress is not None:
                progress(
                    progress_at[0] + epoch + 1,
                    progress_at[1],
                    {
                        "epoch": epoch + 1,
                        "active": [targets[int(i)] for i in active],
                        "finished": [targets[int(i)] for i in finished],
                    },
                )
        reached = torch.isfinite(best_reg)
        # a class that never reached the threshold returns its last trigger (authors: mask_best is None)
        for i, row in enumerate(active.tolist()):
            if not reached[row]:
                best_mask[row] = _squash(mask_raw[i]).cpu()
                best_pattern[row] = _squash(pattern_raw[i]).cpu()
        acc_out = torch.where(reached, best_acc, last_acc)
        return _Run(
            masks=best_mask,
            patterns=best_pattern,
            acc=acc_out,
            epochs=epochs_run,
            reached=reached,
            final_cost=schedule.cost.clone(),
        )

    def _chunk_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        m: torch.Tensor,
        p: torch.Tensor,
        targets: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-class ``(data loss, attack hits, regulariser)`` of one mini-batch for the A classes in
        ``targets`` with masks ``m`` (A×H×W) and patterns ``p`` (A×C×H×W).

        Neural Cleanse (Wang et al. Eq. 3): the mean ``CE(f(x'), t)`` over the batch, the number of ``x'``
        classified as ``t`` and the L1 norm of the mask. ``labels`` (the true labels of ``x``) are unused
        here; :class:`AdaptiveNeuralCleanse` overrides this method.
        """
        a, bsz = len(targets), len(x)
        # x' = (1 − m)·x + m·p for every (class, image) pair: A×B×C×H×W
        xa = torch.lerp(x[None], p[:, None], m[:, None, None])
        logits = model(xa.flatten(0, 1))
        y = targets.repeat_interleave(bsz)
        ce = F.cross_entropy(logits.float(), y, reduction="none").view(a, bsz)
        with torch.no_grad():
            hit = (logits.argmax(1) == y).view(a, bsz).sum(1)
        return ce.mean(1), hit, m.abs().sum((1, 2))

    def _result(
        self,
        runs: list[_Run],
        classes: tuple[int, ...],
        num_classes: int,
        shape: tuple[int, int, int],
        seconds: float,
        batches_per_epoch: int,
    ) -> NeuralCleanseResult:
        c, h, w = shape
        masks = torch.cat([r.masks for r in runs])
        patterns = torch.cat([r.patterns for r in runs])
        idx = torch.tensor(classes)

        def full(values: torch.Tensor, fill: float, dtype: torch.dtype) -> torch.Tensor:
            out = torch.full((num_classes, *values.shape[1:]), fill, dtype=dtype)
            out[idx] = values.to(dtype)
            return out

        l1 = masks.abs().sum((1, 2)).double()
        index = mad_anomaly_index(l1)
        flags = flag_outliers(l1, self.mad_threshold)
        med = median(l1)
        mad = MAD_CONSISTENCY * median((l1 - med).abs())
        signed = torch.nan_to_num((med - l1) / mad, nan=0.0)
        flagged = tuple(classes[i] for i in flags.nonzero().flatten().tolist())
        reached = torch.cat([r.reached for r in runs])
        epochs = torch.cat([r.epochs for r in runs])
        details = {
            "defense": self.describe(),
            "median_l1": float(med),
            "mad": float(mad),
            "mad_threshold": self.mad_threshold,
            "batches_per_epoch": batches_per_epoch,
            "per_class": {
                str(k): {
                    "l1": float(l1[i]),
                    "anomaly_index": float(index[i]),
                    "attack_acc": float(torch.cat([r.acc for r in runs])[i]),
                    "reached_threshold": bool(reached[i]),
                    "epochs": int(epochs[i]),
                    "final_cost": float(torch.cat([r.final_cost for r in runs])[i]),
                }
                for i, k in enumerate(classes)
            },
        }
        return NeuralCleanseResult(
            flagged=flagged,
            scores=full(signed, math.nan, torch.float64),
            details=details,
            seconds=seconds,
            classes=classes,
            masks=full(masks, math.nan, torch.float32).view(num_classes, h, w),
            patterns=full(patterns, math.nan, torch.float32).view(num_classes, c, h, w),
            l1=full(l1, math.nan, torch.float64),
            attack_acc=full(torch.cat([r.acc for r in runs]), math.nan, torch.float64),
            anomaly_index=full(index, math.nan, torch.float64),
            epochs=full(epochs, 0, torch.long),
        )


# ---------------------------------------------------------------------------------------------------------
# adaptive Neural Cleanse (AdvTrojan Eq. 11)
# ---------------------------------------------------------------------------------------------------------
ADAPTIVE_REGS = ("l1", "l2")
ADAPTIVE_PGD_LABELS = ("true", "target")


class AdaptiveNeuralCleanse(NeuralCleanse):
    """Adaptive Neural Cleanse (AdvTrojan §4, Eq. 11, Fig. 5): a defender who knows that the attack combines a
    trigger with an adversarial perturbation reverse-engineers, per class ``t``, the trigger ``t_p`` minimising

        ``CE(f(A(x + t_p)), y_t) + CE(f(x + t_p), y) + ‖t_p‖``

    — after attaching ``t_p`` *and* perturbing, inputs go to ``y_t``, while ``t_p`` alone keeps the true label
    ``y`` (it must make inputs vulnerable, not flip them). Everything else is Neural Cleanse as in the base
    class (mask/pattern parametrisation ``x + t_p := (1 − m)·x + m·p``, Adam, the dynamic cost of the norm
    term, best-trigger bookkeeping, early stop, all classes batched), and the anomaly index is computed on the
    L1 norms of the masks (App. F), so :class:`NeuralCleanseResult` reads the same.

    ``A`` is Eq. 9's generator: Madry PGD (``eps``, ``step``, ``steps``, ``norm``, ``random_start``; default
    Table 1's MNIST setting) crafted against the inspected model on the stamped images, *untargeted* on the
    true labels (``pgd_labels="true"``, as ``A`` in Eq. 9) or targeted at ``y_t`` (``"target"``). The
    perturbation is treated as a constant when differentiating (Danskin, as in adversarial training), so
    gradients reach ``m`` and ``p`` through ``x + t_p``. ``benign_weight`` multiplies the second term (1 in
    Eq. 11). ``reg`` is the visibility term: ``"l1"`` (default) keeps Neural Cleanse's L1 mask norm, since the
    paper says the defenders modify Neural Cleanse's loss; ``"l2"`` uses the L2 norm of the mask as Eq. 11 is
    printed (``‖t_p‖₂``). The attack accuracy that drives the cost schedule is the share of ``A(x + t_p)``
    classified as ``y_t``. ``seed`` seeds PGD's random starts (one generator per :meth:`inspect`; with random
    starts the batched and one-class-at-a-time modes draw differently). Other keyword arguments are
    :class:`NeuralCleanse`'s. Each optimisation step costs ``steps`` extra forward/backward passes over the
    ``classes × batch`` stamped images (the PGD), all classes batched together.
    """

    name = "adaptive-neural-cleanse"

    def __init__(
        self,
        epochs: int = 100,
        batch_size: int = 32,
        batches_per_epoch: int | None = None,
        *,
        eps: float = 0.3,
        step: float = 0.03,
        steps: int = 20,
        norm: str = "linf",
        random_start: bool = True,
        pgd_labels: str = "true",
        benign_weight: float = 1.0,
        reg: str = "l1",
        seed: int = 0,
        **kw: Any,
    ) -> None:
        super().__init__(epochs, batch_size, batches_per_epoch, **kw)
        if norm not in ("linf", "l2"):
            raise BackdoorLabError(f"adaptive neural cleanse norm must be 'linf' or 'l2', got {norm!r}")
        for label, value in (("eps", eps), ("step", step)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise BackdoorLabError(
                    f"adaptive neural cleanse {label} must be a finite number > 0 on the [0, 1] pixel scale, "
                    f"got {value!r}"
                )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise BackdoorLabError(f"adaptive neural cleanse steps must be an integer ≥ 1, got {steps!r}")
        if step * steps < eps * (1 - 1e-9):
            warnings.warn(
                f"adaptive neural cleanse: step × steps = {step * steps:g} < eps = {eps:g}, so PGD cannot reach "
                "the boundary of the ε-ball; raise step or steps",
                stacklevel=2,
            )
        if pgd_labels not in ADAPTIVE_PGD_LABELS:
            raise BackdoorLabError(
                f"adaptive neural cleanse pgd_labels must be one of {', '.join(ADAPTIVE_PGD_LABELS)}, "
                f"got {pgd_labels!r}"
            )
        if reg not in ADAPTIVE_REGS:
            raise BackdoorLabError(
                f"adaptive neural cleanse reg must be one of {', '.join(ADAPTIVE_REGS)}, got {reg!r}"
            )
        if (
            isinstance(benign_weight, bool)
            or not isinstance(benign_weight, (int, float))
            or benign_weight < 0
        ):
            raise BackdoorLabError(
                f"adaptive neural cleanse benign_weight must be ≥ 0, got {benign_weight!r}"
            )
        self.eps, self.step, self.steps, self.norm = float(eps), float(step), int(steps), norm
        self.random_start = bool(random_start)
        self.pgd_labels = pgd_labels
        self.benign_weight = float(benign_weight)
        self.reg = reg
        self.seed = int(seed)
        self._pgd_gen: torch.Generator | None = None

    def describe(self) -> dict:
        return {
            **super().describe(),
            "eps": self.eps,
            "step": self.step,
            "steps": self.steps,
            "norm": self.norm,
            "random_start": self.random_start,
            "pgd_labels": self.pgd_labels,
            "benign_weight": self.benign_weight,
            "reg": self.reg,
            "seed": self.seed,
        }

    def inspect(
        self,
        model: nn.Module,
        clean: ImageTensors,
        gen: torch.Generator | int | None = None,
        progress: Progress | None = None,
    ) -> NeuralCleanseResult:
        """As :meth:`NeuralCleanse.inspect`, with Eq. 11's loss; PGD's random starts are seeded by ``seed``."""
        self._pgd_gen = make_generator(self.seed)
        try:
            return super().inspect(model, clean, gen, progress)
        finally:
            self._pgd_gen = None

    def _chunk_loss(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: torch.Tensor,
        m: torch.Tensor,
        p: torch.Tensor,
        targets: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 11 for A classes at once: one batched PGD over the A·B stamped images, then one forward of
        ``[A(x + t_p), x + t_p]`` (2·A·B images) gives both cross-entropy terms of every class."""
        a, bsz = len(targets), len(x)
        xa = torch.lerp(x[None], p[:, None], m[:, None, None]).flatten(0, 1)  # (A·B)×C×H×W, class-major
        y_true = labels.repeat(a)
        y_t = targets.repeat_interleave(bsz)
        gen = self._pgd_gen if self._pgd_gen is not None else make_generator(self.seed)
        adv = pgd(
            model,
            xa.detach(),
            y_true if self.pgd_labels == "true" else y_t,
            self.eps,
            self.step,
            self.steps,
            norm=self.norm,
            random_start=self.random_start,
            gen=gen,
            targeted=self.pgd_labels == "target",
            warn=False,  # the setting was checked once at construction
        )
        x_adv = xa + (adv.to(xa.dtype) - xa).detach()  # the perturbation is a constant; gradients reach m, p
        logits = model(torch.cat([x_adv, xa])).float()
        l_adv, l_trig = logits.split(a * bsz)
        ce_adv = F.cross_entropy(l_adv, y_t, reduction="none").view(a, bsz).mean(1)
        ce_benign = F.cross_entropy(l_trig, y_true, reduction="none").view(a, bsz).mean(1)
        with torch.no_grad():
            hit = (l_adv.argmax(1) == y_t).view(a, bsz).sum(1)
        reg = m.abs().sum((1, 2)) if self.reg == "l1" else m.pow(2).sum((1, 2)).sqrt()
        return ce_adv + self.benign_weight * ce_benign, hit, reg


# ---------------------------------------------------------------------------------------------------------
# mitigation
# ---------------------------------------------------------------------------------------------------------
UNLEARN_RECIPE = TrainRecipe(epochs=2, batch_size=32, optimizer="sgd", lr=0.01, momentum=0.9)


def unlearn(
    model: nn.Module,
    clean: ImageTensors,
    result: NeuralCleanseResult,
    recipe: TrainRecipe | None = None,
    fraction: float = 0.2,
    gen: torch.Generator | int | None = None,
    classes: Sequence[int] | None = None,
) -> nn.Module:
    """Patch a model by unlearning (Wang et al. 2019, §6.2): fine-tune a copy on clean data in which
    ``fraction`` of the images carry the reverse-engineered trigger of a flagged class, with their *true*
    labels, so the model learns to ignore the trigger.

    ``classes`` overrides which reverse-engineered triggers to use (default: ``result.flagged``; with several,
    each stamped image gets one of them at random). With no class to unlearn, an unchanged copy is returned.
    ``recipe`` defaults to :data:`UNLEARN_RECIPE` (a short SGD fine-tune; the paper fine-tunes for one epoch
    on 10 % of the training data). ``gen`` (generator or seed) picks the images, the triggers and the batch
    order. The input model is not modified.
    """
    if not 0.0 < fraction <= 1.0:
        raise BackdoorLabError(f"unlearning fraction must lie in (0, 1], got {fraction}")
    if len(clean) == 0:
        raise BackdoorLabError("unlearning needs clean images; the clean set is empty")
    targets = list(result.flagged if classes is None else classes)
    for k in targets:
        if int(k) not in result.classes:
            raise BackdoorLabError(
                f"class {k} has no reverse-engineered trigger; inspected classes: "
                f"{', '.join(map(str, result.classes))}"
            )
    repaired = copy.deepcopy(model)
    if not targets:
        return repaired.eval()
    gen = make_generator(gen)
    n = len(clean)
    k = max(1, round(fraction * n))
    chosen = torch.randperm(n, generator=gen)[:k]
    which = torch.randint(0, len(targets), (k,), generator=gen)
    x = clean.float01()
    for j, t in enumerate(targets):
        sel = chosen[which == j].to(x.device)
        m = result.masks[int(t)].to(x.device)
        p = result.patterns[int(t)].to(x.device)
        x[sel] = torch.lerp(x[sel], p, m)
    data = clean.with_images(x.clamp_(0, 1), unlearned=[int(t) for t in targets])
    params = list(repaired.parameters())
    device = params[0].device if params else torch.device("cpu")
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    fit(repaired, data, recipe or UNLEARN_RECIPE, seed=seed, device=device)
    return repaired.eval()
