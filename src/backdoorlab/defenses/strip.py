"""STRIP (Gao et al., "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks", ACSAC 2019) and
E-STRIP (the ensemble of Neural Cleanse and STRIP that AdvTrojan evaluates in §4, Table 4).

STRIP superimposes an input on ``N`` held-out clean images and classifies the blends. A trojaned input keeps
sending the blends to the target class (low entropy); a clean input's blends scatter (high entropy). Following
Gao et al. and their released code (REFERENCE_NOTES "Defences → STRIP"):

- overlay = ``x + x_k`` (pixel sum, ``cv2.addWeighted(x, 1, x_k, 1, 0)`` on float images: not clipped; our
  models normalise inside and accept values up to 2). ``blend="clip"`` clips to [0, 1] (what the same call
  does on uint8 images) and ``blend="mean"`` averages (a linear blend);
- entropy of one input ``H = −(1/N) Σ_n Σ_c p_nc log₂ p_nc``: the mean over the N overlays of each overlay's
  Shannon entropy in bits (Gao's definition; ART instead takes the entropy of the overlays' mean prediction);
- threshold: a normal distribution fitted (maximum likelihood: mean and population σ, as ``scipy.stats.norm.fit``)
  to the entropies of clean inputs; ``threshold = μ + σ·Φ⁻¹(FRR)`` at the chosen false-rejection rate (1 % in
  Gao et al.). An input is flagged as trojaned when its entropy is *below* the threshold.

Overlay pool (AdvTrojan App. F): "we randomly sample 100 examples from the benign test set as reserved
examples; the rest of the test examples are used for evaluation". With ``draw="fixed"`` (default) :meth:`STRIP.fit`
reserves ``n`` seeded-random held-out images and every input is superimposed with all of them; the clean
entropies for the threshold come from the remaining held-out images. ``draw="random"`` is Gao's released code:
the whole held-out set is the pool and each input draws ``n`` overlays with replacement (seeded).

Speed: the ``inputs × N`` blends of a chunk of inputs are classified in one batched forward pass
(``batch_size`` images per forward, i.e. ``batch_size // N`` inputs).

E-STRIP (AdvTrojan §4, after Pang et al. 2020): "first reverse engineers the potential trigger and attaches
it to the benign examples. Then, it follows the same superimposition process of STRIP ... the superimposition
perturbs the visual content while strengthening the trigger": :class:`ESTRIP` stamps a reverse-engineered
trigger (e.g. ``NeuralCleanseResult.trigger(c)``) on the overlay images (``attach_to="overlays"``, the
default reading) or on the inputs (``"inputs"``) before superimposing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from backdoorlab.data.tensors import ImageTensors, make_generator
from backdoorlab.errors import BackdoorLabError, unknown_name
from backdoorlab.metrics import auroc, roc_curve  # detection metrics; re-exported for callers of strip
from backdoorlab.triggers import AnyTrigger, Placement, Trigger, TriggerSet, stamp

Progress = Callable[[int, int, dict], None]

BLENDS = ("sum", "clip", "mean")
DRAWS = ("fixed", "random")
ATTACH = ("overlays", "inputs", "both")
LOG2 = math.log(2.0)


def _int_at_least(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BackdoorLabError(f"{name} must be an integer ≥ {low}, got {value!r}")
    return int(value)


def _rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise BackdoorLabError(f"{name} must be a rate strictly between 0 and 1 (e.g. 0.01), got {value!r}")
    return float(value)


def normal_threshold(mu: float, sigma: float, frr: float) -> float:
    """``μ + σ·Φ⁻¹(frr)``: the entropy below which a fraction ``frr`` of a normal N(μ, σ²) lies (Gao et al.)."""
    frr = _rate("frr", frr)
    return float(mu + sigma * torch.special.ndtri(torch.tensor(frr, dtype=torch.float64)))


class STRIP:
    """Gao et al.'s STRIP input detector; see the module docstring for the exact definitions.

    ``n`` overlays per input (Gao: 100; ≥ 2), ``frr`` the false-rejection rate the threshold is fitted for
    (Gao: 0.01; AdvTrojan Table 3 reports 2 %, 5 %, 10 %), ``blend`` one of :data:`BLENDS`, ``batch_size`` the
    most images per forward pass, ``draw`` one of :data:`DRAWS`, ``seed`` the pool choice and random draws.
    ``bf16`` classifies the blends under bfloat16 autocast (entropies still computed in float32): about twice
    the inputs/s on CPUs with AVX512-BF16 / AMX and on GPUs, at the cost of bf16 rounding in the logits
    (``benchmarks/results/strip.md`` measures both).
    """

    name = "strip"

    def __init__(
        self,
        n: int = 100,
        frr: float = 0.01,
        blend: str = "sum",
        batch_size: int = 512,
        seed: int = 0,
        draw: str = "fixed",
        bf16: bool = False,
    ) -> None:
        self.n = _int_at_least("n (STRIP overlays per input)", n, 2)
        self.frr = _rate("frr (false-rejection rate)", frr)
        if blend not in BLENDS:
            raise unknown_name("STRIP blend", blend, BLENDS)
        if draw not in DRAWS:
            raise unknown_name("STRIP draw", draw, DRAWS)
        self.blend = blend
        self.draw = draw
        self.batch_size = _int_at_least("batch_size", batch_size, 1)
        self.seed = int(seed)
        if not isinstance(bf16, bool):
            raise BackdoorLabError(f"bf16 must be True or False, got {bf16!r}")
        self.bf16 = bf16
        self.model: torch.nn.Module | None = None
        self.pool: torch.Tensor | None = None
        self.mu = self.sigma = self.threshold = math.nan
        self.clean_entropy: torch.Tensor | None = None
        self.forward_calls = 0  # model forward passes made by entropy() (for benchmarks and tests)

    # -- fitting ---------------------------------------------------------------------------------------------
    def fit(
        self,
        model: torch.nn.Module,
        clean_heldout: ImageTensors,
        calibration: ImageTensors | torch.Tensor | None = None,
        max_calibration: int | None = None,
        progress: Progress | None = None,
    ) -> STRIP:
        """Keep the overlay pool from ``clean_heldout`` and fit the threshold on clean entropies.

        The clean entropies come from ``calibration`` when given, else from the held-out images not reserved
        for the pool (``draw="fixed"``, when at least 2 remain) or from the whole held-out set; at most
        ``max_calibration`` of them (seeded choice). Returns ``self``.
        """
        if not isinstance(clean_heldout, ImageTensors):
            raise BackdoorLabError(
                f"clean_heldout must be ImageTensors of clean images, got {type(clean_heldout).__name__}"
            )
        if max_calibration is not None:
            _int_at_least("max_calibration", max_calibration, 2)
        gen = make_generator(self.seed)
        m = len(clean_heldout)
        if self.draw == "fixed":
            if m < self.n:
                raise BackdoorLabError(
                    f"STRIP needs at least n = {self.n} held-out clean images for its overlay pool, got {m}; "
                    "lower n or pass more clean images"
                )
            perm = torch.randperm(m, generator=gen)
            pool_idx, rest = perm[: self.n].sort().values, perm[self.n :].sort().values
        else:
            if m < 1:
                raise BackdoorLabError("STRIP needs at least one held-out clean image for its overlay pool")
            pool_idx, rest = torch.arange(m), torch.arange(0)
        dev = _model_device(model)
        self.model = model
        self.pool = self._prepare_pool(clean_heldout.float01(pool_idx.to(clean_heldout.device), device=dev))
        if calibration is None:
            calibration = clean_heldout.subset(rest) if len(rest) >= 2 else clean_heldout
        x = _as_images(calibration, "calibration")
        if len(x) < 2:
            raise BackdoorLabError(f"STRIP needs at least 2 clean calibration images, got {len(x)}")
        if max_calibration is not None and len(x) > max_calibration:
            x = x[torch.randperm(len(x), generator=gen)[:max_calibration].sort().values.to(x.device)]
        ent = self.entropy(x, progress=progress)
        self.clean_entropy = ent
        self.mu = float(ent.mean())
        self.sigma = float(ent.std(unbiased=False))
        self.threshold = normal_threshold(self.mu, self.sigma, self.frr)
        return self

    def threshold_at(self, frr: float) -> float:
        """The normal-fit threshold for another false-rejection rate (no refitting)."""
        self._check_fitted()
        return normal_threshold(self.mu, self.sigma, frr)

    # -- scoring ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def entropy(self, x: torch.Tensor | ImageTensors, progress: Progress | None = None) -> torch.Tensor:
        """Gao's entropy of every input (float64, CPU): mean over its N overlays of each overlay's Shannon
        entropy in bits. All N blends of ``batch_size // N`` inputs go through one forward pass."""
        if self.model is None or self.pool is None:
            raise BackdoorLabError("STRIP is not fitted: call fit(model, clean_heldout) first")
        x = _as_images(x, "x")
        model, pool = self.model, self.pool
        if tuple(x.shape[1:]) != tuple(pool.shape[1:]):
            raise BackdoorLabError(
                f"inputs have shape {tuple(x.shape[1:])} but the overlay pool {tuple(pool.shape[1:])}"
            )
        dev = pool.device
        n = self.n
        per = max(1, self.batch_size // n)
        idx = None
        if self.draw == "random":  # drawn up front so the result does not depend on the chunking
            idx = torch.randint(0, len(pool), (len(x), n), generator=make_generator(self.seed + 1))
        out = []
        total = -(-len(x) // per)
        was = model.training
        model.eval()
        try:
            for i, start in enumerate(range(0, len(x), per), start=1):
                xb = self._prepare_inputs(x[start : start + per].to(dev).float())
                ov = (
                    pool[None].expand(len(xb), *pool.shape) if idx is None else pool[idx[start : start + per]]
                )
                blends = self._superimpose(xb[:, None], ov).flatten(0, 1)
                self.forward_calls += 1
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
                    logits = model(blends)
                p = logits.float().softmax(1)
                h = torch.special.entr(p).sum(1) / LOG2
                out.append(h.view(len(xb), n).mean(1).double().cpu())
                if progress is not None:
                    progress(i, total, {"stage": "strip entropy"})
        finally:
            model.train(was)
        return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)

    def scores(self, x: torch.Tensor | ImageTensors) -> torch.Tensor:
        """A suspicion score per input, higher = more likely trojaned: the negated entropy."""
        return -self.entropy(x)

    def detect(self, x: torch.Tensor | ImageTensors) -> torch.Tensor:
        """True for inputs flagged as trojaned: entropy below the fitted threshold."""
        self._check_fitted()
        return self.entropy(x) < self.threshold

    def evaluate(
        self,
        clean: torch.Tensor | ImageTensors,
        trojaned: torch.Tensor | ImageTensors,
        fprs: Sequence[float] = (0.02, 0.05, 0.10),
    ) -> dict[str, Any]:
        """Detection quality on clean and trojaned inputs (JSON-able).

        At the fitted threshold: ``frr`` = ``fpr`` (share of clean inputs flagged) and ``far`` = ``fnr``
        (share of trojaned inputs missed). ``table`` gives, for each target false-positive rate of ``fprs``
        (AdvTrojan Table 3: 10 %, 5 %, and Gao's 2 %), the normal-fit threshold and the measured FPR/FNR.
        ``roc`` (``fpr``, ``tpr`` lists) and ``auroc`` rank inputs by negated entropy; ``inputs_per_s`` is
        the throughput of the entropy computation; ``clean_entropy``/``trojaned_entropy`` the raw values.
        """
        self._check_fitted()
        t0 = time.perf_counter()
        h_clean = self.entropy(clean)
        h_troj = self.entropy(trojaned)
        seconds = time.perf_counter() - t0
        if len(h_clean) == 0 or len(h_troj) == 0:
            raise BackdoorLabError("STRIP evaluate needs at least one clean and one trojaned input")
        fpr, tpr = roc_curve(-h_clean, -h_troj)

        def rates(th: float) -> tuple[float, float]:
            return float((h_clean < th).double().mean()), float((h_troj >= th).double().mean())

        frr, far = rates(self.threshold)
        table = {}
        for f in fprs:
            th = self.threshold_at(f)
            got_fpr, got_fnr = rates(th)
            table[f"{float(f):g}"] = {"threshold": th, "fpr": got_fpr, "fnr": got_fnr}
        return {
            "threshold": self.threshold,
            "target_frr": self.frr,
            "frr": frr,
            "far": far,
            "fpr": frr,
            "fnr": far,
            "table": table,
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
            "auroc": auroc(fpr, tpr),
            "mu": self.mu,
            "sigma": self.sigma,
            "clean_entropy": h_clean.tolist(),
            "trojaned_entropy": h_troj.tolist(),
            "inputs_per_s": (len(h_clean) + len(h_troj)) / max(seconds, 1e-9),
            "definition": "mean over overlays of the per-overlay Shannon entropy (bits), Gao et al. 2019",
        }

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n": self.n,
            "frr": self.frr,
            "blend": self.blend,
            "draw": self.draw,
            "seed": self.seed,
            "bf16": self.bf16,
        }

    # -- hooks -----------------------------------------------------------------------------------------------
    def _superimpose(self, x: torch.Tensor, overlays: torch.Tensor) -> torch.Tensor:
        s = x + overlays
        if self.blend == "clip":
            return s.clamp_(0.0, 1.0)
        if self.blend == "mean":
            return s.mul_(0.5)
        return s

    def _prepare_pool(self, pool: torch.Tensor) -> torch.Tensor:
        return pool

    def _prepare_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _check_fitted(self) -> None:
        if self.model is None or not math.isfinite(self.threshold):
            raise BackdoorLabError("STRIP is not fitted: call fit(model, clean_heldout) first")


class ESTRIP(STRIP):
    """E-STRIP (AdvTrojan §4, Table 4): STRIP with a reverse-engineered trigger attached before superimposing.

    ``trigger`` is a :class:`~backdoorlab.triggers.Trigger` (e.g. ``NeuralCleanseResult.trigger(c)``) or a
    ``(mask, pattern)`` pair (mask H×W or 1×H×W in [0, 1], pattern C×H×W in [0, 1]) blended over the whole
    image as Neural Cleanse does. ``attach_to`` is ``"overlays"`` (the held-out "benign examples", default),
    ``"inputs"`` or ``"both"``. Other arguments as :class:`STRIP`.
    """

    name = "e-strip"

    def __init__(
        self,
        trigger: AnyTrigger | tuple[torch.Tensor, torch.Tensor],
        n: int = 100,
        frr: float = 0.01,
        blend: str = "sum",
        batch_size: int = 512,
        seed: int = 0,
        draw: str = "fixed",
        attach_to: str = "overlays",
        bf16: bool = False,
    ) -> None:
        super().__init__(n, frr, blend, batch_size, seed, draw, bf16)
        if attach_to not in ATTACH:
            raise unknown_name("E-STRIP attach_to", attach_to, ATTACH)
        self.attach_to = attach_to
        self.trigger = _as_trigger(trigger)

    @classmethod
    def from_neural_cleanse(cls, result: Any, cls_index: int | None = None, **kw: Any) -> ESTRIP:
        """E-STRIP with the Neural Cleanse trigger of class ``cls_index`` (default: the most suspicious
        inspected class, i.e. the highest anomaly score)."""
        if cls_index is None:
            scores = torch.nan_to_num(result.scores.double(), nan=-math.inf)
            cls_index = int(scores.argmax())
        return cls(result.trigger(int(cls_index)), **kw)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "attach_to": self.attach_to, "trigger": self.trigger.describe()}

    def _prepare_pool(self, pool: torch.Tensor) -> torch.Tensor:
        if self.attach_to in ("overlays", "both"):
            return stamp(pool, self.trigger.to(pool.device))
        return pool

    def _prepare_inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.attach_to in ("inputs", "both"):
            return stamp(x, self.trigger.to(x.device))
        return x


# -- helpers ------------------------------------------------------------------------------------------------
def _model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return torch.device("cpu") if p is None else p.device


def _as_images(x: torch.Tensor | ImageTensors, what: str) -> torch.Tensor:
    if isinstance(x, ImageTensors):
        return x.float01()
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise BackdoorLabError(f"{what} must be N×C×H×W float images in [0, 1] or ImageTensors, got {shape}")
    return x


def _as_trigger(trigger: Any) -> AnyTrigger:
    if isinstance(trigger, (Trigger, TriggerSet)):
        return trigger
    if isinstance(trigger, (tuple, list)) and len(trigger) == 2:
        mask, pattern = (torch.as_tensor(t).detach().float() for t in trigger)
        if mask.ndim == 2:
            mask = mask[None]
        if pattern.ndim != 3 or mask.ndim != 3 or mask.shape[0] != 1 or mask.shape[1:] != pattern.shape[1:]:
            raise BackdoorLabError(
                f"E-STRIP trigger (mask, pattern) needs an H×W mask and a C×H×W pattern of the same size, "
                f"got {tuple(mask.shape)} and {tuple(pattern.shape)}"
            )
        return Trigger(
            pattern.clamp(0, 1), mask.clamp(0, 1), "blend", Placement("top-left"), {"kind": "reversed"}
        )
    raise BackdoorLabError(
        f"E-STRIP trigger must be a Trigger or a (mask, pattern) pair, got {type(trigger).__name__}"
    )


__all__ = ["ATTACH", "BLENDS", "DRAWS", "ESTRIP", "STRIP", "auroc", "normal_threshold", "roc_curve"]
