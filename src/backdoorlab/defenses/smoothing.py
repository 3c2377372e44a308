"""Randomized smoothing: Monte-Carlo PREDICT and CERTIFY of Cohen, Rosenfeld & Kolter (ICML 2019).

The smoothed classifier of a base classifier ``f`` is ``g(x) = argmax_c P(f(x + δ) = c)``, δ ~ N(0, σ²I)
(Sun et al. Eq. 3; with a denoiser in front, ``f ∘ D``, it is Denoised Smoothing, Eq. 4). ``g`` is evaluated by
Monte Carlo, exactly as Cohen et al.'s Algorithms (their §3.2 / Fig. "pseudocode"):

* PREDICT(x, n, α): count the base predictions under ``n`` noise draws, take the top two classes A, B with
  counts n_A ≥ n_B; return A if the two-sided binomial test ``binom_test(n_A, n_A + n_B, 0.5) ≤ α``, else abstain.
  The probability of returning a class other than g(x) is at most α (Cohen et al. Theorem 2).
* CERTIFY(x, n0, n, α): pick ĉ_A from ``n0`` selection draws; count ``n`` fresh estimation draws; take the
  one-sided (1 − α) Clopper–Pearson lower bound p̲_A of P(f(x + δ) = ĉ_A); if p̲_A > ½ return ĉ_A with the
  certified L2 radius ``σ·Φ⁻¹(p̲_A)`` (Cohen et al. Theorem 1 with p̄_B = 1 − p̲_A), else abstain.

Abstention is class ``-1`` (radius 0, as Cohen et al.'s code writes). All ``N·n`` noisy copies of a batch go
through the base model in chunks of ``batch_size``; no Python loop runs per image or per draw.

The binomial tail and the Clopper–Pearson bound are computed here in float64 torch (regularised incomplete
beta by a continued fraction, quantile by bisection), so scipy is not needed; they agree with
``scipy.stats.binomtest`` and ``statsmodels.proportion_confint(method="beta")`` (tests compare with scipy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from backdoorlab.data.tensors import make_generator
from backdoorlab.errors import BackdoorLabError

Progress = Callable[[int, int, dict], None]
ABSTAIN = -1

# -- statistics ----------------------------------------------------------------------------------------------
_CF_MAX_ITER = 10_000
_CF_TOL = 1e-15
_TINY = 1e-300


def _betacf(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The continued fraction of the incomplete beta function (modified Lentz), elementwise in float64.

    Converges fast for ``x < (a + 1) / (a + b + 2)`` (Numerical Recipes §6.4); callers use the symmetry
    ``I_x(a, b) = 1 − I_{1−x}(b, a)`` for the other side. Iterates until every element has converged.
    """
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = torch.ones_like(x)
    d = 1.0 - qab * x / qap
    d = torch.where(d.abs() < _TINY, torch.full_like(d, _TINY), d).reciprocal()
    h = d.clone()
    done = torch.zeros_like(x, dtype=torch.bool)
    for m in range(1, _CF_MAX_ITER + 1):
        m2 = 2.0 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = torch.where(d.abs() < _TINY, torch.full_like(d, _TINY), d).reciprocal()
        c = 1.0 + aa / c
        c = torch.where(c.abs() < _TINY, torch.full_like(c, _TINY), c)
        h = torch.where(done, h, h * d * c)
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = torch.where(d.abs() < _TINY, torch.full_like(d, _TINY), d).reciprocal()
        c = 1.0 + aa / c
        c = torch.where(c.abs() < _TINY, torch.full_like(c, _TINY), c)
        delta = d * c
        h = torch.where(done, h, h * delta)
        done = done | ((delta - 1.0).abs() < _CF_TOL)
        if m % 8 == 0 and bool(done.all()):
            break
    return h


def betainc(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The regularised incomplete beta function ``I_x(a, b)`` (a, b > 0, x ∈ [0, 1]), elementwise, float64.

    ``I_p(k, n − k + 1) = P(Binomial(n, p) ≥ k)`` links it to the binomial tail.
    """
    a, b, x = torch.broadcast_tensors(
        torch.as_tensor(a, dtype=torch.float64),
        torch.as_tensor(b, dtype=torch.float64),
        torch.as_tensor(x, dtype=torch.float64),
    )
    xc = x.clamp(0.0, 1.0)
    inner = (xc > 0) & (xc < 1)
    xs = torch.where(inner, xc, torch.full_like(xc, 0.5))
    log_front = (
        torch.lgamma(a + b) - torch.lgamma(a) - torch.lgamma(b) + a * torch.log(xs) + b * torch.log1p(-xs)
    )
    front = torch.exp(log_front)
    direct = xs < (a + 1.0) / (a + b + 2.0)
    # evaluate the fraction on the side where it converges: (a, b, x) directly, else (b, a, 1 − x)
    aa = torch.where(direct, a, b)
    bb = torch.where(direct, b, a)
    xx = torch.where(direct, xs, 1.0 - xs)
    cf = _betacf(aa, bb, xx)
    val = torch.where(direct, front * cf / a, 1.0 - front * cf / b)
    val = torch.where(xc <= 0, torch.zeros_like(val), val)
    val = torch.where(xc >= 1, torch.ones_like(val), val)
    return val.clamp(0.0, 1.0)


def binomial_tail(k: torch.Tensor, n: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """``P(Binomial(n, p) ≥ k)`` elementwise in float64 (1 for k ≤ 0, 0 for k > n)."""
    k = torch.as_tensor(k, dtype=torch.float64)
    n = torch.as_tensor(n, dtype=torch.float64)
    k, n = torch.broadcast_tensors(k, n)
    p = torch.as_tensor(p, dtype=torch.float64).expand_as(k)
    kk = k.clamp(1.0, None)
    bb = (n - kk + 1.0).clamp(1.0, None)  # placeholder where k > n (masked below)
    val = betainc(kk, bb, p)
    val = torch.where(k <= 0, torch.ones_like(val), val)
    return torch.where(k > n, torch.zeros_like(val), val)


def binomial_test_pvalue(k: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Two-sided exact binomial test of ``k`` successes in ``n`` trials against p = ½ (``scipy.stats.binomtest``).

    For p = ½ the distribution is symmetric, so the p-value is ``min(1, 2·P(X ≥ max(k, n − k)))``.
    """
    k = torch.as_tensor(k, dtype=torch.float64)
    n = torch.as_tensor(n, dtype=torch.float64)
    hi = torch.maximum(k, n - k)
    return (2.0 * binomial_tail(hi, n, 0.5)).clamp(max=1.0)


def clopper_pearson_lower(k: torch.Tensor, n: torch.Tensor | int, alpha: float) -> torch.Tensor:
    """One-sided (1 − α) Clopper–Pearson lower confidence bound on a binomial proportion, float64.

    The α-quantile of Beta(k, n − k + 1) (0 for k = 0, ``α^(1/n)`` for k = n), i.e. Cohen et al.'s
    ``proportion_confint(k, n, alpha=2α, method="beta")[0]``; found by bisection on
    ``P(Binomial(n, p) ≥ k) = α`` (increasing in p) to float64 precision.
    """
    _check_alpha(alpha)
    k = torch.as_tensor(k, dtype=torch.float64)
    n = torch.as_tensor(n, dtype=torch.float64)
    k, n = torch.broadcast_tensors(k, n)
    if bool((k < 0).any()) or bool((k > n).any()):
        raise BackdoorLabError("clopper_pearson_lower needs 0 ≤ k ≤ n for every count")
    lo = torch.zeros_like(k)
    hi = torch.ones_like(k)
    a, b = k.clamp(min=1.0), (n - k + 1.0).clamp(min=1.0)
    for _ in range(60):  # 2⁻⁶⁰ < float64 resolution near 1
        mid = 0.5 * (lo + hi)
        above = betainc(a, b, mid) > alpha
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    out = 0.5 * (lo + hi)
    out = torch.where(k == n, torch.as_tensor(alpha, dtype=torch.float64).pow(1.0 / n.clamp(min=1.0)), out)
    return torch.where(k == 0, torch.zeros_like(out), out)


# -- validation ----------------------------------------------------------------------------------------------
def _check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 < alpha < 1.0):
        raise BackdoorLabError(f"alpha must lie strictly between 0 and 1 (e.g. 0.001), got {alpha!r}")
    return float(alpha)


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BackdoorLabError(
            f"{name} must be an integer ≥ 1 (number of noise draws per image), got {value!r}"
        )
    return value


def check_sigma(sigma: object) -> float:
    """``sigma`` as a float, or a :class:`BackdoorLabError` unless it is a finite number > 0."""
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, (int, float))
        or not math.isfinite(sigma)
        or sigma <= 0
    ):
        raise BackdoorLabError(
            f"sigma must be a finite noise level > 0 on the [0, 1] pixel scale (e.g. 0.25, 0.5, 1.0), got {sigma!r}"
        )
    return float(sigma)


def expected_input_shape(model: nn.Module) -> tuple[int, int, int] | None:
    """``(C, H, W)`` the model was built for, when its ``spec`` says (models from ``create_model``), else None."""
    spec = getattr(model, "spec", None)
    if isinstance(spec, dict) and "in_channels" in spec and "input_size" in spec:
        h, w = spec["input_size"]
        return int(spec["in_channels"]), int(h), int(w)
    return None


def check_images(model: nn.Module, x: object, name: str = "x") -> torch.Tensor:
    """Validate a batch of [0, 1] images for ``model``: a float ``N×C×H×W`` tensor of the model's input shape."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise BackdoorLabError(f"{name} must be an N×C×H×W tensor of [0, 1] images, got {shape}")
    if not x.is_floating_point():
        raise BackdoorLabError(
            f"{name} must be float pixels in [0, 1]; convert uint8 with ImageTensors.float01"
        )
    expected = expected_input_shape(model)
    got = tuple(int(d) for d in x.shape[1:])
    if expected is not None and got != expected:
        e, g = "×".join(map(str, expected)), "×".join(map(str, got))
        raise BackdoorLabError(
            f"model expects {e} inputs but {name} is {g}; use images of the model's data set"
        )
    return x


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    p = next(model.parameters(), None)
    return fallback if p is None else p.device


@contextmanager
def eval_channels_last(model: nn.Module) -> Iterator[bool]:
    """Run ``model`` in eval mode with channels-last weights (≈1.4–2× faster convs on CPU), then restore.

    Yields whether the model has conv weights (then inputs should be made channels-last too). Every
    submodule's own training mode (a wrapper such as f∘D may differ from the model inside it; ``train(mode)``
    would overwrite them all) and the memory format of its 4-D weights are restored on exit.
    """
    modes = [(m, m.training) for m in model.modules()]
    conv_weights = [p for p in model.parameters() if p.ndim == 4]
    was_cl = bool(conv_weights) and conv_weights[0].is_contiguous(memory_format=torch.channels_last)
    model.eval()
    if conv_weights and not was_cl:
        model.to(memory_format=torch.channels_last)
    try:
        yield bool(conv_weights)
    finally:
        if conv_weights and not was_cl:
            model.to(memory_format=torch.contiguous_format)
        for m, mode in modes:
            m.training = mode


# -- the smoothed classifier ---------------------------------------------------------------------------------
class SmoothedClassifier:
    """The Gaussian-smoothed classifier ``g`` of a base classifier (Cohen et al. 2019; Sun et al. Eq. 3–4).

    ``model`` is the base classifier on [0, 1] pixels (for Denoised Smoothing pass
    :func:`backdoorlab.audit.denoiser.denoised` ``(f, D)``). ``sigma`` is the noise standard deviation on the
    [0, 1] scale. ``num_classes`` defaults to the width of the model's output. ``batch_size`` bounds how many
    noisy copies go through the model at once. The model is run in eval mode (its mode is restored).
    """

    def __init__(
        self, model: nn.Module, sigma: float, num_classes: int | None = None, batch_size: int = 1000
    ) -> None:
        if not isinstance(model, nn.Module):
            raise BackdoorLabError(f"model must be a torch nn.Module, got {type(model).__name__}")
        self.model = model
        self.sigma = check_sigma(sigma)
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
        ):
            raise BackdoorLabError(f"num_classes must be an integer ≥ 2 or None (infer), got {num_classes!r}")
        self.num_classes = num_classes
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BackdoorLabError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
        self.batch_size = batch_size

    # -- sampling --------------------------------------------------------------------------------------------
    def counts(
        self,
        x: torch.Tensor,
        n: int,
        gen: torch.Generator | int | None = None,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """``N×classes`` int64 counts of the base model's top-1 class on ``n`` noisy copies of each image.

        Cohen et al.'s SAMPLEUNDERNOISE, batched: the ``N·n`` copies ``x_i + σ·ε`` are flattened image-major
        and pushed through the model in chunks of ``batch_size`` (one forward per chunk). Noise comes from
        ``gen`` (a generator or a seed; ``None`` = seed 0); a generator on the model's device draws there,
        otherwise noise is drawn on the CPU and moved. ``progress(chunk, chunks, info)`` follows each chunk.
        """
        n = _check_count(n, "n")
        x = check_images(self.model, x)
        g = make_generator(gen)
        dev = _model_device(self.model, x.device)
        x = x.detach().to(dev, torch.float32)
        num, shape = x.shape[0], tuple(x.shape[1:])
        total = num * n
        draw_on_dev = g.device.type == dev.type
        counts = None
        chunks = max(1, -(-total // self.batch_size))
        try:
            with eval_channels_last(self.model) as cl, torch.no_grad():
                for i, start in enumerate(range(0, total, self.batch_size), start=1):
                    stop = min(start + self.batch_size, total)
                    owner = torch.arange(start, stop, device=dev) // n
                    if draw_on_dev:
                        noise = torch.randn((stop - start, *shape), generator=g, device=dev)
                    else:
                        noise = torch.randn((stop - start, *shape), generator=g).to(dev)
                    noisy = x[owner] + self.sigma * noise
                    if cl:
                        noisy = noisy.contiguous(memory_format=torch.channels_last)
                    logits = self.model(noisy)
                    if logits.ndim != 2:
                        raise BackdoorLabError(
                            f"the model must return N×classes logits, got shape {tuple(logits.shape)}"
                        )
                    if counts is None:
                        classes = self.num_classes or logits.shape[1]
                        if logits.shape[1] != classes:
                            raise BackdoorLabError(
                                f"num_classes is {classes} but the model returns {logits.shape[1]} logits"
                            )
                        self.num_classes = classes
                        counts = torch.zeros(num * classes, dtype=torch.long, device=dev)
                    flat = owner * self.num_classes + logits.argmax(1)
                    counts.index_add_(0, flat, torch.ones_like(flat))
                    if progress is not None:
                        progress(i, chunks, {"stage": "smoothing", "draws": stop})
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise BackdoorLabError(
                f"the model failed on inputs of shape {tuple(x.shape[1:])} ({first}); "
                "pass images of the shape the model was built for"
            ) from None
        if counts is None:  # no images
            return torch.zeros((0, self.num_classes or 0), dtype=torch.long)
        return counts.view(num, self.num_classes).cpu()

    # -- Cohen et al.'s algorithms ---------------------------------------------------------------------------
    def predict(
        self,
        x: torch.Tensor,
        n: int = 100,
        alpha: float = 0.001,
        gen: torch.Generator | int | None = None,
    ) -> torch.Tensor:
        """Cohen et al.'s PREDICT for every image: the top class, or ``-1`` (abstain) unless the binomial test
        of its count against the runner-up's rejects equality at level ``alpha``. Returns int64, length N."""
        alpha = _check_alpha(alpha)
        counts = self.counts(x, n, gen)
        if counts.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long)
        top = counts.topk(min(2, counts.shape[1]), dim=1)
        n_a = top.values[:, 0]
        n_b = top.values[:, 1] if top.values.shape[1] > 1 else torch.zeros_like(n_a)
        pvalue = binomial_test_pvalue(n_a, n_a + n_b)
        return torch.where(pvalue <= alpha, top.indices[:, 0], torch.full_like(n_a, ABSTAIN))

    def certify(
        self,
        x: torch.Tensor,
        n0: int = 100,
        n: int = 1000,
        alpha: float = 0.001,
        gen: torch.Generator | int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cohen et al.'s CERTIFY: predictions (int64, ``-1`` = abstain) and certified L2 radii (float64).

        ``n0`` selection draws choose ĉ_A; ``n`` fresh estimation draws give the (1 − α) Clopper–Pearson lower
        bound p̲_A; the radius is ``σ·Φ⁻¹(p̲_A)`` where p̲_A > ½, otherwise the image abstains with radius 0.
        """
        alpha = _check_alpha(alpha)
        n0 = _check_count(n0, "n0")
        n = _check_count(n, "n")
        g = make_generator(gen)
        selection = self.counts(x, n0, g)
        if selection.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
        c_a = selection.argmax(1)
        estimation = self.counts(x, n, g)
        n_a = estimation.gather(1, c_a[:, None]).squeeze(1)
        p_lower = clopper_pearson_lower(n_a, n, alpha)
        certified = p_lower > 0.5
        radius = self.sigma * torch.special.ndtri(p_lower.clamp(0.5, 1.0))
        predictions = torch.where(certified, c_a, torch.full_like(c_a, ABSTAIN))
        return predictions, torch.where(certified, radius, torch.zeros_like(radius))


def certified_accuracy(
    radii: torch.Tensor, predictions: torch.Tensor, labels: torch.Tensor, radius: float
) -> float:
    """Certified accuracy at L2 ``radius`` (Cohen et al. §4): the fraction of images whose smoothed prediction
    is correct and certified with a radius ≥ ``radius`` (abstentions count as wrong)."""
    radii, predictions, labels = (torch.as_tensor(t) for t in (radii, predictions, labels))
    if not (radii.ndim == predictions.ndim == labels.ndim == 1) or not (
        len(radii) == len(predictions) == len(labels)
    ):
        raise BackdoorLabError(
            "radii, predictions and labels must be 1-D and of equal length "
            f"(got shapes {tuple(radii.shape)}, {tuple(predictions.shape)}, {tuple(labels.shape)})"
        )
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not (radius >= 0):
        raise BackdoorLabError(f"radius must be a number ≥ 0 (L2, [0, 1] pixel scale), got {radius!r}")
    if len(labels) == 0:
        return float("nan")
    ok = (predictions.cpu() == labels.cpu()) & (radii.cpu().double() >= radius)
    return float(ok.double().mean())


__all__ = [
    "ABSTAIN",
    "SmoothedClassifier",
    "betainc",
    "binomial_tail",
    "binomial_test_pvalue",
    "certified_accuracy",
    "check_images",
    "check_sigma",
    "clopper_pearson_lower",
    "eval_channels_last",
    "expected_input_shape",
]
