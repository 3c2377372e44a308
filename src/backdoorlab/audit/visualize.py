"""Visualisation aids for the adversarial examples of a robustified classifier (Sun et al. §3.4, App. A.2).

Sun et al. make the backdoor patterns in large-ε SmoothAdv examples easier to see with two techniques, both
applied to the SmoothAdv objective (:mod:`backdoorlab.audit.smoothadv`):

* **Tikhonov regularisation** (§3.4, App. A.2 "Regularization", Eq. 5): penalise the squared L2 norm of the
  *image gradient* of the adversarial perturbation δ, computed with the 2×2 filter
  ``F = [[2, −1], [−1, 0]]`` (the extracted text shows every entry doubled; see ``seeds/README``), i.e.
  ``(Fδ)[i, j] = (δ[i, j] − δ[i+1, j]) + (δ[i, j] − δ[i, j+1])`` per channel: :func:`image_gradient`,
  :func:`tikhonov_loss`. The paper also tries the **total-variation** loss of Rudin et al. (1992), "the
  distance between neighbouring pixels": :func:`tv_loss` (anisotropic, ``Σ |Δ_row δ|^p + |Δ_col δ|^p``,
  p = 1 as Rudin et al.; p = 2 is Tikhonov with the two one-sided difference filters).
* **Deep Dream octaves** (§3.4, App. A.2 "Deep Dream", after Mordvintsev et al. and the eriklindernoren
  PyTorch-Deep-Dream code the authors adopt): the image is pyramided down by 1.2 per octave; the adversarial
  objective is optimised on the smallest octave first, and the *detail* found there (optimised − base) is
  upscaled and added to the next octave's base before optimising again, "so that backdoor patterns formed
  at earlier stages can be incorporated into those forming at later stages". 4 octaves, fewer noise draws
  (5 instead of 16, "due to the large memory requirements"), 100 steps per octave: :func:`deep_dream`.

Where the paper is silent we choose, and say so:

* the regularised attack alternates, at every PGD step, SmoothAdv's normalised ascent step on the smoothed
  cross-entropy (step ``2ε/steps`` unless ``step_size`` is given) with one gradient-descent step on the
  penalty, ``δ ← δ − (λ / L)·∇R(δ)``, then clips to [0, 1] and projects onto the ε-ball. ``L`` is the
  Lipschitz constant of ∇R (32 for Eq. 5's filter, whose squared frequency response peaks at 16; 16 for the
  quadratic TV), so ``weight`` λ ∈ [0, 1] is the fraction of the largest monotone smoothing step (λ = 1
  removes the highest spatial frequency of δ in one step). Adding λ·R to the loss and normalising the sum's
  gradient, the literal reading, does not work: a fixed-length normalised step cannot settle on a quadratic
  penalty and leaves δ *rougher* (our tests check that the splitting makes δ smoother). The paper gives no
  λ; :data:`DEFAULT_WEIGHT` is ours;
* TV is used in its quadratic form, as the paper says ("TV loss can be seen as a special case of Tikhonov
  regularization with a specific filter"); :func:`tv_loss` also computes Rudin et al.'s L1 form
  (``power=1``) for analysis;
* our models take one fixed input size, so a smaller octave is optimised at its own resolution and bilinearly
  upsampled to the model's input size inside the forward pass (the smoothing noise is added after that, at
  the model's resolution); octave k's ε and step are ``ε·√(pixels_k / pixels)`` and ``step·√(pixels_k /
  pixels)`` (the same RMS per pixel), so the last, full-size octave satisfies the ε-ball exactly;
* the paper's Deep Dream step size "5" refers to 224×224 ImageNet; ``step_size=None`` uses ``2ε/steps``.

All m noise draws of all images go through one forward/backward per step (a batch of N·m); the noise is
drawn once from the generator and kept for every step (and every octave), as SmoothAdv does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from backdoorlab.audit.denoiser import denoised
from backdoorlab.audit.smoothadv import _check_eps, _check_inputs, _check_int, ascent_step, project_l2
from backdoorlab.data.tensors import make_generator
from backdoorlab.defenses.smoothing import check_sigma, eval_channels_last
from backdoorlab.errors import BackdoorLabError, unknown_name

Progress = Callable[[int, int, dict], None]

REGULARIZERS = ("tikhonov", "tv")
DEFAULT_WEIGHT = 0.5  # λ: fraction of the largest stable smoothing step per PGD step (ours; module docstring)
OCTAVES = 4  # Sun et al. App. A.2: "We perform 4 iterations, scaling the image by 1.2 every iteration"
OCTAVE_SCALE = 1.2
DEEP_DREAM_M = 5  # "we use 5 Monte-Carlo noise vectors to estimate gradients"

# Eq. 5: the 2×2 image-gradient filter (cross-correlation, as torch's conv2d)
EQ5_FILTER = torch.tensor([[2.0, -1.0], [-1.0, 0.0]])


# -- regularisers ---------------------------------------------------------------------------------------------
def image_gradient(x: torch.Tensor) -> torch.Tensor:
    """The image gradient of Sun et al. Eq. 5: ``x`` (N×C×H×W) filtered per channel by ``F = [[2, −1], [−1, 0]]``.

    Returns N×C×(H−1)×(W−1) with ``(x[i, j] − x[i+1, j]) + (x[i, j] − x[i, j+1])`` (valid positions only).
    """
    _check_batch(x, "x")
    c = x.shape[1]
    w = EQ5_FILTER.to(x.device, x.dtype).expand(c, 1, 2, 2)
    return F.conv2d(x, w, groups=c)


def tikhonov_loss(delta: torch.Tensor) -> torch.Tensor:
    """Tikhonov regulariser of §3.4 / App. A.2: ``‖F ∗ δ‖₂²`` per image (N values), F of Eq. 5."""
    return image_gradient(delta).pow(2).flatten(1).sum(1)


def tv_loss(delta: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """Total variation (Rudin et al. 1992; Sun et al. App. A.2, Fig. 19) per image (N values).

    Anisotropic: ``Σ |δ[i+1, j] − δ[i, j]|^p + Σ |δ[i, j+1] − δ[i, j]|^p`` over channels and positions.
    ``power`` 2 (default) is the quadratic form the paper calls "a special case of Tikhonov regularization
    with a specific filter" and the one the attack uses; 1 is Rudin et al.'s L1 form.
    """
    _check_batch(delta, "delta")
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0 < power <= 2:
        raise BackdoorLabError(f"power must be a number in (0, 2] (1 = L1 total variation), got {power!r}")
    dr = (delta[:, :, 1:, :] - delta[:, :, :-1, :]).abs().pow(power).flatten(1).sum(1)
    dc = (delta[:, :, :, 1:] - delta[:, :, :, :-1]).abs().pow(power).flatten(1).sum(1)
    return dr + dc


# Lipschitz constants of the penalties' gradients: ∇‖Fδ‖² = 2FᵀFδ with ‖FᵀF‖ = max |2 − e^{iu} − e^{iv}|² = 16;
# the quadratic TV's ∇ = 2DᵀDδ with ‖DᵀD‖ = 8 (the 2-D Laplacian's largest eigenvalue)
LIPSCHITZ = {"tikhonov": 32.0, "tv": 16.0}


def regularizer_fn(name: str | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The per-image penalty for a regulariser name (``"tikhonov"``, ``"tv"``, quadratic) or None."""
    if name is None:
        return None
    if name == "tikhonov":
        return tikhonov_loss
    if name == "tv":
        return tv_loss
    raise unknown_name("regularizer", str(name), REGULARIZERS)


def _check_batch(x: object, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise BackdoorLabError(f"{name} must be a float N×C×H×W tensor, got {shape}")
    if x.shape[-1] < 2 or x.shape[-2] < 2:
        raise BackdoorLabError(f"{name} must be at least 2×2 pixels, got {tuple(x.shape[-2:])}")


def _check_weight(weight: object) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise BackdoorLabError(
            f"weight must be a number in [0, 1] (the fraction of the largest stable smoothing step), got {weight!r}"
        )
    return float(weight)


def _check_step(step_size: object, eps: float, steps: int) -> float:
    if step_size is None:
        return 2.0 * eps / steps
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not math.isfinite(step_size):
        raise BackdoorLabError(
            f"step_size must be a finite L2 step > 0 or None (2ε/steps), got {step_size!r}"
        )
    if step_size <= 0:
        raise BackdoorLabError(f"step_size must be > 0 (or None for 2ε/steps), got {step_size!r}")
    return float(step_size)


# -- the PGD core ---------------------------------------------------------------------------------------------
def _pgd(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    noise: torch.Tensor | None,
    steps: int,
    step: float,
    delta0: torch.Tensor | None,
    penalty: Callable[[torch.Tensor], torch.Tensor] | None,
    reg_step: float,
    model_hw: tuple[int, int],
    channels_last: bool,
    gen: torch.Generator,
    progress: Progress | None,
    stage: str,
    done: int,
    total: int,
) -> torch.Tensor:
    """SmoothAdv's normalised-gradient L2 PGD (see :mod:`~backdoorlab.audit.smoothadv`) with two additions:
    after each ascent step a descent step ``δ ← δ − reg_step·∇penalty(δ)`` (module docstring), and
    optimisation at a resolution other than the model's (``x`` is upsampled bilinearly to ``model_hw``
    before the noise is added). ``noise`` is N×m×C×H×W at the model's resolution (σ included) or None;
    ``delta0`` a starting δ.
    """
    resize = tuple(x.shape[-2:]) != tuple(model_hw)
    delta = torch.zeros_like(x) if delta0 is None else project_l2(x, delta0.to(x.dtype), eps)
    for t in range(steps):
        delta, loss = ascent_step(
            net, x, delta, y, noise, step, gen, channels_last=channels_last, check=t == 0,
            model_hw=tuple(model_hw) if resize else None,
        )  # fmt: skip
        if penalty is not None and reg_step > 0:
            with torch.enable_grad():
                d = delta.requires_grad_(True)
                (g_reg,) = torch.autograd.grad(penalty(d).sum(), d)
            delta = delta.detach() - reg_step * g_reg
        with torch.no_grad():
            delta = project_l2(x, delta, eps)
        if progress is not None:
            progress(done + t + 1, total, {"stage": stage, "loss": float(loss) / max(len(x), 1)})
    return (x + delta).detach()


def _setup(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: object,
    sigma: object,
    denoiser: nn.Module | None,
    m: object,
    steps: object,
    batch_size: object,
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, float, float | None, int, int, int | None]:
    eps = _check_eps(eps)
    sigma = None if sigma is None else check_sigma(sigma)
    m = _check_int(m, "m", "noise draws per image")
    steps = _check_int(steps, "steps", "PGD iterations per octave")
    if batch_size is not None:
        batch_size = _check_int(batch_size, "batch_size", "images per forward pass")
    if denoiser is not None and sigma is None:
        raise BackdoorLabError("a denoiser needs sigma (Denoised Smoothing smooths f ∘ D with N(0, σ²I))")
    net = model if denoiser is None else denoised(model, denoiser)
    x, y = _check_inputs(net, x, y)
    return net, x, y, eps, sigma, m, steps, batch_size


def _device(net: nn.Module, x: torch.Tensor) -> torch.device:
    return next((p.device for p in net.parameters()), x.device)


def _wrap_errors(run: Callable[[], torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    try:
        return run()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise BackdoorLabError(
            f"the model failed on inputs of shape {shape} ({first}); "
            "pass images of the shape the model was built for (or a smaller batch_size if out of memory)"
        ) from None


def _objective(
    regularizer: str | None,
    weight: object,
    step_size: float | None,
    eps: float,
    steps: int,
    sigma: float | None,
    m: int,
) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, float, float, int]:
    """``(penalty, its step (weight / L), the PGD step, m)`` shared by the regularised and Deep Dream
    attacks; without smoothing (``sigma=None``, Basic Adv) there is one draw."""
    penalty = regularizer_fn(regularizer)
    weight = _check_weight(weight)
    reg_step = weight / LIPSCHITZ[regularizer] if penalty is not None else 0.0
    return penalty, reg_step, _check_step(step_size, eps, steps), 1 if sigma is None else m


# -- public API -----------------------------------------------------------------------------------------------
def regularized_smoothadv(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    sigma: float | None,
    denoiser: nn.Module | None = None,
    regularizer: str | None = "tikhonov",
    weight: float = DEFAULT_WEIGHT,
    m: int = 16,
    steps: int = 100,
    step_size: float | None = None,
    gen: torch.Generator | int | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """SmoothAdv with Tikhonov (Eq. 5) or TV regularisation of the perturbation (Sun et al. §3.4, Fig. 19).

    Each PGD step ascends ``Σ_i CE(mean_j softmax(f(D(x_i + δ_i + σ n_ij))), y_i)`` with SmoothAdv's
    normalised step and then descends the penalty ``R`` = :func:`tikhonov_loss` (``regularizer="tikhonov"``)
    or the quadratic :func:`tv_loss` (``"tv"``) by ``(weight / L)·∇R`` (module docstring); ``None`` or
    ``weight=0`` is plain SmoothAdv and gives exactly :func:`~backdoorlab.audit.smoothadv.smoothadv`'s result
    for the same ``gen``. ``sigma=None`` attacks the bare model (``m`` is then 1: "Basic Adv"). Returns
    ``x + δ`` with ``‖δ‖₂ ≤ ε`` per image and pixels in [0, 1]; ``progress(step, total, info)`` per step.
    """
    net, x, y, eps, sigma, m, steps, batch_size = _setup(
        model, x, y, eps, sigma, denoiser, m, steps, batch_size
    )
    penalty, reg_step, step, m = _objective(regularizer, weight, step_size, eps, steps, sigma, m)
    return _wrap_errors(
        lambda: _run_octaves(
            net,
            x,
            y,
            eps,
            sigma,
            m,
            steps,
            step,
            penalty,
            reg_step,
            1,
            1.0,
            gen,
            batch_size,
            progress,
            "smoothadv",
        ),
        tuple(x.shape[1:]),
    )


def deep_dream(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    sigma: float | None,
    denoiser: nn.Module | None = None,
    octaves: int = OCTAVES,
    octave_scale: float = OCTAVE_SCALE,
    regularizer: str | None = None,
    weight: float = DEFAULT_WEIGHT,
    m: int = DEEP_DREAM_M,
    steps: int = 100,
    step_size: float | None = None,
    gen: torch.Generator | int | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """SmoothAdv in the Deep Dream framework (Sun et al. §3.4, App. A.2; Figs. 5, 18).

    ``octaves`` resolutions, each ``octave_scale`` smaller than the next (4 and 1.2 in the paper); on each,
    ``steps`` PGD steps of the (optionally regularised, as :func:`regularized_smoothadv`) SmoothAdv
    objective start from the octave's base image plus the upscaled detail of the previous octave. ``m``
    defaults to 5 noise draws (the paper's Deep Dream setting). Returns full-size ``x + δ`` with
    ``‖δ‖₂ ≤ ε`` and pixels in [0, 1].
    """
    net, x, y, eps, sigma, m, steps, batch_size = _setup(
        model, x, y, eps, sigma, denoiser, m, steps, batch_size
    )
    octaves = _check_int(octaves, "octaves", "resolutions, 4 in the paper")
    if (
        isinstance(octave_scale, bool)
        or not isinstance(octave_scale, (int, float))
        or not math.isfinite(octave_scale)
        or octave_scale < 1
    ):
        raise BackdoorLabError(f"octave_scale must be a number ≥ 1 (1.2 in the paper), got {octave_scale!r}")
    penalty, reg_step, step, m = _objective(regularizer, weight, step_size, eps, steps, sigma, m)
    return _wrap_errors(
        lambda: _run_octaves(
            net, x, y, eps, sigma, m, steps, step, penalty, reg_step, octaves, float(octave_scale), gen,
            batch_size, progress, "deep-dream",
        ),
        tuple(x.shape[1:]),
    )  # fmt: skip


def octave_sizes(hw: tuple[int, int], octaves: int, scale: float) -> list[tuple[int, int]]:
    """Image sizes of the Deep Dream pyramid, smallest first; the last is ``hw`` (each ≥ 2×2)."""
    H, W = hw
    sizes = []
    for k in range(octaves - 1, -1, -1):
        f = scale**k
        sizes.append((max(2, round(H / f)), max(2, round(W / f))))
    return sizes


def _run_octaves(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    sigma: float | None,
    m: int,
    steps: int,
    step: float,
    penalty: Callable[[torch.Tensor], torch.Tensor] | None,
    reg_step: float,
    octaves: int,
    scale: float,
    gen: torch.Generator | int | None,
    batch_size: int | None,
    progress: Progress | None,
    stage: str,
) -> torch.Tensor:
    g = make_generator(gen)
    dev = _device(net, x)
    out_device = x.device
    xs = x.detach().to(dev, torch.float32)
    ys = y.detach().to(dev).long()
    if len(xs) == 0:
        return x.detach().clone().float()
    H, W = xs.shape[-2:]
    # the noise is drawn once, up front, for all images (the result does not depend on batch_size)
    noise = None if sigma is None else (sigma * torch.randn((len(xs), m, *xs.shape[1:]), generator=g)).to(dev)
    chunk = len(xs) if batch_size is None else batch_size
    starts = list(range(0, len(xs), chunk))
    sizes = octave_sizes((H, W), octaves, scale)
    total = steps * len(sizes) * len(starts)
    outs = []
    done = 0
    with eval_channels_last(net) as cl, torch.enable_grad():
        for start in starts:
            sl = slice(start, start + chunk)
            xc, yc = xs[sl], ys[sl]
            nc = None if noise is None else noise[sl]
            detail = None
            adv = xc
            for hw in sizes:
                base = xc if hw == (H, W) else F.interpolate(xc, size=hw, mode="area")
                d0 = None
                if detail is not None:
                    d0 = F.interpolate(detail, size=hw, mode="bilinear", align_corners=False)
                eps_k = eps * math.sqrt(hw[0] * hw[1] / (H * W))
                adv = _pgd(
                    net, base, yc, eps_k, nc, steps, step * eps_k / eps, d0, penalty, reg_step, (H, W), cl, g,
                    progress, stage, done, total,
                )  # fmt: skip
                detail = adv - base
                done += steps
            outs.append(adv)
    return torch.cat(outs).to(out_device)


def visualize(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    sigma: float | None,
    denoiser: nn.Module | None = None,
    method: str = "smoothadv",
    regularizer: str | None = None,
    weight: float = DEFAULT_WEIGHT,
    m: int | None = None,
    steps: int = 100,
    step_size: float | None = None,
    gen: torch.Generator | int | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """One entry point for the audit: ``method`` ``"smoothadv"`` (App. A.2) or ``"deep-dream"`` (§3.4), with
    an optional ``regularizer`` (``"tikhonov"``, Eq. 5, or ``"tv"``). ``m=None`` uses 16 noise draws for
    SmoothAdv and 5 for Deep Dream, as the paper.
    """
    methods = ("smoothadv", "deep-dream")
    if method not in methods:
        raise unknown_name("visualisation method", str(method), methods)
    common = {
        "sigma": sigma,
        "denoiser": denoiser,
        "regularizer": regularizer,
        "weight": weight,
        "steps": steps,
        "step_size": step_size,
        "gen": gen,
        "batch_size": batch_size,
        "progress": progress,
    }
    if method == "deep-dream":
        return deep_dream(model, x, y, eps, m=DEEP_DREAM_M if m is None else m, **common)
    return regularized_smoothadv(model, x, y, eps, m=16 if m is None else m, **common)


__all__ = [
    "DEFAULT_WEIGHT",
    "EQ5_FILTER",
    "REGULARIZERS",
    "deep_dream",
    "image_gradient",
    "octave_sizes",
    "regularized_smoothadv",
    "regularizer_fn",
    "tikhonov_loss",
    "tv_loss",
    "visualize",
]
