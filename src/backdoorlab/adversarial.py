"""Gradient attacks on the input: FGSM, BIM and PGD under L∞ or L2, plus Madry adversarial training.

* FGSM — Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015.
* BIM — Kurakin, Goodfellow & Bengio, "Adversarial Examples in the Physical World", ICLR 2017 workshop.
* PGD and adversarial training — Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models
  Resistant to Adversarial Attacks", ICLR 2018.

Everything works on raw pixels in [0, 1] (models normalise inside), so ``eps`` and ``step`` are on the
[0, 1] scale; convert papers' 0–255 figures with :func:`eps_from_255`. Attacks are batched over the whole
input, run the model in eval mode (restoring its mode afterwards), take gradients with respect to the
input only (model parameters never receive ``.grad``) and return detached tensors.

Settings used by the seed papers: Turner et al. (clean-label) craft L2 ε = 300/600/1200 or L∞ ε = 8/16/32
(0–255 scale) on an adversarially trained model; AdvTrojan (Table 1) uses L∞ 0.3, step 0.03, 20 steps on
MNIST; 0.2, 0.02, 20 on Fashion-MNIST; 8/255 with 7 steps on CIFAR-10.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from backdoorlab.data.loader import Batches
from backdoorlab.data.tensors import ImageTensors, make_generator
from backdoorlab.errors import BackdoorLabError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Objective = Callable[
    [torch.nn.Module, torch.Tensor, torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"
]
Progress = Callable[[int, int, dict], None]

NORMS = ("linf", "l2")


def eps_from_255(v: float) -> float:
    """A perturbation size on the 0–255 pixel scale converted to the [0, 1] scale used in code (``v / 255``).

    Turner et al. state their L2 bounds ε = 300, 600, 1200 and L∞ bounds 8, 16, 32 on the 0–255 scale;
    in code these are 300/255, 600/255, 1200/255 (≈ 1.18, 2.35, 4.71) and 8/255, 16/255, 32/255. The
    conversion is linear for every Lp norm, so the same factor applies to L2 and L∞.
    """
    return float(v) / 255.0


# -- validation ----------------------------------------------------------------------------------------------
def _check(
    eps: float, step: float | None = None, steps: int | None = None, norm: str = "linf", restarts: int = 1
) -> None:
    if norm not in NORMS:
        raise BackdoorLabError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise BackdoorLabError(f"eps must be a finite number ≥ 0 (on the [0, 1] pixel scale), got {eps!r}")
    if step is not None and not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
        raise BackdoorLabError(f"step must be a finite number > 0 (on the [0, 1] pixel scale), got {step!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise BackdoorLabError(f"steps must be an integer ≥ 1, got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise BackdoorLabError(f"restarts must be an integer ≥ 1, got {restarts!r}")


def warn_unreachable(eps: float, step: float, steps: int, where: str = "", *, stacklevel: int = 2) -> bool:
    """Warn (``UserWarning``) when ``step × steps < eps``: the iterations cannot reach the ε-ball's surface.

    Such a setting is allowed (App. G-style sweeps and cheap training use it on purpose) but is usually a
    mistake, so every place where eps, step and steps meet reports it through this one helper. ``where``
    names the setting (e.g. ``"robust"``); ``stacklevel`` is counted from the caller, as for
    :func:`warnings.warn`. Returns whether it warned. ``eps = 0`` never warns.
    """
    if not (eps > 0 and step * steps < eps * (1 - 1e-9)):
        return False
    prefix = f"{where}: " if where else ""
    warnings.warn(
        f"{prefix}step {step:g} × steps {steps} = {step * steps:g} < eps {eps:g}: PGD cannot reach the "
        "ε-ball's surface from its start; raise step or steps (AdvTrojan's Table 1 uses step × steps = 2·eps)",
        UserWarning,
        stacklevel=stacklevel + 1,
    )
    return True


# -- geometry ------------------------------------------------------------------------------------------------
def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped ``N×1×…×1`` for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def _direction(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent unit step: sign(g) for L∞, g/‖g‖₂ per sample for L2 (a zero gradient stays zero)."""
    if norm == "linf":
        return g.sign()
    return g / _flat_norm(g).clamp_min(1e-12)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project onto the ε-ball around ``x`` and the [0, 1] box (clipping never leaves the ball)."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def _random_start(x: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """A uniform draw from the L∞ box, or uniformly from the L2 ball (Gaussian direction, radius ε·u^(1/d))."""
    shape = tuple(x.shape)
    if norm == "linf":
        delta = (torch.rand(shape, generator=gen) * 2 - 1) * eps
    else:
        d = math.prod(shape[1:])
        direction = torch.randn(shape, generator=gen)
        direction = direction / _flat_norm(direction).clamp_min(1e-12)
        radius = eps * torch.rand(shape[0], generator=gen).pow(1.0 / d)
        delta = direction * radius.view(-1, *([1] * (len(shape) - 1)))
    return (x + delta.to(device=x.device, dtype=x.dtype)).clamp(0.0, 1.0)


# -- core loop -----------------------------------------------------------------------------------------------
def _per_sample_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn | None):
    """The loss of every sample (a vector), or the scalar ``loss_fn`` returned when it reduces."""
    logits = model(x)
    if loss_fn is None:
        return F.cross_entropy(logits.float(), y, reduction="none")
    return loss_fn(logits, y)


def _model_device(model: torch.nn.Module, fallback: torch.device) -> torch.device:
    p = next(model.parameters(), None)
    return fallback if p is None else p.device


def _run(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step: float,
    steps: int,
    norm: str,
    targeted: bool,
    loss_fn: LossFn | None,
    start: torch.Tensor,
) -> torch.Tensor:
    """``steps`` signed/normalised gradient steps from ``start``, projected after each one (model in eval)."""
    sign = -1.0 if targeted else 1.0
    x_adv = start.detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = _per_sample_loss(model, x_adv, y, loss_fn).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = x_adv + (sign * step) * _direction(grad, norm)
            x_adv = _project(x_adv, x, eps, norm)
    return x_adv.detach()


def _attack(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step: float,
    steps: int,
    norm: str,
    random_start: bool,
    gen: torch.Generator | int | None,
    targeted: bool,
    loss_fn: LossFn | None,
    restarts: int,
) -> torch.Tensor:
    out_device = x.device
    dev = _model_device(model, x.device)
    x = x.detach().to(dev).float()
    y = y.detach().to(dev)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            if not random_start:  # deterministic: further restarts would repeat the same run
                return _run(model, x, y, eps, step, steps, norm, targeted, loss_fn, x).to(out_device)
            g = make_generator(gen)
            best, best_loss = None, None
            for _ in range(restarts):
                start = _random_start(x, eps, norm, g)
                cand = _run(model, x, y, eps, step, steps, norm, targeted, loss_fn, start)
                if restarts == 1:
                    return cand.to(out_device)
                with torch.no_grad():
                    loss = _per_sample_loss(model, cand, y, loss_fn)
                    if loss.ndim != 1 or len(loss) != len(y):  # a reducing loss_fn: rank by cross-entropy
                        loss = _per_sample_loss(model, cand, y, None)
                    loss = loss.float()
                if best is None:
                    best, best_loss = cand, loss
                    continue
                better = loss < best_loss if targeted else loss > best_loss
                best = torch.where(better.view(-1, *([1] * (x.ndim - 1))), cand, best)
                best_loss = torch.where(better, loss, best_loss)
            return best.to(out_device)
    finally:
        model.train(was_training)


# -- public attacks ------------------------------------------------------------------------------------------
def fgsm(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    norm: str = "linf",
    targeted: bool = False,
    loss_fn: LossFn | None = None,
) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al., ICLR 2015): one step of size ``eps``, clipped to [0, 1].

    L∞ steps along sign(∇ₓ loss); L2 (the "fast gradient method") along the gradient normalised to unit L2
    norm per sample. ``targeted`` descends the loss toward labels ``y``. ``loss_fn(logits, y)`` defaults to
    per-sample cross-entropy (summed for the gradient, so samples do not interact).
    """
    _check(eps, norm=norm)
    if eps == 0:
        return x.detach().clamp(0.0, 1.0)
    return _attack(model, x, y, eps, eps, 1, norm, False, None, targeted, loss_fn, 1)


def bim(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step: float,
    steps: int,
    *,
    norm: str = "linf",
    targeted: bool = False,
    loss_fn: LossFn | None = None,
    warn: bool = True,
) -> torch.Tensor:
    """Basic Iterative Method (Kurakin et al., ICLR 2017 workshop): iterated FGSM steps of size ``step``,
    clipped to the ε-ball around ``x`` and to [0, 1] after each step, i.e. PGD without a random start.
    ``warn`` as in :func:`pgd`."""
    _check(eps, step, steps, norm)
    if warn:
        warn_unreachable(eps, step, steps, "bim")
    return pgd(
        model, x, y, eps, step, steps, norm=norm, random_start=False, targeted=targeted, loss_fn=loss_fn,
        warn=False,
    )  # fmt: skip


def pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step: float,
    steps: int,
    *,
    norm: str = "linf",
    random_start: bool = False,
    gen: torch.Generator | int | None = None,
    targeted: bool = False,
    loss_fn: LossFn | None = None,
    restarts: int = 1,
    warn: bool = True,
) -> torch.Tensor:
    """Projected Gradient Descent (Madry et al., ICLR 2018) within an L∞ or L2 ball of radius ``eps``.

    Each of ``steps`` iterations moves ``x_adv`` by ``step`` along sign(g) (L∞) or g/‖g‖₂ per sample (L2),
    then projects onto the ε-ball around ``x`` (clamp for L∞, rescale δ for L2) and clips to [0, 1].
    ``random_start`` begins at a uniform point of the L∞ box or of the L2 ball, drawn from ``gen`` (a
    ``torch.Generator`` or a seed; ``None`` means seed 0). ``targeted`` minimises the loss toward ``y``
    (then target labels). ``loss_fn(logits, y)`` defaults to per-sample cross-entropy; a custom one may
    return per-sample losses or a sum. With ``restarts`` > 1 (and a random start) the example with the
    highest per-sample loss (lowest when targeted) is kept; without a random start restarts would repeat
    the same deterministic run, so one is done. ``step × steps < eps`` is allowed but warned
    (:func:`warn_unreachable`); callers that run the same setting every batch and have warned once already
    (:func:`madry_objective`, AdvTrojan's Eq. 9) pass ``warn=False``.
    """
    _check(eps, step, steps, norm, restarts)
    if warn:
        warn_unreachable(eps, step, steps, "pgd")
    return _attack(model, x, y, eps, step, steps, norm, random_start, gen, targeted, loss_fn, restarts)


# -- datasets ------------------------------------------------------------------------------------------------
def perturb_dataset(
    model: torch.nn.Module,
    data: ImageTensors,
    attack: AttackFn,
    batch_size: int = 256,
    progress: Progress | None = None,
) -> ImageTensors:
    """Apply a batched ``attack(x, y) -> x_adv`` to all of ``data`` and return float32 images in [0, 1].

    The images are not quantised (use :meth:`ImageTensors.quantize` to store them as uint8). ``model``
    only chooses the device the batches are moved to. ``progress(done, total, info)`` follows each batch.
    """
    dev = _model_device(model, data.device)
    batches = Batches(data, batch_size, device=dev)
    out = []
    for i, (x, y) in enumerate(batches, start=1):
        out.append(attack(x, y).detach().float().to(data.device))
        if progress is not None:
            progress(i, len(batches), {"stage": "perturb"})
    images = torch.cat(out) if out else torch.empty((0, *data.shape), dtype=torch.float32)
    return data.with_images(images.clamp(0.0, 1.0))


def robust_accuracy(
    model: torch.nn.Module, data: ImageTensors, attack: AttackFn, batch_size: int = 256
) -> float:
    """Top-1 accuracy of ``model`` on ``attack(x, y)`` of every batch of ``data`` (labels are the true ones)."""
    if len(data) == 0:
        return float("nan")
    dev = _model_device(model, data.device)
    was_training = model.training
    correct = torch.zeros((), dtype=torch.long, device=dev)
    try:
        for x, y in Batches(data, batch_size, device=dev):
            x_adv = attack(x, y)
            model.eval()
            with torch.no_grad():
                correct += (model(x_adv.to(dev)).argmax(1) == y).sum()
    finally:
        model.train(was_training)
    return int(correct) / len(data)


# -- adversarial training ------------------------------------------------------------------------------------
def madry_objective(
    eps: float,
    step: float,
    steps: int,
    *,
    norm: str = "linf",
    random_start: bool = True,
    gen: torch.Generator | int | None = None,
    mix: float = 0.0,
) -> Objective:
    """The adversarial-training objective of Madry et al. (ICLR 2018) for :func:`backdoorlab.training.fit`.

    For each batch, PGD examples are crafted against the current model (attack in eval mode, then the
    training mode is restored) and the objective returns ``(loss, logits)`` with the adversarial logits,
    so ``fit``'s ``train_acc`` is the robust training accuracy. ``mix`` ∈ [0, 1] blends in the benign loss:
    ``mix·CE(x) + (1 − mix)·CE(x_adv)``; 0 is Madry's pure min-max training. The random starts draw from
    one generator (``gen``, a seed or ``None`` for seed 0) that advances across batches. ``step × steps <
    eps`` is allowed but warned once, here, not on every batch.
    """
    _check(eps, step, steps, norm)
    if not (isinstance(mix, (int, float)) and 0.0 <= mix <= 1.0):
        raise BackdoorLabError(f"mix must lie in [0, 1] (0 = pure adversarial training), got {mix!r}")
    warn_unreachable(eps, step, steps, "madry_objective")
    g = make_generator(gen)

    def objective(
        model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = pgd(model, x, y, eps, step, steps, norm=norm, random_start=random_start, gen=g, warn=False)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        if mix > 0:
            loss = mix * F.cross_entropy(model(x), y) + (1.0 - mix) * loss
        return loss, logits

    return objective


__all__ = [
    "NORMS",
    "bim",
    "eps_from_255",
    "fgsm",
    "madry_objective",
    "perturb_dataset",
    "pgd",
    "robust_accuracy",
    "warn_unreachable",
]
