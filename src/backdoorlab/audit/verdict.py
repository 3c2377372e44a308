"""The audit's verdict: is the model poisoned, toward which class, how sure, and the evidence (Sun et al. §3.3, §4).

Sun et al.'s analysts marked a classifier poisoned "if the model can be successfully attacked by alternative
triggers" (App. D.2; 90–94 % accuracy, Table 2), and the paper contrasts poisoned models (alternative triggers
as good as the real one, Table 1) with clean ones (error rates of 1–8 % under the same triggers, Fig. 8). We
automate that judgement and calibrate it against a **null distribution**: the same measurement
(:func:`backdoorlab.audit.alt_triggers.measure`: same held-out images, same locations) of random patches that
owe nothing to the model — random colours, random colours in blocks, random crops of clean images
(:func:`~backdoorlab.audit.alt_triggers.null_candidates`) — and, when given, the best rates an audit of
known-clean models reached.

For every class t (the paper's procedure is untargeted, so any class may be the target), with ``best_t`` the
highest success rate toward t among the K candidates, two one-sided tests are run:

* **it works** — H0: the best candidate's true success rate is at most ``min_success`` (default ½: it flips
  at most half of the other classes' images). Normal approximation of the binomial with the n patched
  images behind the rate: ``z_w = (best_t − min_success) / √(min_success·(1 − min_success) / n)``;
* **it is specific** — H0: the best candidate is no better than a random patch. Rates go to the logit scale
  (clamped to ``[1/(2n), 1 − 1/(2n)]``); the null's location is its per-class *median* (some classes attract
  any patch more than others, and on a poisoned model a few random colours near the trigger's fire the
  backdoor themselves, which must not mask it) and its spread the pooled median absolute deviation
  (×1.4826, at least :data:`MIN_SPREAD`): ``z_s = (logit best_t − median_t) / spread``.

Each p-value (``Φ(−z)``) is Šidák-adjusted for taking the best of K candidates and the most extreme of the C
classes, ``1 − (1 − p)^(K·C)``, and the class's p-value is the larger of the two (an intersection–union
test: the class is flagged only if both hold, and ``P(p < α) ≤ α`` under either null). A class is
**flagged** when that p-value is below ``alpha`` and, when rates from audits of known-clean models are
given as ``reference``, ``best_t`` exceeds all of them.

The score is ``−log10 p`` of the most suspicious class (higher = more suspicious; 2 ≙ p = 0.01, so a clean
model scores near 0 whatever its patches do, since no trigger works on it); the empirical p-value (share of
null patches at least as good, +1 smoothed) is reported beside it, since the normal tail on the logit scale
is a model of the null, not a measurement of it. The paper gives no such rule (its analysts judged by
eye); the tests and thresholds are ours and are parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from backdoorlab.defenses.base import Verdict
from backdoorlab.errors import BackdoorLabError

DEFAULT_ALPHA = 0.01
DEFAULT_MIN_SUCCESS = 0.5  # "successfully attacked": more than half of the other classes' images flipped
# floor of the null's logit-scale spread: a null of near-identical rates says little about its tails
MIN_SPREAD = 0.5


@dataclass(frozen=True)
class ClassEvidence:
    """The verdict's numbers for one candidate target class."""

    cls: int
    best_rate: float
    best_candidate: int
    top_candidates: tuple[int, ...]
    null_mean: float  # mean null success rate toward this class
    null_median: float
    null_max: float
    z: float  # "specific": logit best vs the null's median, in pooled robust spreads
    z_works: float  # "works": best vs min_success, in binomial standard errors
    p_value: float  # the larger of the two tests' one-sided p-values (before adjustment)
    p_adjusted: float  # Šidák over K candidates and C classes
    empirical_p: float  # (1 + #null ≥ best) / (1 + #null)
    reference_max: float | None
    flagged: bool

    @property
    def score(self) -> float:
        return _score(self.p_adjusted)

    def describe(self) -> dict[str, Any]:
        return {
            "class": self.cls,
            "best_rate": round(self.best_rate, 4),
            "best_candidate": self.best_candidate,
            "top_candidates": list(self.top_candidates),
            "null_mean": round(self.null_mean, 4),
            "null_median": round(self.null_median, 4),
            "null_max": round(self.null_max, 4),
            "z": round(self.z, 3),
            "z_works": round(self.z_works, 3),
            "p_value": self.p_value,
            "p_adjusted": self.p_adjusted,
            "empirical_p": round(self.empirical_p, 4),
            "reference_max": None if self.reference_max is None else round(self.reference_max, 4),
            "score": round(self.score, 3),
            "flagged": self.flagged,
        }


@dataclass(frozen=True, eq=False)
class AuditVerdict:
    """Poisoned or clean, the suspected target class, a calibrated score and the per-class evidence.

    ``target`` is the flagged class with the highest score when ``poisoned``, otherwise the most suspicious
    class (for the report); ``flagged`` lists every flagged class (an all-to-all attack flags several).
    ``score`` is ``−log10 p_adjusted`` of ``target``. ``evidence`` are candidate indices: the best
    candidates toward ``target``.
    """

    poisoned: bool
    target: int | None
    flagged: tuple[int, ...]
    score: float
    p_value: float
    z: float
    best_rate: float
    evidence: tuple[int, ...]
    per_class: tuple[ClassEvidence, ...]
    alpha: float
    min_success: float
    n_candidates: int
    n_null: int
    reason: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "poisoned": self.poisoned,
            "target": self.target,
            "flagged": list(self.flagged),
            "score": round(self.score, 3),
            "p_value": self.p_value,
            "z": round(self.z, 3),
            "best_rate": round(self.best_rate, 4),
            "evidence": list(self.evidence),
            "alpha": self.alpha,
            "min_success": self.min_success,
            "n_candidates": self.n_candidates,
            "n_null": self.n_null,
            "reason": self.reason,
            "per_class": [c.describe() for c in self.per_class],
            **self.settings,
        }

    def to_verdict(self, num_classes: int | None = None, seconds: float = 0.0) -> Verdict:
        """As the :class:`~backdoorlab.defenses.base.Verdict` every detection defence returns (per-class
        score ``−log10 p_adjusted``, NaN for classes not audited), for tables that compare defences."""
        n = num_classes if num_classes is not None else 1 + max((c.cls for c in self.per_class), default=-1)
        scores = torch.full((n,), float("nan"))
        for c in self.per_class:
            if c.cls < n:
                scores[c.cls] = c.score
        return Verdict(self.flagged, scores, self.describe(), seconds)


def _score(p: float) -> float:
    """``−log10 p``, never below 0: p ≤ 1 makes it ≥ 0 anyway, but p = 1 gives −0.0, which prints "-0.00"."""
    return max(0.0, -math.log10(max(p, 1e-300)))


def _logit(rate: torch.Tensor, trials: torch.Tensor) -> torch.Tensor:
    lo = 0.5 / trials.clamp_min(1)
    r = torch.minimum(torch.maximum(rate, lo), 1 - lo)
    return torch.log(r) - torch.log1p(-r)


def _sidak(p: torch.Tensor, k: int) -> torch.Tensor:
    """``1 − (1 − p)^k`` computed stably in float64."""
    p = p.double().clamp(0, 1)
    return (-torch.expm1(k * torch.log1p(-p.clamp(max=1 - 1e-16)))).clamp(0, 1)


def _trials(t: object, k: int, c: int, name: str) -> torch.Tensor:
    if t is None:
        return torch.full((k, c), 100.0)
    t = torch.as_tensor(t, dtype=torch.float32)
    if t.shape == (c,):
        return t[None].expand(k, c)
    if t.shape != (k, c):
        raise BackdoorLabError(
            f"{name} must hold one count per class ({c}) or per entry ({k}×{c}), got {tuple(t.shape)}"
        )
    return t


def decide(
    success: torch.Tensor,
    null: torch.Tensor,
    *,
    trials: torch.Tensor | Sequence[float] | None = None,
    null_trials: torch.Tensor | Sequence[float] | None = None,
    classes: Sequence[int] | None = None,
    alpha: float = DEFAULT_ALPHA,
    min_success: float = DEFAULT_MIN_SUCCESS,
    reference: Sequence[torch.Tensor | float] | torch.Tensor | None = None,
    n_evidence: int = 3,
) -> AuditVerdict:
    """The verdict from the candidates' success matrix and the null's (module docstring for the statistics).

    ``success`` K×C and ``null`` M×C hold success rates toward each class (rows: triggers); ``trials`` /
    ``null_trials`` the number of patched images behind each rate (C values or one per entry; default 100);
    ``classes`` the classes that may be the target (default all); ``reference`` the best per-class rates an
    audit reached on known-clean models (any shape; pooled). Raises :class:`BackdoorLabError` on malformed
    input.
    """
    for name, t in (("success", success), ("null", null)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2 or not t.is_floating_point():
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise BackdoorLabError(f"{name} must be a float K×classes matrix of success rates, got {shape}")
    if success.shape[1] != null.shape[1]:
        raise BackdoorLabError(
            f"success has {success.shape[1]} classes but null has {null.shape[1]}; measure both the same way"
        )
    K, C = success.shape
    if K == 0:
        raise BackdoorLabError("success has no candidate triggers: the audit built none to judge")
    if len(null) < 2:
        raise BackdoorLabError(f"null needs at least 2 random patches to estimate a spread, got {len(null)}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise BackdoorLabError(f"alpha must lie in (0, 1) (e.g. 0.01), got {alpha!r}")
    if isinstance(min_success, bool) or not isinstance(min_success, (int, float)) or not 0 < min_success < 1:
        raise BackdoorLabError(
            f"min_success must be a success rate in (0, 1) (e.g. 0.5), got {min_success!r}"
        )
    n_s = _trials(trials, K, C, "trials")
    n_q = _trials(null_trials, len(null), C, "null_trials")
    cls = list(range(C)) if classes is None else sorted({int(c) for c in classes})
    if not cls or any(not 0 <= c < C for c in cls):
        raise BackdoorLabError(f"classes must be class indices in 0..{C - 1}, got {classes!r}")
    ref = None
    if reference is not None:
        vals = [torch.as_tensor(r, dtype=torch.float32).flatten() for r in reference]
        ref = torch.cat(vals) if vals else torch.empty(0)
        ref = ref[~ref.isnan()]
        if len(ref) == 0:
            ref = None

    s = success.detach().float().cpu()
    q = null.detach().float().cpu()
    ls, lq = _logit(s, n_s), _logit(q, n_q)
    med = lq.median(0).values  # C
    spread = max(1.4826 * float((lq - med).abs().median()), MIN_SPREAD)
    best, best_idx = s.max(0)
    n_best = n_s.gather(0, best_idx[None])[0]
    z_s = (ls.gather(0, best_idx[None])[0] - med) / spread
    z_w = (best - min_success) / math.sqrt(min_success * (1 - min_success)) * n_best.sqrt()
    z = torch.minimum(z_s, z_w).double()
    logp = torch.special.log_ndtr(-z)  # log Φ(−z) of the weaker of the two tests
    p = logp.exp()
    tests = K * len(cls)
    p_adj = torch.where(p < 1e-12, (logp + math.log(tests)).exp(), _sidak(p, tests)).clamp(max=1.0)
    emp = (1 + (q >= best[None]).sum(0).float()) / (1 + len(q))
    order = s.argsort(0, descending=True)
    qmed = q.median(0).values

    per_class = []
    rmax = None if ref is None else float(ref.max())
    for c in cls:
        ok = bool(p_adj[c] < alpha)
        if rmax is not None:
            ok = ok and float(best[c]) > rmax
        per_class.append(
            ClassEvidence(
                cls=c,
                best_rate=float(best[c]),
                best_candidate=int(best_idx[c]),
                top_candidates=tuple(int(i) for i in order[: max(1, n_evidence), c]),
                null_mean=float(q[:, c].mean()),
                null_median=float(qmed[c]),
                null_max=float(q[:, c].max()),
                z=float(z_s[c]),
                z_works=float(z_w[c]),
                p_value=float(p[c]),
                p_adjusted=float(p_adj[c]),
                empirical_p=float(emp[c]),
                reference_max=rmax,
                flagged=ok,
            )
        )
    flagged = tuple(c.cls for c in per_class if c.flagged)
    pool = [c for c in per_class if c.flagged] or per_class
    top = max(pool, key=lambda c: (c.score, c.best_rate))
    poisoned = bool(flagged)
    return AuditVerdict(
        poisoned=poisoned,
        target=top.cls,
        flagged=flagged,
        score=top.score,
        p_value=top.p_adjusted,
        z=top.z,
        best_rate=top.best_rate,
        evidence=top.top_candidates,
        per_class=tuple(per_class),
        alpha=float(alpha),
        min_success=float(min_success),
        n_candidates=K,
        n_null=len(q),
        reason=_reason(top, poisoned, alpha, min_success),
        settings={"null_spread_logit": round(spread, 4), "reference_values": 0 if ref is None else len(ref)},
    )


def _reason(c: ClassEvidence, poisoned: bool, alpha: float, min_success: float) -> str:
    head = (
        f"best alternative trigger toward class {c.cls} succeeds on {c.best_rate:.1%} of other-class images "
        f"(random patches: median {c.null_median:.1%}, max {c.null_max:.1%}; adjusted p = {c.p_adjusted:.2g})"
    )
    if poisoned:
        return f"poisoned: {head}"
    why = []
    if c.z_works <= c.z and c.p_adjusted >= alpha:
        why.append(f"not significantly above the {min_success:.0%} success that makes a working trigger")
    elif c.p_adjusted >= alpha:
        why.append("not significantly better than random patches")
    if c.reference_max is not None and c.best_rate <= c.reference_max:
        why.append(f"not above the {c.reference_max:.1%} reached on clean reference models")
    return f"no backdoor found: {head}; " + "; ".join(why or ["no class qualified"])


__all__ = ["DEFAULT_ALPHA", "DEFAULT_MIN_SUCCESS", "AuditVerdict", "ClassEvidence", "decide"]
