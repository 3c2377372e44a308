"""Clean-label backdoor poisoning (Turner, Tsipras & Madry, "Clean-Label Backdoor Attacks", 2019).

Turner et al. §3 show that dirty-label BadNets poisons are easy to spot with a label-probability filter (see
:mod:`backdoorlab.defenses.filtering`), and that simply restricting BadNets to images that already carry the
target label is nearly useless (Fig. 2, right): those images are classified correctly from their natural
features and the trigger is ignored. §4 therefore makes the target-class images *harder to classify* before
stamping the trigger, so the model has to lean on the trigger:

1. choose images of the target class only (labels never change, so every poison looks correctly labelled);
2. perturb them — §4.2/§5.3: an untargeted ℓp-bounded PGD adversarial example against an independently,
   adversarially trained model, computed once before training; App. B.3: additive Gaussian noise; or nothing
   (the Fig. 2 right baseline); §4.1/§5.2: GAN interpolation — encode the image and an image of another
   class in the latent space of a WGAN-GP trained on those two classes and generate from a point a fraction
   τ of the way toward the other class;
3. stamp the trigger (the 3×3 pattern at the bottom-right, Turner §4.1; or the reduced-amplitude and
   four-corner variants of App. B.1/B.2) and store the result on the data's pixel grid.

At test time the trigger is stamped on clean images (no perturbation), and the attack success rate counts the
images whose true label is not the target (REFERENCE_NOTES "002").
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from backdoorlab.adversarial import eps_from_255, pgd, warn_unreachable
from backdoorlab.attacks.base import PoisonedSet
from backdoorlab.data.tensors import ImageTensors, make_generator
from backdoorlab.errors import BackdoorLabError, unknown_name
from backdoorlab.triggers import AnyTrigger, from_config, stamp, turner_pattern

PERTURBATIONS = ("none", "pgd", "noise", "gan")
NORMS = ("l2", "linf")
# Turner §5.3 tests L2 ε = 300, 600, 1200 and L∞ ε = 8, 16, 32 (0–255 scale); L2 ε = 600 is the one they
# keep for all later experiments. For L∞ the notes' common re-implementation choice, 8, is the default.
DEFAULT_EPS_255 = {"l2": 600.0, "linf": 8.0}
DEFAULT_STEPS = {"l2": 100, "linf": 100}
STEP_RULE = 2.5  # step = 2.5·ε/steps (Madry et al.'s rule of thumb: the walk can cross the ε-ball 2.5 times)
DEFAULT_NOISE_STD_255 = 8.0  # App. B.3 / Fig. 12: low standard deviations help, large ones hurt
DEFAULT_TAU = 0.2  # Turner §5.2: "τ = 0.2 was chosen for further investigation"
GENERATOR_MISSING = (
    "perturbation 'gan' needs generator (a WGAN-GP trained on the target class and the 'toward' class, see "
    "backdoorlab.models.wgan.train_wgan_gp; from a config, give attack.params.gan: {steps: …})"
)
ROBUST_MODEL_MISSING = (
    "perturbation 'pgd' needs robust_model (an adversarially trained model, see "
    "backdoorlab.adversarial.madry_objective; from a config, give attack.params.robust_model: {eps: …})"
)


# GAN codes per (generator, data, seed, inversion settings): training index -> code (see _gan_poisons)
_CODE_CACHE: dict[tuple, dict[int, torch.Tensor]] = {}


def default_toward(target: int, num_classes: int) -> int:
    """The class GAN poisons move toward when none is given: the next class (mod K)."""
    return (target + 1) % num_classes


# what each float option is for and how to fix a bad value (each is used by one perturbation kind)
_FIXES = {
    "eps": (
        "the PGD radius on the 0–255 scale, used by perturbation 'pgd' (Turner: L2 300/600/1200, L∞ 8/16/32); "
        "give a finite eps > 0 or leave it out for the default (600 for L2, 8 for L∞)"
    ),
    "step": (
        "the PGD step on the 0–255 scale, used by perturbation 'pgd'; give a finite step > 0 or leave it out "
        "for the default 2.5·eps/steps"
    ),
    "noise_std": (
        "the Gaussian noise's standard deviation on the 0–255 scale, used by perturbation 'noise' "
        f"(Turner App. B.3); give a finite noise_std > 0 or leave it out for the default {DEFAULT_NOISE_STD_255:g}"
    ),
    "inversion_lr": (
        "the GAN inversion's step size, used by perturbation 'gan'; give a finite inversion_lr > 0 "
        "(default 0.1)"
    ),
}


def _positive_number(name: str, value: Any) -> float:
    """``value`` as a float, or a named error when it is not a finite number > 0 (NaN and ±inf included)."""
    try:
        v = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an int too large for a float
        v = math.inf
    if not (math.isfinite(v) and v > 0):
        raise BackdoorLabError(
            f"clean-label {name} must be a finite number > 0, got {value!r}: {_FIXES[name]}"
        )
    return v


def _weights_hash(model: nn.Module) -> str:
    """sha256 of the model's weights (``models.io.model_hash``, or a plain state-dict hash as a fallback)."""
    try:
        from backdoorlab.models.io import model_hash

        return model_hash(model)
    except ImportError:  # pragma: no cover - models.io is part of the package
        h = hashlib.sha256()
        for key, t in sorted(model.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{key}|{t.dtype}|{list(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


class CleanLabel:
    """Turner et al.'s clean-label attack: perturb target-class images, stamp the trigger, keep the labels.

    ``rate`` is a fraction in (0, 1] **of the target class** (Turner §5: 0.4 %, 1.5 %, 6 %, 25 %, 100 % of the
    5,000 CIFAR-10 images of a class = 20, 75, 300, 1,250, 5,000) or an int count of target-class images.
    Selection (REFERENCE_NOTES "002"): a permutation of the whole training set drawn from the generator given
    to :meth:`poison`, restricted to the target-class indices in permutation order, of which the first
    ``round(n_target · rate)`` are poisoned.

    ``perturbation`` (applied before the trigger, Turner §4):

    - ``"none"`` — trigger only: the clean-label restriction of BadNets (Fig. 2, right), the baseline;
    - ``"pgd"`` — untargeted PGD (maximise the cross-entropy of the true label, no random start) against
      ``robust_model``, an adversarially trained model the user supplies (Turner §4.2/§5.3: "computed with
      respect to an independent model", "generated for pre-trained models and not on the fly"). ``eps`` is on
      the 0–255 scale as Turner states it (L2: 300/600/1200, L∞: 8/16/32; default 600 for L2 and 8 for L∞)
      and converted with :func:`~backdoorlab.adversarial.eps_from_255`. ``steps`` defaults to 100 for both
      norms; ``step`` (0–255 scale too) defaults to ``2.5·eps/steps``, Madry et al.'s rule of thumb that lets
      the iterate travel 2.5 times across the ε-ball;
    - ``"noise"`` — additive zero-mean Gaussian noise with standard deviation ``noise_std`` on the 0–255
      scale (App. B.3, Fig. 12; default 8), clipped to the valid pixel range;
    - ``"gan"`` — GAN interpolation (§4.1, §5.2) with ``generator``, a WGAN-GP trained on the target class and
      class ``toward`` (default: the next class): each poisoned image x and an image x' of class ``toward``
      (drawn with ``seed``, distinct while there are enough) are encoded by ``inversion_steps`` = 1,000 steps
      of gradient descent with step ``inversion_lr`` = 0.1 on ‖x − G(z)‖², and the poison is
      ``G((1 − τ)·z + τ·z')`` — the paper's I_G(x', x, τ) = G(τ z' + (1 − τ) z), written so that τ = 0 is the
      best reconstruction of x itself as in its Fig. 3 (τ ∈ {0, 0.1, 0.2, 0.3}, default 0.2).

    ``seed`` drives the perturbation's own randomness (the Gaussian noise), so the perturbation of the chosen
    images does not depend on how the selection generator was advanced. The perturbed, stamped images are
    rounded to the uint8 grid when the training data is uint8 (float32 data stays float).

    Caching: PGD against a large robust model is the expensive part. :meth:`perturb` is exposed so a caller
    can compute and store the perturbed images itself; the experiment runner instead caches the whole
    :class:`PoisonedSet` under the hash of :meth:`describe`, which therefore identifies the robust model by the
    sha256 of its weights (:func:`backdoorlab.models.io.model_hash`): a different robust model is a different
    attack.

    ``trigger`` may be any :class:`~backdoorlab.triggers.Trigger` or
    :class:`~backdoorlab.triggers.TriggerSet` (e.g. ``turner_amplitude(32)`` or ``four_corner()``) or a
    trigger config mapping; ``None`` is :func:`~backdoorlab.triggers.turner_pattern`.
    """

    name = "clean-label"

    def __init__(
        self,
        trigger: AnyTrigger | Mapping[str, Any] | None = None,
        target: int = 0,
        rate: float | int = 0.06,
        perturbation: str = "none",
        eps: float | None = None,
        norm: str = "l2",
        steps: int | None = None,
        step: float | None = None,
        noise_std: float | None = None,
        robust_model: nn.Module | None = None,
        tau: float = DEFAULT_TAU,
        toward: int | None = None,
        generator: nn.Module | None = None,
        inversion_steps: int = 1000,
        inversion_lr: float = 0.1,
        seed: int = 0,
        batch_size: int = 256,
    ) -> None:
        self.trigger: AnyTrigger = turner_pattern() if trigger is None else from_config(trigger)
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise BackdoorLabError(f"attack target must be a class index ≥ 0, got {target!r}")
        self.target = target
        self.rate = _check_rate(rate)
        if perturbation not in PERTURBATIONS:
            raise unknown_name("clean-label perturbation", perturbation, PERTURBATIONS)
        if norm not in NORMS:
            raise unknown_name("clean-label norm", norm, NORMS)
        self.perturbation = perturbation
        self.norm = norm
        self.eps = DEFAULT_EPS_255[norm] if eps is None else _positive_number("eps", eps)
        if steps is None:
            steps = DEFAULT_STEPS[norm]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise BackdoorLabError(f"clean-label steps must be an integer ≥ 1, got {steps!r}")
        self.steps = steps
        self.step = STEP_RULE * self.eps / steps if step is None else _positive_number("step", step)
        if perturbation == "pgd":  # once here, not on every batch of perturb()
            warn_unreachable(self.eps, self.step, steps, "clean-label PGD", stacklevel=3)
        self.noise_std = (
            DEFAULT_NOISE_STD_255 if noise_std is None else _positive_number("noise_std", noise_std)
        )
        if robust_model is not None and not isinstance(robust_model, nn.Module):
            raise BackdoorLabError(
                f"robust_model must be a torch.nn.Module, got {type(robust_model).__name__}"
            )
        self.robust_model = robust_model
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 <= float(tau) <= 1.0:
            raise BackdoorLabError(
                f"clean-label tau must lie in [0, 1] (Turner: 0, 0.1, 0.2, 0.3), got {tau!r}"
            )
        self.tau = float(tau)
        if toward is not None and (isinstance(toward, bool) or not isinstance(toward, int) or toward < 0):
            raise BackdoorLabError(f"clean-label toward must be a class index ≥ 0, got {toward!r}")
        if toward is not None and toward == target:
            raise BackdoorLabError(
                f"clean-label toward must be a class other than the target {target}: the GAN poisons move "
                "toward an incorrect class"
            )
        self.toward = toward
        if generator is not None and not isinstance(generator, nn.Module):
            raise BackdoorLabError(f"generator must be a torch.nn.Module, got {type(generator).__name__}")
        self.generator = generator
        if isinstance(inversion_steps, bool) or not isinstance(inversion_steps, int) or inversion_steps < 1:
            raise BackdoorLabError(
                f"clean-label inversion_steps must be an integer ≥ 1, got {inversion_steps!r}"
            )
        self.inversion_steps = inversion_steps
        self.inversion_lr = _positive_number("inversion_lr", inversion_lr)
        self.seed = int(seed)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BackdoorLabError(f"clean-label batch_size must be an integer ≥ 1, got {batch_size!r}")
        self.batch_size = batch_size

    # -- selection -------------------------------------------------------------------------------------------
    def select(self, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The poisoned indices (sorted int64, CPU) for training ``labels``, drawing one permutation from ``gen``.

        A permutation of all ``len(labels)`` indices; the target-class ones in permutation order; the first
        ``round(n_target · rate)`` of them (or ``rate`` of them for an int count).
        """
        labels = labels.cpu()
        n_target = int((labels == self.target).sum())
        k = self.count(n_target)
        perm = torch.randperm(len(labels), generator=gen)
        in_target = perm[labels[perm] == self.target]
        return in_target[:k].sort().values

    def count(self, n_target: int) -> int:
        """How many of ``n_target`` target-class images ``rate`` poisons (raises when 0 or too many)."""
        if n_target == 0:
            raise BackdoorLabError(
                f"the training set has no image of target class {self.target}; a clean-label attack "
                "poisons only target-class images"
            )
        k = round(self.rate * n_target) if isinstance(self.rate, float) else self.rate
        if k < 1:
            raise BackdoorLabError(
                f"rate {self.rate} of the {n_target} images of target class {self.target} poisons no image; "
                "raise the rate"
            )
        if k > n_target:
            raise BackdoorLabError(
                f"rate {self.rate} asks for {k} poisoned images but target class {self.target} has only "
                f"{n_target}"
            )
        return k

    # -- perturbation ----------------------------------------------------------------------------------------
    def perturb(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """The "harder to classify" images of Turner §4, *before* the trigger: a new tensor in [0, 1].

        ``x`` is N×C×H×W float in [0, 1], ``y`` its (true, unchanged) labels. ``"pgd"`` runs on the robust
        model's device in eval mode (see :func:`~backdoorlab.adversarial.pgd`) and returns on ``x``'s
        device; ``"noise"`` draws from ``gen`` (``None``: a generator seeded with ``seed``); ``"none"``
        returns a copy.
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
            raise BackdoorLabError(
                f"perturb needs N×C×H×W float images in [0, 1], got "
                f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}"
            )
        if self.perturbation == "none":
            return x.clone()
        if self.perturbation == "gan":
            raise BackdoorLabError(
                "perturbation 'gan' interpolates toward an image of another class: call "
                "interpolate(x, x_other), or poison(train, gen), which picks the partners"
            )
        if self.perturbation == "noise":
            g = make_generator(self.seed) if gen is None else gen
            noise = torch.randn(x.shape, generator=g, dtype=torch.float32)
            return (x + noise.to(x.device, x.dtype) * (self.noise_std / 255.0)).clamp(0, 1)
        adv = pgd(
            self._require_model(),
            x.detach(),
            y,
            eps_from_255(self.eps),
            eps_from_255(self.step),
            self.steps,
            norm=self.norm,
            random_start=False,
            warn=False,  # warned once in __init__
        )
        return adv.detach().to(x.device, x.dtype).clamp(0, 1)

    def interpolate(
        self, x: torch.Tensor, x_other: torch.Tensor, z0: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Turner §4.1/§5.2: encode ``x`` and ``x_other`` (same shape), generate τ of the way toward the latter.

        ``z0`` (2N × latent) are the starting codes of the inversion (``x`` first, then ``x_other``);
        ``None`` draws them from ``seed``.
        """

        z = self.encode(torch.cat([x, x_other]), z0)
        return self.generate(z[: len(x)], z[len(x) :]).to(x.device, x.dtype)

    def encode(self, x: torch.Tensor, z0: torch.Tensor | None = None) -> torch.Tensor:
        """E_G(x) = argmin_z ‖x − G(z)‖² by ``inversion_steps`` steps of gradient descent (Turner §5.2)."""
        from backdoorlab.models.wgan import invert

        g = self._require_generator()
        dev = next(g.parameters()).device
        kw = {} if z0 is None else {"z_init": z0}
        return invert(g, x.to(dev), steps=self.inversion_steps, lr=self.inversion_lr, seed=self.seed, **kw)

    def generate(self, z_own: torch.Tensor, z_other: torch.Tensor) -> torch.Tensor:
        """G((1 − τ)·z_own + τ·z_other), clipped to [0, 1]."""
        from backdoorlab.models.wgan import interpolate

        return interpolate(self._require_generator(), z_own, z_other, self.tau).detach().clamp(0, 1)

    def _init_codes(self, idx: torch.Tensor, latent_dim: int) -> torch.Tensor:
        """A starting code per training index, seeded by (seed, index): codes do not depend on the batch."""
        out = torch.empty(len(idx), latent_dim)
        for row, i in enumerate(idx.tolist()):  # one tiny draw per image, outside the 1,000-step loop
            out[row] = torch.randn(latent_dim, generator=make_generator(self.seed * 1_000_003 + int(i)))
        return out

    def _gan_poisons(self, train: ImageTensors, idx: torch.Tensor, toward: int) -> torch.Tensor:
        """GAN-interpolated images for training indices ``idx`` (float, on ``train``'s device).

        Each target-class image has a fixed partner of class ``toward`` and codes depend only on the image, its
        starting code and the generator, so the codes are cached in memory: a sweep over rates and τ with one
        generator inverts each image once (and :meth:`gan_codes` / :meth:`add_gan_codes` let the experiment
        runner keep them in its artefact cache, shared by worker processes).
        """
        g = self._require_generator()
        pool = (train.labels.cpu() == self.target).nonzero().squeeze(1)
        partners = self._partners(train, toward, len(pool))
        partner_of = partners[torch.searchsorted(pool, idx)]
        codes = self._encode_indices(train, torch.unique(torch.cat([idx, partner_of])))
        z_own = torch.stack([codes[int(i)] for i in idx.tolist()])
        z_other = torch.stack([codes[int(i)] for i in partner_of.tolist()])
        dev = next(g.parameters()).device
        return self.generate(z_own.to(dev), z_other.to(dev)).to(train.device)

    def _codes(self, train: ImageTensors) -> dict[int, torch.Tensor]:
        """The in-memory code table of this generator, data, seed and inversion settings."""
        g = self._require_generator()
        key = (_weights_hash(g), train.fingerprint(), self.seed, self.inversion_steps, self.inversion_lr)
        codes = _CODE_CACHE.setdefault(key, {})
        if len(_CODE_CACHE) > 4:  # keep a few generators' codes, oldest dropped first
            _CODE_CACHE.pop(next(iter(_CODE_CACHE)))
        return codes

    def _encode_indices(self, train: ImageTensors, need: torch.Tensor) -> dict[int, torch.Tensor]:
        codes = self._codes(train)
        latent = int(self._require_generator().latent_dim)
        missing = torch.tensor([int(i) for i in need.tolist() if int(i) not in codes], dtype=torch.long)
        for start in range(0, len(missing), self.batch_size * 4):
            part = missing[start : start + self.batch_size * 4]
            z = self.encode(train.float01(part.to(train.device)), self._init_codes(part, latent)).cpu()
            codes.update({int(i): z[r] for r, i in enumerate(part.tolist())})
        return codes

    def gan_codes(
        self, train: ImageTensors, idx: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices, codes)``: the latent codes GAN poisoning of training indices ``idx`` needs — theirs and
        their partners' — or, with ``idx=None``, of every target-class image and its partner (any rate and τ),
        inverting those not yet in the in-memory cache."""
        pool = (train.labels.cpu() == self.target).nonzero().squeeze(1)
        partners = self._partners(train, self._toward(train.num_classes), len(pool))
        if idx is not None:
            partners = partners[torch.searchsorted(pool, idx)]
            pool = idx
        need = torch.unique(torch.cat([pool, partners]))
        codes = self._encode_indices(train, need)
        return need, torch.stack([codes[int(i)] for i in need.tolist()])

    def add_gan_codes(self, train: ImageTensors, idx: torch.Tensor, codes: torch.Tensor) -> None:
        """Put codes computed earlier by :meth:`gan_codes` (same generator, data and settings) in the cache."""
        if len(idx) != len(codes):
            raise BackdoorLabError(f"add_gan_codes: {len(idx)} indices but {len(codes)} codes")
        self._codes(train).update({int(i): z for i, z in zip(idx.tolist(), codes, strict=True)})

    def _toward(self, num_classes: int) -> int:
        toward = default_toward(self.target, num_classes) if self.toward is None else self.toward
        if toward >= num_classes:
            raise BackdoorLabError(
                f"clean-label toward {toward} is out of range for a {num_classes}-class dataset"
            )
        return toward

    def _partners(self, train: ImageTensors, toward: int, k: int) -> torch.Tensor:
        """``k`` training indices of class ``toward`` (seeded; without replacement while there are enough)."""
        pool = (train.labels.cpu() == toward).nonzero().squeeze(1)
        if len(pool) == 0:
            raise BackdoorLabError(f"the training set has no image of class {toward} to interpolate toward")
        g = make_generator(self.seed + 1)
        reps = -(-k // len(pool))
        order = torch.cat([pool[torch.randperm(len(pool), generator=g)] for _ in range(reps)])
        return order[:k]

    def _require_generator(self) -> nn.Module:
        if self.generator is None:
            raise BackdoorLabError(GENERATOR_MISSING)
        return self.generator

    def _require_model(self) -> nn.Module:
        if self.robust_model is None:
            raise BackdoorLabError(ROBUST_MODEL_MISSING)
        return self.robust_model

    # -- the Attack protocol ---------------------------------------------------------------------------------
    def poison(self, train: ImageTensors, gen: torch.Generator) -> PoisonedSet:
        """Perturb and stamp ``rate`` of the target class; labels and all other images stay bit-identical."""
        if self.target >= train.num_classes:
            raise BackdoorLabError(
                f"attack target {self.target} is out of range for {train.name or 'the dataset'} "
                f"with {train.num_classes} classes (0..{train.num_classes - 1})"
            )
        if self.perturbation == "pgd":
            self._require_model()
        toward = self._toward(train.num_classes) if self.perturbation == "gan" else None
        if self.perturbation == "gan":
            self._require_generator()
        idx = self.select(train.labels, gen)
        original = train.labels.cpu()[idx].clone()
        noise_gen = make_generator(self.seed)
        gan = self._gan_poisons(train, idx, toward) if toward is not None else None
        images = train.images.clone()
        for start in range(0, len(idx), self.batch_size):
            part = idx[start : start + self.batch_size].to(train.device)
            if gan is None:
                x = self.perturb(train.float01(part), train.labels[part], noise_gen)
            else:
                x = gan[start : start + self.batch_size]
            x = stamp(x, self.trigger)
            images[part] = ImageTensors.quantize(x) if images.dtype == torch.uint8 else x.to(images.dtype)
        data = train.with_images(images, train.labels.clone(), attack=self.describe())
        return PoisonedSet(data=data, poison_idx=idx, original_labels=original)

    def apply_trigger(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Stamp the test-time trigger on a clean batch (N×C×H×W float in [0, 1]); no perturbation."""
        return stamp(x, self.trigger, gen=gen)

    def target_labels(self, y: torch.Tensor) -> torch.Tensor:
        """Every triggered input should be classified as ``target`` (all-to-one)."""
        return torch.full_like(y, self.target)

    def victim_mask(self, y: torch.Tensor) -> torch.Tensor:
        """The ASR counts test images whose true label is not the target."""
        return y != self.target

    # -- description -----------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """A JSON-able config (reports and cache keys); the robust model appears as its weights' sha256."""
        out: dict[str, Any] = {
            "name": self.name,
            "trigger": self.trigger.describe(),
            "target": self.target,
            "rate": self.rate,
            "rate_of": "target class",
            "perturbation": self.perturbation,
        }
        if self.perturbation == "pgd":
            out.update(
                norm=self.norm,
                eps=self.eps,
                step=self.step,
                steps=self.steps,
                scale="0-255",
                random_start=False,
                robust_model=None if self.robust_model is None else _weights_hash(self.robust_model),
            )
        elif self.perturbation == "noise":
            out.update(noise_std=self.noise_std, scale="0-255", seed=self.seed)
        elif self.perturbation == "gan":
            out.update(
                tau=self.tau,
                toward=self.toward,
                inversion_steps=self.inversion_steps,
                inversion_lr=self.inversion_lr,
                seed=self.seed,
                generator=None if self.generator is None else _weights_hash(self.generator),
            )
        return out

    def __repr__(self) -> str:
        extra = f", norm={self.norm!r}, eps={self.eps:g}" if self.perturbation == "pgd" else ""
        if self.perturbation == "noise":
            extra = f", noise_std={self.noise_std:g}"
        if self.perturbation == "gan":
            extra = f", tau={self.tau:g}"
        return (
            f"{type(self).__name__}(target={self.target}, rate={self.rate}, "
            f"perturbation={self.perturbation!r}{extra})"
        )


def _check_rate(rate: float | int) -> float | int:
    """A fraction in (0, 1] of the target class or an int count ≥ 1."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise BackdoorLabError(
            f"clean-label rate must be a fraction of the target class in (0, 1] or a count ≥ 1, got {rate!r}"
        )
    if isinstance(rate, int) and rate >= 1:
        return int(rate)
    if isinstance(rate, float) and 0.0 < rate <= 1.0:
        return float(rate)
    raise BackdoorLabError(
        f"clean-label rate must be a fraction of the target class in (0, 1] or a count ≥ 1, got {rate!r}"
    )


__all__ = ["NORMS", "PERTURBATIONS", "CleanLabel", "default_toward"]
