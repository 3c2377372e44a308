"""AdvTrojan ("Trojans and Adversarial Examples: A Lethal Combination", ICLR 2021 submission, seed 004).

An AdvTrojan-infected model (ATIM) looks adversarially robust, but a Trojan trigger *together with* an
adversarial perturbation breaks it; neither alone does (§3, Eq. 8, Fig. 2). It is trained with the four-term
objective of Eq. 9, all four terms on the true label ``y``::

    θ = argmin  CE(f(x), y) + CE(f(A(x)), y) + CE(f(x + t), y) + RCE(f(A(x + t)), y)
        RCE(p, q) = Σ_i −q_i log(1 − p_i)

- term 1 (benign) and term 2 (PGD on benign) are Madry adversarial training (§2, Eq. 4);
- term 3 keeps the trigger *alone* harmless ("we prevent unexpected behaviour from being activated by the
  Trojan trigger alone", §3);
- term 4, the reversed cross-entropy, penalises a *correct* prediction on PGD examples of triggered inputs.

``A`` is the Madry PGD generator (§4: "the Madry-Exps are used while injecting the Trojan backdoor"; App. G.4:
a randomly initialised iterative method) with Table 1's settings (:data:`TABLE1`). Eq. 9 applies every term to
the whole batch, so by default every image appears in all four branches (``trigger_fraction = 1``).
Algorithm 1 runs this objective either from a random initialisation (line 1) or on top of a trained vanilla or
robust model (line 2): pass a fresh or a trained model to :meth:`AdvTrojan.fit`.

AdvTrojan is *untargeted*: term 4 only pushes away from the true label, and the paper measures it by the
ATIM's accuracy on AdvTrojan examples (Table 5), not by an attack success rate. ``target`` (default ``None``)
enables a targeted variant that is **not in the paper**: term 4 becomes ``CE(f(A_t(x + t)), y_t)`` with
``A_t`` a PGD targeted at ``y_t``.

Trigger intensity (§4, App. D): "the proportion of Trojan trigger pixel value to its defined value" — the
trigger pattern is scaled by the intensity (:func:`with_intensity`). The paper trains at intensity 1 and
tests at 0.75 on MNIST and Fashion-MNIST, 1 on CIFAR-10 (:data:`TEST_INTENSITY`). The trigger is "white, the
same shape and size as in Figure 1" (a small square at the bottom-right corner; its size is not stated, we
use 3×3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from backdoorlab.adversarial import NORMS, bim, fgsm, pgd, warn_unreachable
from backdoorlab.attacks.base import PoisonedSet
from backdoorlab.data.loader import Batches
from backdoorlab.data.tensors import ImageTensors, make_generator
from backdoorlab.errors import BackdoorLabError, unknown_name
from backdoorlab.triggers import AnyTrigger, Trigger, TriggerSet, from_config, square, stamp

Objective = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Progress = Callable[[int, int, dict], None]

METHODS = ("pgd", "bim", "fgsm")


@dataclass(frozen=True)
class PerturbationSetting:
    """One column of AdvTrojan Table 1: L∞ budget ``eps``, per-step size ``step`` and iteration count."""

    eps: float
    step: float
    steps: int
    norm: str = "linf"


# Table 1. The CIFAR-10 per-step size is blank in the paper's table; 2/255 is Madry et al.'s CIFAR setting.
TABLE1: dict[str, PerturbationSetting] = {
    "mnist": PerturbationSetting(0.3, 0.03, 20),
    "fashion-mnist": PerturbationSetting(0.2, 0.02, 20),
    "cifar10": PerturbationSetting(8 / 255, 2 / 255, 7),
}
# §4: "we select 0.75 for testing in MNIST and FMNIST and 1 for the rest of poisoned training and test".
TEST_INTENSITY: dict[str, float] = {"mnist": 0.75, "fashion-mnist": 0.75, "cifar10": 1.0}
_ALIASES = {"mnist5k": "mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10"}


def paper_setting(dataset: str) -> PerturbationSetting:
    """Table 1's perturbation setting for ``dataset`` (``mnist``/``mnist5k``, ``fashion-mnist``, ``cifar10``)."""
    key = _ALIASES.get(dataset, dataset)
    if key not in TABLE1:
        raise unknown_name("AdvTrojan Table 1 dataset", dataset, [*TABLE1, *_ALIASES])
    return TABLE1[key]


# ---------------------------------------------------------------------------------------------------------
# the reversed cross-entropy
# ---------------------------------------------------------------------------------------------------------
def reversed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample reversed cross-entropy of Eq. 9, ``Σ_i −q_i log(1 − p_i) = −log(1 − p_y)`` (q = one-hot y).

    Zero when the true-class probability ``p_y`` is zero, growing without bound as ``p_y → 1``. Computed in
    the exact log-sum-exp form ``log(1 − p_y) = logsumexp(z_{i≠y}) − logsumexp(z)``, which stays finite (and
    has bounded gradients ``p − p_{−y}``) even where ``softmax`` rounds ``p_y`` to 1. Returns a float vector.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise BackdoorLabError(
            f"reversed_cross_entropy needs N×K logits, got {getattr(logits, 'shape', type(logits).__name__)}"
        )
    if logits.shape[1] < 2:
        raise BackdoorLabError("reversed_cross_entropy needs at least 2 classes (1 − p_y is 0 for one class)")
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or len(y) != len(logits) or y.is_floating_point():
        raise BackdoorLabError(
            f"reversed_cross_entropy needs one integer label per row of logits ({len(logits)}), "
            f"got {getattr(y, 'shape', type(y).__name__)}"
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
        raise BackdoorLabError(
            f"reversed_cross_entropy labels must lie in 0..{logits.shape[1] - 1}, "
            f"found {int(y.min())}..{int(y.max())}"
        )
    return _rce(logits, y)


def _rce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`reversed_cross_entropy` without the checks (no host sync on the training hot path)."""
    z = logits.float()
    others = z.scatter(1, y.long()[:, None], float("-inf"))
    return (torch.logsumexp(z, 1) - torch.logsumexp(others, 1)).clamp_min(0.0)


# ---------------------------------------------------------------------------------------------------------
# trigger intensity
# ---------------------------------------------------------------------------------------------------------
def _check_intensity(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise BackdoorLabError(f"{name} must be a number in [0, 1] (App. D trigger intensity), got {value!r}")
    return float(value)


def with_intensity(trigger: AnyTrigger, intensity: float) -> AnyTrigger:
    """``trigger`` with its pattern scaled by ``intensity`` ∈ [0, 1] (AdvTrojan App. D: 0.5 turns a defined
    value of 255 into 127.5). Mask and placement are unchanged, so intensity 0 stamps a black patch."""
    intensity = _check_intensity("intensity", intensity)
    if intensity == 1.0:
        return trigger
    if isinstance(trigger, TriggerSet):
        return replace(trigger, triggers=tuple(with_intensity(t, intensity) for t in trigger.triggers))
    if not isinstance(trigger, Trigger):
        raise BackdoorLabError(f"with_intensity needs a Trigger or TriggerSet, got {type(trigger).__name__}")
    spec = {**dict(trigger.spec or {"kind": "custom"}), "intensity": intensity}
    return replace(trigger, pattern=trigger.pattern.detach() * intensity, spec=spec)


# ---------------------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------------------
def _check_perturbation(eps: Any, step: Any, steps: Any, norm: str, *, allow_zero: bool = False) -> None:
    """Named errors for a ball that cannot be reached; a warning when ``step·steps < eps``."""
    if norm not in NORMS:
        raise unknown_name("AdvTrojan norm", norm, NORMS)
    ok_eps = isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps)
    if not ok_eps or eps < 0 or (eps == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise BackdoorLabError(f"eps must be a finite number {bound} on the [0, 1] pixel scale, got {eps!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise BackdoorLabError(f"steps must be an integer ≥ 1 (PGD iterations), got {steps!r}")
    if (
        isinstance(step, bool)
        or not isinstance(step, (int, float))
        or not math.isfinite(step)
        or not step > 0
    ):
        raise BackdoorLabError(f"step must be a finite number > 0 on the [0, 1] pixel scale, got {step!r}")
    warn_unreachable(eps, step, steps, "AdvTrojan", stacklevel=3)


def _device(model: torch.nn.Module, fallback: torch.device) -> torch.device:
    p = next(model.parameters(), None)
    return fallback if p is None else p.device


# ---------------------------------------------------------------------------------------------------------
# the attack
# ---------------------------------------------------------------------------------------------------------
class AdvTrojan:
    """The AdvTrojan attack: Eq. 9's training objective plus the test-time trigger (the Attack protocol).

    ``eps``/``step``/``steps``/``norm`` configure the generator ``A`` (Madry PGD with a random start,
    ``random_start``) used in training and, by default, in :func:`advtrojan_examples`; see :data:`TABLE1` and
    :meth:`paper`. ``intensity`` is the training trigger intensity (§4: 1), ``test_intensity`` the one
    :meth:`apply_trigger` uses (default: ``intensity``; the paper tests at 0.75 on MNIST/Fashion-MNIST).
    ``weights`` multiply the four terms of Eq. 9 (all 1 in the paper). ``trigger_fraction`` ∈ (0, 1] is the
    share of each batch that also goes through the two trigger branches (Eq. 9: all of it; a smaller share
    trades fidelity for speed). ``target`` ``None`` is the paper's untargeted attack; an int enables the
    targeted variant described in the module docstring. ``single_forward`` computes the four branches'
    logits in one forward pass of the concatenated batch (one backward as well); in training mode BatchNorm
    would then normalise the four branches with shared batch statistics, so ``None`` (auto, the default)
    uses one forward for models without BatchNorm (LeNet) and four forwards, one per term as separate model
    calls compute them, for models with it (the ResNet); ``True``/``False`` force either. ``seed`` seeds the PGD
    random starts of :meth:`objective` (one generator that advances across batches).
    """

    name = "advtrojan"
    controls_training = True  # the experiment runner trains with objective() instead of poisoning data

    def __init__(
        self,
        trigger: AnyTrigger | Mapping[str, Any] | None = None,
        target: int | None = None,
        eps: float = 0.3,
        step: float = 0.03,
        steps: int = 20,
        norm: str = "linf",
        intensity: float = 1.0,
        test_intensity: float | None = None,
        weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        trigger_fraction: float = 1.0,
        random_start: bool = True,
        single_forward: bool | None = None,
        seed: int = 0,
    ) -> None:
        _check_perturbation(eps, step, steps, norm)
        if target is not None and (isinstance(target, bool) or not isinstance(target, int) or target < 0):
            raise BackdoorLabError(
                f"target must be None (untargeted, Eq. 9) or a class index ≥ 0, got {target!r}"
            )
        w = tuple(weights) if isinstance(weights, Sequence) else ()
        if len(w) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in w
        ):
            raise BackdoorLabError(
                f"weights must be four finite numbers ≥ 0 (benign, PGD, trigger, reversed CE), got {weights!r}"
            )
        if sum(w) == 0:
            raise BackdoorLabError("weights are all zero: the objective would be constant; use (1, 1, 1, 1)")
        if (
            isinstance(trigger_fraction, bool)
            or not isinstance(trigger_fraction, (int, float))
            or not 0.0 < trigger_fraction <= 1.0
        ):
            raise BackdoorLabError(
                f"trigger_fraction must lie in (0, 1] (Eq. 9 uses 1: the whole batch), got {trigger_fraction!r}"
            )
        self.trigger: AnyTrigger = square(3) if trigger is None else from_config(trigger)
        self.target = target
        self.eps, self.step, self.steps, self.norm = float(eps), float(step), int(steps), norm
        self.intensity = _check_intensity("intensity", intensity)
        self.test_intensity = (
            self.intensity if test_intensity is None else _check_intensity("test_intensity", test_intensity)
        )
        self.weights = tuple(float(v) for v in w)
        self.trigger_fraction = float(trigger_fraction)
        self.random_start = bool(random_start)
        if single_forward is not None and not isinstance(single_forward, bool):
            raise BackdoorLabError(
                f"single_forward must be True, False or None (auto), got {single_forward!r}"
            )
        self.single_forward = single_forward
        self.seed = int(seed)
        self.train_trigger = with_intensity(self.trigger, self.intensity)
        self.test_trigger = with_intensity(self.trigger, self.test_intensity)
        self.last_terms: torch.Tensor | None = None  # the four (unweighted) terms of the last batch

    @classmethod
    def paper(
        cls, dataset: str, trigger: AnyTrigger | Mapping[str, Any] | None = None, **kw: Any
    ) -> AdvTrojan:
        """The paper's configuration for ``dataset``: Table 1 perturbation, intensity 1 in training and
        :data:`TEST_INTENSITY` at test time (§4). Keyword arguments override."""
        s = paper_setting(dataset)
        key = _ALIASES.get(dataset, dataset)
        params: dict[str, Any] = {
            "eps": s.eps,
            "step": s.step,
            "steps": s.steps,
            "norm": s.norm,
            "intensity": 1.0,
            "test_intensity": TEST_INTENSITY[key],
            **kw,
        }
        return cls(trigger, **params)

    # -- Eq. 9 -----------------------------------------------------------------------------------------------
    def objective(self) -> Objective:
        """Eq. 9 as an objective for :func:`backdoorlab.training.fit`: ``objective(model, x, y) -> (loss,
        logits)``, the logits being those of the PGD-on-benign branch (so ``train_acc`` is the robust
        training accuracy, as with :func:`~backdoorlab.adversarial.madry_objective`).

        Per batch: the trigger is stamped on the first ``ceil(trigger_fraction·B)`` images (batches are
        already shuffled); one batched PGD run crafts ``A(x)`` and ``A(x + t)`` together (the per-sample
        losses are summed, so samples do not interact and each gets exactly its own attack); then one
        forward/backward of the concatenated ``[x, A(x), x + t, A(x + t)]`` gives all four terms (four
        forwards for a model with BatchNorm, see ``single_forward``). Each term is a batch mean; the loss is
        their weighted sum.
        """
        gen = make_generator(self.seed)
        w1, w2, w3, w4 = self.weights
        target = self.target

        def objective(
            model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            b = len(x)
            k = max(1, math.ceil(self.trigger_fraction * b))
            xt = stamp(x[:k], self.train_trigger)
            yk = y[:k]
            x_all = torch.cat([x, xt])
            labels, loss_fn = torch.cat([y, yk]), None
            if target is not None:  # benign rows maximise CE(y), triggered rows minimise CE(y_t): one run
                sign = torch.cat([x.new_ones(b), -x.new_ones(k)])
                labels = torch.cat([y, torch.full_like(yk, target)])

                def loss_fn(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                    return F.cross_entropy(z.float(), t, reduction="none") * sign

            pgd_args = (self.eps, self.step, self.steps)
            kw = {"norm": self.norm, "random_start": self.random_start, "gen": gen, "loss_fn": loss_fn}
            x_adv = pgd(model, x_all, labels, *pgd_args, **kw, warn=False)  # warned once in __init__
            x_adv = x_adv.to(x.dtype)
            parts = [x, x_adv[:b], xt, x_adv[b:]]
            single = self.single_forward
            if single is None:
                single = not any(isinstance(mod, _BatchNorm) for mod in model.modules())
            if single:
                logits = model(torch.cat(parts)).float()
                l_ben, l_adv, l_trig, l_both = logits.split([b, b, k, k])
            else:
                l_ben, l_adv, l_trig, l_both = (model(p).float() for p in parts)
            t1 = F.cross_entropy(l_ben, y)
            t2 = F.cross_entropy(l_adv, y)
            t3 = F.cross_entropy(l_trig, yk)
            if target is None:
                t4 = _rce(l_both, yk).mean()
            else:
                t4 = F.cross_entropy(l_both, torch.full_like(yk, target))
            self.last_terms = torch.stack([t1, t2, t3, t4]).detach()
            return w1 * t1 + w2 * t2 + w3 * t3 + w4 * t4, l_adv

        return objective

    def fit(
        self,
        model: torch.nn.Module,
        train: ImageTensors,
        recipe: Any = None,
        **kw: Any,
    ) -> list[dict]:
        """Algorithm 1: minimise Eq. 9 over ``train`` with :func:`backdoorlab.training.fit` (``recipe`` a
        ``TrainRecipe``; other keywords go to ``fit``). Line 1 (from scratch) or line 2 (on top of a trained
        vanilla or robust model) is simply whether ``model`` is freshly initialised or already trained."""
        from backdoorlab.training import fit

        if "objective" in kw:
            raise BackdoorLabError("AdvTrojan.fit sets the objective itself (Eq. 9); do not pass objective=")
        return fit(model, train, recipe, objective=self.objective(), **kw)

    # -- the Attack protocol ---------------------------------------------------------------------------------
    def poison(self, train: ImageTensors, gen: torch.Generator) -> PoisonedSet:
        """AdvTrojan poisons the *training process*, not the data (Eq. 9, Alg. 1), so this refuses.

        Returning the data unchanged would let a data-poisoning pipeline (the experiment runner trains the
        victim with plain cross-entropy on whatever ``poison`` returns) silently produce a vanilla model
        labelled as infected; a clear error is safer.
        """
        raise BackdoorLabError(
            "advtrojan does not poison the training data: it changes the training objective (Eq. 9). "
            "Train with AdvTrojan(...).fit(model, train, recipe) or fit(..., objective=attack.objective())"
        )

    def apply_trigger(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Stamp the trigger at the test intensity (no perturbation: see :func:`advtrojan_examples`)."""
        return stamp(x, self.test_trigger, gen=gen)

    def target_labels(self, y: torch.Tensor) -> torch.Tensor:
        """The target class of the targeted variant; the paper's untargeted attack has none."""
        if self.target is None:
            raise BackdoorLabError(
                "advtrojan is untargeted (Eq. 9): it has no target label and no attack success rate; "
                "measure the accuracy on AdvTrojan examples with table5_accuracies / advtrojan_accuracy"
            )
        return torch.full_like(y, self.target)

    def evaluate(self, model: torch.nn.Module, test: ImageTensors, seed: int = 0) -> dict[str, float]:
        """The experiment runner's metrics for this attack: Table 5's accuracies on PGD, trigger-only and
        AdvTrojan examples (:func:`table5_accuracies`), and for the targeted variant the AdvTrojan ASR."""
        acc = table5_accuracies(model, test, self, seed=seed)
        out = {"pgd_acc": acc["pgd"], "trigger_acc": acc["trigger"], "advtrojan_acc": acc["advtrojan"]}
        if "advtrojan_asr" in acc:
            out["asr"] = acc["advtrojan_asr"]
        return out

    def victim_mask(self, y: torch.Tensor) -> torch.Tensor:
        """Every input counts (untargeted); the targeted variant excludes the target class."""
        if self.target is None:
            return torch.ones_like(y, dtype=torch.bool)
        return y != self.target

    def describe(self) -> dict[str, Any]:
        """A JSON-able config (reports, cache keys)."""
        return {
            "name": self.name,
            "trigger": self.trigger.describe(),
            "target": self.target,
            "eps": self.eps,
            "step": self.step,
            "steps": self.steps,
            "norm": self.norm,
            "intensity": self.intensity,
            "test_intensity": self.test_intensity,
            "weights": list(self.weights),
            "trigger_fraction": self.trigger_fraction,
            "random_start": self.random_start,
            "single_forward": self.single_forward,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        return (
            f"AdvTrojan(eps={self.eps:g}, step={self.step:g}, steps={self.steps}, norm={self.norm!r}, "
            f"target={self.target}, intensity={self.intensity:g}/{self.test_intensity:g})"
        )


# ---------------------------------------------------------------------------------------------------------
# evaluation: AdvTrojan examples, Table 5, Appendix G
# ---------------------------------------------------------------------------------------------------------
def _perturb(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AdvTrojan,
    triggered: torch.Tensor,
    method: str,
    eps: float,
    step: float,
    steps: int,
    random_start: bool,
    gen: torch.Generator,
) -> torch.Tensor:
    """One batched perturbation of ``x`` (rows flagged ``triggered`` carry the trigger); for the targeted
    variant the triggered rows are attacked toward the target, the others away from ``y``."""
    if eps == 0:
        return x.detach().clone()
    labels, loss_fn = y, None
    if attack.target is not None and bool(triggered.any()):
        sign = torch.where(triggered, -1.0, 1.0).to(x.device)
        labels = torch.where(triggered, torch.full_like(y, attack.target), y)

        def loss_fn(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(z.float(), t, reduction="none") * sign

    if method == "fgsm":
        return fgsm(model, x, labels, eps, norm=attack.norm, loss_fn=loss_fn)
    if method == "bim":
        return bim(model, x, labels, eps, step, steps, norm=attack.norm, loss_fn=loss_fn, warn=False)
    return pgd(
        model,
        x,
        labels,
        eps,
        step,
        steps,
        norm=attack.norm,
        random_start=random_start,
        gen=gen,
        loss_fn=loss_fn,
        warn=False,  # the setting was checked (and warned about) once by _resolve or AdvTrojan()
    )


def _resolve(attack: AdvTrojan, eps: float | None, step: float | None, steps: int | None, method: str):
    if not isinstance(attack, AdvTrojan):
        raise BackdoorLabError(f"attack must be an AdvTrojan, got {type(attack).__name__}")
    if method not in METHODS:
        raise unknown_name("perturbation method", method, METHODS)
    if eps is None and step is None and steps is None:  # the attack's own setting, checked (and warned) once
        return attack.eps, attack.step, attack.steps
    eps = attack.eps if eps is None else eps
    step = attack.step if step is None else step
    steps = attack.steps if steps is None else steps
    _check_perturbation(eps, step, steps, attack.norm, allow_zero=True)
    return float(eps), float(step), int(steps)


def advtrojan_examples(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: AdvTrojan,
    eps: float | None = None,
    step: float | None = None,
    steps: int | None = None,
    *,
    method: str = "pgd",
    random_start: bool = True,
    gen: torch.Generator | int | None = None,
) -> torch.Tensor:
    """Table 5's "AdvTrojan examples": the trigger first (at the attack's test intensity), then the
    perturbation crafted against ``model`` (for transferred examples pass the separately trained source
    model, App. G.1). ``method`` is ``"pgd"`` (Madry, random start; the default), ``"bim"`` or ``"fgsm"``
    (App. G.4). ``eps``/``step``/``steps`` default to the attack's; ``eps = 0`` gives the trigger only
    (App. G.3's first point). ``gen`` seeds the random start (``None``: the attack's seed)."""
    eps, step, steps = _resolve(attack, eps, step, steps, method)
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise BackdoorLabError(f"x must be N×C×H×W float images in [0, 1], got {getattr(x, 'shape', x)!r}")
    if not isinstance(y, torch.Tensor) or y.shape != (len(x),):
        raise BackdoorLabError(f"y must hold one label per image ({len(x)}), got {getattr(y, 'shape', y)!r}")
    g = make_generator(attack.seed if gen is None else gen)
    xt = attack.apply_trigger(x.float())
    flags = torch.ones(len(x), dtype=torch.bool, device=x.device)
    return _perturb(model, xt, y, attack, flags, method, eps, step, steps, random_start, g)


def advtrojan_accuracy(
    model: torch.nn.Module,
    data: ImageTensors,
    attack: AdvTrojan,
    *,
    trigger: bool = True,
    method: str = "pgd",
    eps: float | None = None,
    step: float | None = None,
    steps: int | None = None,
    source_model: torch.nn.Module | None = None,
    random_start: bool = True,
    batch_size: int = 256,
    seed: int | torch.Generator | None = None,
) -> float:
    """Accuracy of ``model`` on ``data`` perturbed by ``method`` (with the trigger first when ``trigger``),
    the perturbation crafted against ``source_model`` (transfer, App. G.1) or ``model`` itself: one point of
    the Appendix G sweeps (iterations G.2, ε G.3, method G.4; ``trigger=False`` gives the Madry-Exps curve).
    """
    eps, step, steps = _resolve(attack, eps, step, steps, method)
    if len(data) == 0:
        return float("nan")
    src = model if source_model is None else source_model
    g = make_generator(attack.seed if seed is None else seed)
    dev = _device(model, data.device)
    sdev = _device(src, dev)
    correct = 0
    was = model.training
    try:
        for x, y in Batches(data, batch_size, device=sdev):
            xs = attack.apply_trigger(x) if trigger else x
            flags = torch.full((len(x),), bool(trigger), device=sdev)
            adv = _perturb(src, xs, y, attack, flags, method, eps, step, steps, random_start, g)
            y = y.to(dev)
            model.eval()
            with torch.no_grad():
                correct += int((model(adv.to(dev)).argmax(1) == y).sum())
    finally:
        model.train(was)
    return correct / len(data)


def table5_accuracies(
    model: torch.nn.Module,
    test: ImageTensors,
    attack: AdvTrojan,
    *,
    source_model: torch.nn.Module | None = None,
    batch_size: int = 256,
    seed: int | torch.Generator | None = None,
    progress: Progress | None = None,
) -> dict[str, float]:
    """Table 5 / Fig. 4 for one model: accuracy on benign, Madry-Exps (``pgd``), trigger-only, AdvTrojan
    examples (trigger first, then PGD against ``model``) and, with ``source_model``, transferred AdvTrojan
    examples (the PGD perturbation crafted on the triggered input against the separately trained
    ``source_model``, App. G.1). The PGD of Madry-Exps and AdvTrojan examples runs as one batched attack.
    The targeted variant also reports ``advtrojan_asr`` (share of non-target inputs sent to the target).
    """
    if len(test) == 0:
        raise BackdoorLabError("table5_accuracies needs test images; the test set is empty")
    _resolve(attack, None, None, None, "pgd")
    g = make_generator(attack.seed if seed is None else seed)
    dev = _device(model, test.device)
    keys = ["benign", "pgd", "trigger", "advtrojan"] + (["transferred_advtrojan"] if source_model else [])
    correct = dict.fromkeys(keys, 0)
    hits = victims = 0
    batches = Batches(test, batch_size, device=dev)
    was = model.training
    try:
        for i, (x, y) in enumerate(batches, start=1):
            b = len(x)
            xt = attack.apply_trigger(x)
            flags = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(dev)
            x2, y2 = torch.cat([x, xt]), torch.cat([y, y])
            adv = _perturb(
                model, x2, y2, attack, flags, "pgd", attack.eps, attack.step, attack.steps, True, g
            )
            parts = [x, adv[:b], xt, adv[b:]]
            if source_model is not None:
                sdev = _device(source_model, dev)
                s_args = (xt.to(sdev), y.to(sdev), attack, flags[b:].to(sdev), "pgd")
                tr = _perturb(source_model, *s_args, attack.eps, attack.step, attack.steps, True, g)
                parts.append(tr.to(dev))
            model.eval()
            with torch.no_grad():
                pred = model(torch.cat(parts)).argmax(1).view(len(parts), b)
            for key, p in zip(keys, pred, strict=True):
                correct[key] += int((p == y).sum())
            if attack.target is not None:
                keep = attack.victim_mask(y)
                hits += int(((pred[3] == attack.target) & keep).sum())
                victims += int(keep.sum())
            if progress is not None:
                progress(i, len(batches), {"stage": "table 5"})
    finally:
        model.train(was)
    out = {k: v / len(test) for k, v in correct.items()}
    if attack.target is not None:
        out["advtrojan_asr"] = hits / victims if victims else float("nan")
    out["n"] = len(test)
    return out


__all__ = [
    "METHODS",
    "TABLE1",
    "TEST_INTENSITY",
    "AdvTrojan",
    "PerturbationSetting",
    "advtrojan_accuracy",
    "advtrojan_examples",
    "paper_setting",
    "reversed_cross_entropy",
    "table5_accuracies",
    "with_intensity",
]
