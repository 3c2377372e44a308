"""Hidden-trigger backdoor poisons (Saha, Subramanya & Pirsiavash, "Hidden Trigger Backdoor Attacks", AAAI 2020).

The poisons are *clean-label* and never show the trigger (§3, "Our threat model"): each poison ``z`` stays inside
the L∞ ball of radius ε around a target-class image ``t`` (so it looks like, and is labelled as, the target
class) while its features ``f(z)`` at an intermediate layer sit on those of source images patched with the
secret trigger (Eq. 1: ``s̃ = s ⊙ (1 − m) + p ⊙ m``). A victim that fine-tunes a classifier on top of ``f``
(a transfer-learning victim, see :mod:`backdoorlab.transfer`) then moves its decision boundary so that patched
source images fall on the target side.

**Algorithm 1** (§3), implemented by :func:`generate_poisons`:

1. initialise the K poisons ``z_k`` with K target images ``t_k``;
2. every iteration, take K source images and paste the trigger at a random location on each (a fresh draw
   every iteration: "choosing a random source image and trigger location at each iteration");
3. match poisons and patched sources one-to-one by Euclidean distance in feature space — the paper's greedy
   rule ("find the nearest patched source for each, remove the pair, and continue"; :func:`greedy_match`
   takes the globally closest remaining pair each time), or the exact Hungarian assignment
   (:func:`hungarian_match`, ``matching="hungarian"``);
4. one mini-batch projected-gradient step on ``Σ_k ‖f(z_k) − f(s̃_a(k))‖²`` and projection onto
   ``‖z_k − t_k‖∞ ≤ ε`` and [0, 1] (Eq. 2).

The step is a **plain gradient step** ``z ← z − lr·∇`` (no sign, no momentum): the paper says "standard PGD
... gradient descent" and REFERENCE_NOTES "003" confirms the released code uses the raw gradient. Its useful
``lr`` depends on the scale of the features (0.01 suits AlexNet fc7, whose per-poison losses are in the
thousands); ``step="sign"`` is the L∞ PGD step of Madry et al. (``z ← z − lr·sign ∇``, ``lr`` in pixels),
offered as an option that does not depend on that scale. Learning
rate ``lr·decay^⌊i / decay_every⌋`` (§4.1: 0.01, ×0.95 every 2,000 iterations; the released code uses ×0.5
every 1,000 — pass ``decay=0.5, decay_every=1000``). ``stop_loss`` stops a mini-batch once its *largest*
per-poison loss is below the threshold (the released code uses 10 on AlexNet fc7; off by default, the paper
runs a fixed 5,000 iterations). ``resample=False`` is the released code's variant that patches one source
batch per target batch and keeps it for all iterations.

§4.1 generates more poisons than needed (400) and keeps the ones with the lowest loss (100): ``keep`` here,
``oversample`` in :class:`HiddenTrigger`.

The feature layer is any named module of any model (a forward hook, :func:`feature_extractor`); the forward
pass stops at that module, so layers after it cost nothing.

Cost of one iteration: one no-grad forward of the K patched sources, one forward of the K poisons and one
backward to the poisons only (``torch.autograd.grad``: no weight gradients), ``torch.cdist`` and the vectorised
greedy matching (a few rounds of O(K²) tensor ops). ``resample=False`` saves the source forward.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from backdoorlab.attacks.base import PoisonedSet, choose
from backdoorlab.data.tensors import ImageTensors, make_generator
from backdoorlab.errors import BackdoorLabError, unknown_name
from backdoorlab.triggers import AnyTrigger, PlacementLike, Trigger, TriggerSet, from_config, stamp

MATCHINGS = ("greedy", "hungarian")
STEPS = ("gradient", "sign")
INSERTS = ("replace", "add")
Progress = Callable[[int, int, dict], None]


# ---------------------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------------------
class _StopForward(Exception):
    """Raised by the feature hook to end the forward pass at the hooked module, carrying its output."""

    def __init__(self, output: object) -> None:
        super().__init__("feature captured")
        self.output = output


def layer_names(model: nn.Module) -> list[str]:
    """Every named (non-root) module of ``model``, in registration order: the valid feature-layer names."""
    return [name for name, _ in model.named_modules() if name]


def resolve_feature_layer(model: nn.Module, layer: str | None) -> tuple[str, nn.Module]:
    """``(name, module)`` of ``layer``; ``None`` means the model's ``feature_layer`` attribute."""
    if not isinstance(model, nn.Module):
        raise BackdoorLabError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if layer is None:
        layer = getattr(model, "feature_layer", None)
        if not isinstance(layer, str):
            raise BackdoorLabError(
                f"{type(model).__name__} has no feature_layer attribute; pass layer=, one of: "
                f"{', '.join(layer_names(model)) or '(no named modules)'}"
            )
    modules = dict(model.named_modules())
    if not isinstance(layer, str) or not layer or layer not in modules:
        raise BackdoorLabError(
            f"feature layer {layer!r} is not a module of this {type(model).__name__}; valid names: "
            f"{', '.join(layer_names(model)) or '(no named modules)'}"
        )
    return layer, modules[layer]


def feature_extractor(model: nn.Module, layer: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``x -> N×D`` features: the output of the module named ``layer``, flattened per sample.

    ``layer`` is any name from ``model.named_modules()`` (``None``: the model's ``feature_layer``, e.g. the
    fc7-like ``fc1_relu`` of the small AlexNet, Saha §4.4); an unknown name raises and lists the valid ones.
    A forward hook captures the module's output and ends the forward pass there. The model runs in eval mode
    (dropout off, batch-norm running statistics; REFERENCE_NOTES "003": "model in eval mode") and gets its
    previous mode back after every call. Gradients flow from the features back to ``x``. If the module is
    called several times in one forward pass, the first call's output is used.
    """
    name, module = resolve_feature_layer(model, layer)

    def hook(_module: nn.Module, _args: object, output: object) -> None:
        raise _StopForward(output)

    def extract(x: torch.Tensor) -> torch.Tensor:
        was_training = model.training
        if was_training:
            model.eval()
        handle = module.register_forward_hook(hook)
        try:
            model(x)
        except _StopForward as stop:
            out = stop.output
        else:
            raise BackdoorLabError(
                f"feature layer {name!r} was never called in the model's forward pass; choose another of: "
                f"{', '.join(layer_names(model))}"
            )
        finally:
            handle.remove()
            if was_training:
                model.train()
        if not isinstance(out, torch.Tensor) or out.ndim < 1:
            raise BackdoorLabError(
                f"feature layer {name!r} outputs {type(out).__name__}, not a tensor; choose a layer with a "
                "tensor output"
            )
        return out.reshape(out.shape[0], -1)

    return extract


# ---------------------------------------------------------------------------------------------------------
# one-to-one matching (Saha §3, step 3 of Algorithm 1)
# ---------------------------------------------------------------------------------------------------------
def _check_square(dist: object) -> torch.Tensor:
    if not isinstance(dist, torch.Tensor) or dist.ndim != 2 or dist.shape[0] != dist.shape[1]:
        shape = tuple(dist.shape) if isinstance(dist, torch.Tensor) else type(dist).__name__
        raise BackdoorLabError(f"matching needs a K×K distance matrix (poisons × sources), got {shape}")
    if dist.shape[0] == 0:
        raise BackdoorLabError("matching needs at least one poison and one source (got a 0×0 matrix)")
    dist = dist.detach()
    if not dist.is_floating_point():
        dist = dist.double()
    if not bool(torch.isfinite(dist).all()):
        raise BackdoorLabError("the distance matrix holds NaN or infinite entries; check the features")
    return dist


@torch.no_grad()
def greedy_match(dist: torch.Tensor) -> torch.Tensor:
    """Greedy one-to-one matching: ``perm[k]`` is the source matched to poison ``k`` (rows = poisons).

    Saha §3: repeatedly take the closest remaining (poison, source) pair and remove its row and column
    (REFERENCE_NOTES "003": the global minimum of the distance matrix, K times). Ties go to the smaller
    row-major index, as ``argmin`` over the flattened matrix would.

    Vectorised: every pair that is the minimum of both its row and its column among the remaining entries is
    taken in the same round. The sequential rule takes each such pair too (nothing smaller can remove its row
    or column first), and taking them does not change which of the other pairs it takes, so the result is
    the sequential greedy result exactly, in a few rounds of O(K²) tensor ops instead of K.
    """
    d = _check_square(dist).clone()
    k = d.shape[0]
    ar = torch.arange(k, device=d.device)
    perm = torch.full((k,), -1, dtype=torch.long, device=d.device)
    alive = torch.ones(k, dtype=torch.bool, device=d.device)
    left = k
    while left > 0:
        row_best = d.argmin(1)  # first (smallest) column among ties
        col_best = d.argmin(0)  # first (smallest) row among ties
        mutual = alive & (col_best[row_best] == ar)
        rows = mutual.nonzero().squeeze(1)
        cols = row_best[rows]
        perm[rows] = cols
        d[rows, :] = math.inf
        d[:, cols] = math.inf
        alive[rows] = False
        left -= len(rows)
    return perm


def hungarian_match(dist: torch.Tensor) -> torch.Tensor:
    """The minimum-total-distance one-to-one matching (Kuhn 1955, which Saha §3 names as the exact option).

    Same convention as :func:`greedy_match`: ``perm[k]`` is the source matched to poison ``k``. Uses
    ``scipy.optimize.linear_sum_assignment`` on the CPU.
    """
    d = _check_square(dist)
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # pragma: no cover - scipy comes with mlxtend
        raise BackdoorLabError(
            "matching 'hungarian' needs scipy; install it (pip install scipy) or use matching='greedy'"
        ) from None
    rows, cols = linear_sum_assignment(d.cpu().double().numpy())
    perm = torch.empty(d.shape[0], dtype=torch.long)
    perm[torch.as_tensor(rows, dtype=torch.long)] = torch.as_tensor(cols, dtype=torch.long)
    return perm.to(d.device)


_MATCHERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "greedy": greedy_match,
    "hungarian": hungarian_match,
}


# ---------------------------------------------------------------------------------------------------------
# Algorithm 1
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class HiddenTriggerResult:
    """The output of :func:`generate_poisons`.

    ``poisons[i]`` (float in [0, 1], on the target images' device) was made from
    ``target_images[target_idx[i]]`` and lies within ε of it in L∞. ``loss_history[b][i]`` is the mean
    per-poison loss ``‖f(z_k) − f(s̃_a(k))‖²`` of mini-batch ``b`` at iteration ``i`` (before that
    iteration's step); ``final_losses[i]`` is the loss of ``poisons[i]`` as returned (against a fresh
    patched-source draw, or the draw that met ``stop_loss``). ``iterations[b]`` is how many gradient steps
    mini-batch ``b`` took; ``seconds`` the wall time.
    """

    poisons: torch.Tensor
    target_idx: torch.Tensor
    loss_history: list[list[float]]
    final_losses: torch.Tensor
    seconds: float
    iterations: list[int] = field(default_factory=list)

    @property
    def seconds_per_iteration(self) -> float:
        return self.seconds / max(sum(self.iterations), 1)


def _images(x: object, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise BackdoorLabError(f"{what} must be an N×C×H×W tensor, got {shape}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise BackdoorLabError(f"{what} must be float in [0, 1] or uint8, got {x.dtype}")
    return x.float()


def _positive(name: str, value: Any, upper: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value) > 0:
        raise BackdoorLabError(f"hidden-trigger {name} must be a positive number, got {value!r}")
    if upper is not None and float(value) > upper:
        raise BackdoorLabError(f"hidden-trigger {name} must be at most {upper:g}, got {value!r}")
    return float(value)


def _count(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BackdoorLabError(f"hidden-trigger {name} must be an integer ≥ {low}, got {value!r}")
    return int(value)


def _patch_sizes(trigger: AnyTrigger) -> list[tuple[int, int]]:
    parts = trigger.triggers if isinstance(trigger, TriggerSet) else (trigger,)
    return [t.size for t in parts]


def prepare_trigger(trigger: AnyTrigger | Mapping[str, Any], placement: PlacementLike | None) -> AnyTrigger:
    """The trigger as used for poisoning and testing: ``placement`` overrides a single trigger's placement
    (``"random"``: a uniformly random location per image, Saha §3/§4.1; ``None`` keeps the trigger's own,
    e.g. a corner as in Saha §4.4 on CIFAR-10)."""
    trig = from_config(trigger)
    if not isinstance(trig, (Trigger, TriggerSet)):
        raise BackdoorLabError(f"trigger must be a Trigger, TriggerSet or config, got {type(trig).__name__}")
    if placement is None:
        return trig
    if isinstance(trig, TriggerSet):
        raise BackdoorLabError(
            "a trigger set places its own parts; pass placement=None to use their placements"
        )
    return trig.with_placement(placement)


def _check_fits(trigger: AnyTrigger, shape: Sequence[int]) -> None:
    H, W = int(shape[-2]), int(shape[-1])
    for h, w in _patch_sizes(trigger):
        if h > H or w > W:
            raise BackdoorLabError(
                f"trigger of size {h}×{w} is larger than the {H}×{W} images; use a smaller patch"
            )


def generate_poisons(
    model: nn.Module,
    layer: str | None,
    target_images: torch.Tensor,
    source_images: torch.Tensor,
    trigger: AnyTrigger | Mapping[str, Any],
    *,
    eps: float,
    iterations: int,
    lr: float = 0.01,
    decay: float = 0.95,
    decay_every: int = 2000,
    stop_loss: float | None = None,
    batch_size: int | None = None,
    matching: str = "greedy",
    step: str = "gradient",
    placement: PlacementLike | None = "random",
    resample: bool = True,
    keep: int | None = None,
    gen: torch.Generator | int | None = None,
    progress: Progress | None = None,
    cache_sources: bool | None = None,
    bf16: bool = False,
) -> HiddenTriggerResult:
    """Saha et al.'s Algorithm 1: hidden-trigger poisons from target images (see the module docstring).

    ``target_images`` (N×C×H×W, float [0, 1] or uint8) are the poison bases, processed in mini-batches of
    ``batch_size`` = K (default ``min(N, 100)``, the paper's K; a last short batch uses fewer); ``K > N``
    raises. ``source_images`` (any count, same C×H×W) are the clean source-class images; each iteration draws
    K of them (without replacement when there are at least K) and pastes ``trigger`` on them. ``eps`` is the
    L∞ radius on the [0, 1] scale (Saha §4.1: 16/255). ``iterations`` is the number of gradient steps per
    mini-batch (§4.1: 5,000; §4.4: 10,000). ``keep`` returns only the ``keep`` poisons with the lowest final
    loss (§4.1: 400 generated, 100 kept); ``target_idx`` then says which bases they came from (sorted).
    ``gen`` (a generator or a seed) drives the source draws and trigger locations: the same seed gives the
    same poisons on CPU. ``progress(step, total, info)`` is called after every iteration.
    The model runs on its own device, in eval mode; only the poisons receive gradients.

    Speed (same algorithm): with a fixed trigger placement (a corner, §4.4) a patched source's features never
    change, so ``cache_sources`` (``None``: automatically, when the loop would make more source forwards than
    there are source images) computes them once for the whole source pool and each iteration only indexes
    its K draws — the draws, and so the poisons, are the same as without the cache. ``bf16`` runs the feature
    extractor under bfloat16 autocast (fast on CPUs with AVX512-BF16/AMX and on GPUs); the poisons and their
    update stay float32.
    """
    t0 = time.perf_counter()
    name, _ = resolve_feature_layer(model, layer)
    targets = _images(target_images, "target_images")
    sources = _images(source_images, "source_images")
    n, shape = targets.shape[0], tuple(targets.shape[1:])
    if n == 0:
        raise BackdoorLabError("target_images is empty; give at least one target-class image")
    if sources.shape[0] == 0:
        raise BackdoorLabError("source_images is empty; give at least one source-class image")
    if tuple(sources.shape[1:]) != shape:
        raise BackdoorLabError(
            f"source images are {tuple(sources.shape[1:])} but target images are {shape}; they must match"
        )
    eps = _positive("eps", eps, 1.0)
    iterations = _count("iterations", iterations)
    lr = _positive("lr", lr)
    decay = _positive("decay", decay, 1.0)
    decay_every = _count("decay_every", decay_every)
    if stop_loss is not None:
        stop_loss = _positive("stop_loss", stop_loss)
    k = min(n, 100) if batch_size is None else _count("batch_size", batch_size)
    if k > n:
        raise BackdoorLabError(
            f"batch_size K = {k} is larger than the {n} target images given; lower K or give more images"
        )
    if matching not in _MATCHERS:
        raise unknown_name("matching", matching, MATCHINGS)
    match = _MATCHERS[matching]
    if step not in STEPS:
        raise unknown_name("hidden-trigger step", step, STEPS)
    use_sign = step == "sign"
    if keep is not None:
        keep = _count("keep", keep)
        if keep > n:
            raise BackdoorLabError(f"keep = {keep} is more than the {n} poisons generated; lower it")
    trig = prepare_trigger(trigger, placement)
    _check_fits(trig, shape)
    if progress is not None and not callable(progress):
        raise BackdoorLabError("progress must be a callable progress(step, total, info) or None")
    g = make_generator(gen)
    f = feature_extractor(model, name)
    if bf16:
        f = _autocast(f, _device(model, targets.device))
    if cache_sources not in (None, True, False):
        raise BackdoorLabError(f"cache_sources must be True, False or None (auto), got {cache_sources!r}")
    fixed = _fixed_placement(trig)
    if cache_sources and not fixed:
        raise BackdoorLabError(
            "cache_sources=True needs a fixed trigger placement (a corner or (row, col)): with random "
            "locations every draw is a new patched image; use None or False"
        )
    if cache_sources is None:
        cache_sources = fixed and resample and -(-n // k) * iterations * k > sources.shape[0]
    was_training = model.training
    model.eval()
    try:
        return _generate(
            f=f,
            match=match,
            use_sign=use_sign,
            targets=targets,
            sources=sources,
            trig=trig,
            eps=eps,
            iterations=iterations,
            lr=lr,
            decay=decay,
            decay_every=decay_every,
            stop_loss=stop_loss,
            k=k,
            resample=resample,
            cache_sources=bool(cache_sources),
            keep=keep,
            g=g,
            progress=progress,
            dev=_device(model, targets.device),
            t0=t0,
        )
    finally:
        model.train(was_training)


def _fixed_placement(trig: AnyTrigger) -> bool:
    parts = trig.triggers if isinstance(trig, TriggerSet) else (trig,)
    return all(t.placement.is_fixed for t in parts)


def _autocast(f: Callable[[torch.Tensor], torch.Tensor], dev: torch.device) -> Callable:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            return f(x).float()

    return run


def _device(model: nn.Module, default: torch.device) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return default


def _generate(
    *,
    f: Callable[[torch.Tensor], torch.Tensor],
    match: Callable[[torch.Tensor], torch.Tensor],
    use_sign: bool,
    targets: torch.Tensor,
    sources: torch.Tensor,
    trig: AnyTrigger,
    eps: float,
    iterations: int,
    lr: float,
    decay: float,
    decay_every: int,
    stop_loss: float | None,
    k: int,
    resample: bool,
    cache_sources: bool,
    keep: int | None,
    g: torch.Generator,
    progress: Progress | None,
    dev: torch.device,
    t0: float,
) -> HiddenTriggerResult:
    """The loop of :func:`generate_poisons` (inputs validated, model in eval mode)."""
    n = targets.shape[0]
    out_device = targets.device
    src_all = sources.to(dev)
    n_src = src_all.shape[0]

    pool = None
    if cache_sources:  # fixed placement: every patched source's features once, in chunks
        with torch.no_grad():
            pool = torch.cat([f(stamp(src_all[i : i + 512], trig)) for i in range(0, n_src, 512)])

    def draw(m: int) -> torch.Tensor:
        """Features of ``m`` source images patched at the trigger's placement (random by default)."""
        idx = (
            torch.randperm(n_src, generator=g)[:m] if n_src >= m else torch.randint(n_src, (m,), generator=g)
        )
        if pool is not None:
            return pool[idx.to(dev)]
        with torch.no_grad():
            return f(stamp(src_all[idx.to(dev)], trig, gen=g))

    n_batches = -(-n // k)
    total = n_batches * iterations
    done = 0
    poisons, finals, history, run_iters = [], [], [], []
    for b in range(n_batches):
        t = targets[b * k : (b + 1) * k].to(dev)
        m = t.shape[0]
        lo, hi = (t - eps).clamp_(0, 1), (t + eps).clamp_(0, 1)
        z = t.clone()
        hist = torch.empty(iterations, device=dev)
        fs = None
        per = None
        stopped = False
        it = 0
        for it in range(iterations):
            if resample or fs is None:
                fs = draw(m)
            z.requires_grad_(True)
            fz = f(z)
            with torch.no_grad():
                perm = match(torch.cdist(fz.detach(), fs))
            per = (fz - fs[perm]).pow(2).sum(1)
            hist[it] = per.detach().mean()
            if stop_loss is not None and float(per.detach().max()) < stop_loss:
                stopped = True
                break
            (grad,) = torch.autograd.grad(per.sum(), z)
            if use_sign:
                grad = grad.sign()
            step_lr = lr * decay ** (it // decay_every)
            with torch.no_grad():
                z = torch.minimum(torch.maximum(z.detach() - step_lr * grad, lo), hi)
            done += 1
            if progress is not None:
                progress(
                    done,
                    total,
                    {"batch": b + 1, "batches": n_batches, "loss": float(hist[it]), "lr": step_lr},
                )
        n_run = it + 1 if stopped else iterations
        steps_taken = it if stopped else iterations
        if stopped:
            final = per.detach()
            done += iterations - steps_taken
            if progress is not None:
                info = {"batch": b + 1, "batches": n_batches, "loss": float(hist[it]), "stopped": True}
                progress(done, total, info)
        else:
            with torch.no_grad():
                fs_final = draw(m) if resample else fs
                fz = f(z)
                final = (fz - fs_final[match(torch.cdist(fz, fs_final))]).pow(2).sum(1)
        poisons.append(z.detach().to(out_device))
        finals.append(final.float().cpu())
        history.append(hist[:n_run].float().cpu().tolist())
        run_iters.append(steps_taken)
    z_all = torch.cat(poisons)
    final_all = torch.cat(finals)
    idx = torch.arange(n)
    if keep is not None:
        idx = torch.sort(final_all, stable=True).indices[:keep].sort().values
    return HiddenTriggerResult(
        poisons=z_all[idx.to(z_all.device)],
        target_idx=idx,
        loss_history=history,
        final_losses=final_all[idx],
        seconds=time.perf_counter() - t0,
        iterations=run_iters,
    )


def quantize_within(z: torch.Tensor, base: torch.Tensor, eps: float) -> torch.Tensor:
    """Poisons ``z`` (float [0, 1]) on the uint8 grid, rounded to nearest but kept within ``eps`` of ``base``.

    Saving a poison as an 8-bit image (as the released code does) rounds it; rounding alone could step half a
    grey level outside the ε-ball when ``eps·255`` is not an integer, so the result is clipped to the grey
    levels inside ``[base − eps, base + eps] ∩ [0, 1]``.
    """
    b = base.float() / 255.0 if base.dtype == torch.uint8 else base.float()
    q = (z.float().clamp(0, 1) * 255.0).round()
    lo = torch.ceil((b - eps) * 255.0 - 1e-4).clamp(0, 255)
    hi = torch.floor((b + eps) * 255.0 + 1e-4).clamp(0, 255)
    hi = torch.maximum(hi, lo)  # an ε below half a grey level around an off-grid base: the nearest level
    return torch.minimum(torch.maximum(q, lo), hi).to(torch.uint8)


# ---------------------------------------------------------------------------------------------------------
# the attack
# ---------------------------------------------------------------------------------------------------------
class HiddenTrigger:
    """Saha et al.'s hidden-trigger attack as an :class:`~backdoorlab.attacks.base.Attack`.

    ``model`` is the attacker's feature extractor (the pretrained network the victim fine-tunes, §3) and
    ``layer`` the module whose output is matched (``None``: ``model.feature_layer``, the fc7 analogue).
    ``source`` is one class or several (§4.7 multi-source: every non-target class), ``target`` the class the
    poisons belong to; ``count`` the number of poisons that end up in the training set.

    :meth:`poison` picks ``round(count·oversample)`` target-class images of the training set with a seeded
    permutation, runs :func:`generate_poisons` on them against the source-class images, keeps the ``count``
    with the lowest loss (§4.1) and, with ``insert="replace"`` (default), **replaces** those training images by
    their poisons; their labels stay the target class. ``insert="add"`` appends the poisons as new training
    images instead (the paper's protocol: 100 poisons added to 800 clean target images), made from the
    target-class images of ``pool`` — the attacker's own generation data (§4: 200 images per class, disjoint
    from the victim's 800) — or, without a pool, from the training set's. Source images come from ``pool``
    when given, else from the training set. The trigger is never pasted on any training image (H1).

    At test time :meth:`apply_trigger` pastes the trigger at a random location per image (``placement``,
    default ``"random"``; ``None`` keeps the trigger's own placement); :meth:`victim_mask` selects the source
    classes. Poisons are rounded to the uint8 grid within ε (:func:`quantize_within`) when the training set is
    uint8. After :meth:`poison`, :attr:`last_result` holds the :class:`HiddenTriggerResult`.
    """

    name = "hidden-trigger"

    def __init__(
        self,
        model: nn.Module,
        layer: str | None,
        trigger: AnyTrigger | Mapping[str, Any],
        source: int | Sequence[int],
        target: int,
        count: int = 100,
        *,
        eps: float = 16 / 255,
        iterations: int = 5000,
        lr: float = 0.01,
        decay: float = 0.95,
        decay_every: int = 2000,
        stop_loss: float | None = None,
        batch_size: int | None = None,
        matching: str = "greedy",
        step: str = "gradient",
        oversample: float = 1.0,
        placement: PlacementLike | None = "random",
        resample: bool = True,
        insert: str = "replace",
        pool: ImageTensors | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.layer, _ = resolve_feature_layer(model, layer)
        self.model = model
        self.trigger = prepare_trigger(trigger, placement)
        self.placement = placement
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise BackdoorLabError(f"attack target must be a class index ≥ 0, got {target!r}")
        srcs = (source,) if isinstance(source, int) else tuple(source)
        if not srcs or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in srcs):
            raise BackdoorLabError(
                f"attack source must be a class index ≥ 0 or a list of them, got {source!r}"
            )
        if target in srcs:
            raise BackdoorLabError(
                f"attack source {list(srcs)} contains the target class {target}; source and target must differ"
            )
        self.sources: tuple[int, ...] = tuple(sorted(set(srcs)))
        self.target = target
        self.count = _count("count", count)
        if isinstance(oversample, bool) or not isinstance(oversample, (int, float)) or oversample < 1:
            raise BackdoorLabError(f"hidden-trigger oversample must be a number ≥ 1, got {oversample!r}")
        self.oversample = float(oversample)
        self.eps = _positive("eps", eps, 1.0)
        self.iterations = _count("iterations", iterations)
        self.lr = _positive("lr", lr)
        self.decay = _positive("decay", decay, 1.0)
        self.decay_every = _count("decay_every", decay_every)
        self.stop_loss = None if stop_loss is None else _positive("stop_loss", stop_loss)
        self.batch_size = None if batch_size is None else _count("batch_size", batch_size)
        if matching not in _MATCHERS:
            raise unknown_name("matching", matching, MATCHINGS)
        self.matching = matching
        if step not in STEPS:
            raise unknown_name("hidden-trigger step", step, STEPS)
        self.step = step
        self.resample = bool(resample)
        if insert not in INSERTS:
            raise unknown_name("hidden-trigger insert mode", insert, INSERTS)
        self.insert = insert
        if pool is not None and not isinstance(pool, ImageTensors):
            raise BackdoorLabError(
                f"pool must be an ImageTensors of the attacker's images, got {type(pool).__name__}"
            )
        self.pool = pool
        self.progress = progress
        self.last_result: HiddenTriggerResult | None = None

    @property
    def generated(self) -> int:
        """How many poisons are generated before the lowest-loss ``count`` are kept (§4.1)."""
        return round(self.count * self.oversample)

    # -- the Attack protocol ---------------------------------------------------------------------------------
    def poison(self, train: ImageTensors, gen: torch.Generator) -> PoisonedSet:
        """Generate the poisons and put them in ``train`` (replacing or adding, see the class docstring)."""
        self._check_classes(train)
        if self.pool is not None:
            self._check_classes(self.pool, "pool")
        n_gen = self.generated
        gen = make_generator(gen)
        labels = train.labels.cpu()
        if self.insert == "replace":
            base_set, pool_name = train, "training set"
        else:
            base_set = self.pool if self.pool is not None else train
            pool_name = "pool" if self.pool is not None else "training set"
        candidates = (base_set.labels.cpu() == self.target).nonzero().squeeze(1)
        if n_gen > len(candidates):
            raise BackdoorLabError(
                f"hidden-trigger needs {n_gen} target-class images (count {self.count} × oversample "
                f"{self.oversample:g}) but the {pool_name} has only {len(candidates)} of class {self.target}; "
                "lower count or oversample"
            )
        chosen = choose(candidates, n_gen, gen)
        src_set = self.pool if self.pool is not None else train
        src_idx = torch.isin(src_set.labels.cpu(), torch.tensor(self.sources)).nonzero().squeeze(1)
        if len(src_idx) == 0:
            raise BackdoorLabError(
                f"the {'pool' if self.pool is not None else 'training set'} has no image of source classes {list(self.sources)}"
            )
        bases = base_set.float01(chosen.to(base_set.device))
        # The poison count n_gen was checked against the target images above and is never lowered; min() only
        # caps the mini-batch size K at n_gen, i.e. one (short) batch holding every poison, as generate_poisons'
        # last batch does: a batching cap, not a K clamp.
        result = generate_poisons(
            self.model,
            self.layer,
            bases,
            src_set.float01(src_idx.to(src_set.device)),
            self.trigger,
            eps=self.eps,
            iterations=self.iterations,
            lr=self.lr,
            decay=self.decay,
            decay_every=self.decay_every,
            stop_loss=self.stop_loss,
            batch_size=None if self.batch_size is None else min(self.batch_size, n_gen),
            matching=self.matching,
            step=self.step,
            placement=None,  # already applied to self.trigger
            resample=self.resample,
            keep=self.count,
            gen=gen,
            progress=self.progress,
        )
        self.last_result = result
        kept = chosen[result.target_idx]
        base_raw = base_set.images[kept.to(base_set.device)]
        z = result.poisons.to(train.device)
        if train.images.dtype == torch.uint8:
            new = quantize_within(z, base_raw.to(train.device), self.eps)
        else:
            new = z.to(train.images.dtype)
        if self.insert == "replace":
            idx = kept
            images = train.images.clone()
            images[idx.to(train.device)] = new
            new_labels = train.labels.clone()
            original = labels[idx].clone()
        else:
            idx = torch.arange(len(train), len(train) + self.count)
            images = torch.cat([train.images, new])
            original = torch.full((self.count,), self.target, dtype=torch.long)
            new_labels = torch.cat([train.labels, original.to(train.labels.device)])
        data = train.with_images(images, new_labels, attack=self.describe())
        return PoisonedSet(data=data, poison_idx=idx, original_labels=original)

    def apply_trigger(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Paste the secret trigger on a test batch (N×C×H×W float in [0, 1]), at random locations by default."""
        return stamp(x, self.trigger, gen=gen)

    def target_labels(self, y: torch.Tensor) -> torch.Tensor:
        """Every triggered source image should be classified as the target."""
        return torch.full_like(y, self.target)

    def victim_mask(self, y: torch.Tensor) -> torch.Tensor:
        """Only source-class images count for the attack success rate (source-specific attack)."""
        return torch.isin(y, torch.tensor(self.sources, device=y.device, dtype=y.dtype))

    # -- description -----------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """A JSON-able config, naming the feature model by the sha256 of its weights."""
        from backdoorlab.models.io import model_hash

        return {
            "name": self.name,
            "trigger": self.trigger.describe(),
            "sources": list(self.sources),
            "target": self.target,
            "count": self.count,
            "oversample": self.oversample,
            "eps": self.eps,
            "iterations": self.iterations,
            "lr": self.lr,
            "decay": self.decay,
            "decay_every": self.decay_every,
            "stop_loss": self.stop_loss,
            "batch_size": self.batch_size,
            "matching": self.matching,
            "step": self.step,
            "resample": self.resample,
            "insert": self.insert,
            "layer": self.layer,
            "model": model_hash(self.model),
            "pool": None if self.pool is None else self.pool.fingerprint(),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sources={list(self.sources)}, target={self.target}, count={self.count}, "
            f"eps={self.eps:.4g}, layer={self.layer!r})"
        )

    def _check_classes(self, data: ImageTensors, what: str = "training set") -> None:
        k = data.num_classes
        bad = [c for c in (*self.sources, self.target) if c >= k]
        if bad:
            raise BackdoorLabError(
                f"attack classes {bad} are out of range for the {what} with {k} classes (0..{k - 1})"
            )
        shape = data.shape
        _check_fits(self.trigger, shape)
