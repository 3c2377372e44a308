"""Inspecting a model in the web tool (Sun et al. App. D, Fig. 20a): adversarial examples and automatic candidates.

An *attack session* is one run of the first half of the tool: probe images of the chosen classes are attacked
with the model's own predictions as labels (§3.2: untargeted, "it will become obvious which is the poisoned
class") by one of

- ``"smoothadv"``: SmoothAdv on Denoised Smoothing (§3.1, Eq. 4) — a DnCNN denoiser for the data set and σ is
  trained once on its train split and cached in the workspace, exactly as the audit does
  (:func:`backdoorlab.audit.pipeline.denoiser_for`);
- ``"smoothing"``: SmoothAdv on the smoothed classifier without a denoiser (the paper's "Smoothing" baseline,
  Fig. 6) — the quick option, no denoiser to train;
- ``"basic"``: the same L2 attack on the bare model ("Basic Adv", Fig. 6; the control group of Table 2).

Each adversarial example is shown with the class the base model now predicts (Fig. 20a: "below each image is
the class that the adversarial image is predicted"). Held-out clean images, disjoint from the probe images
(:func:`backdoorlab.audit.pipeline.select_images`), are kept in the session to measure triggers on. The
session also runs the audit's automatic candidates (§3.3; :func:`~backdoorlab.audit.alt_triggers.propose`
and :func:`~backdoorlab.audit.alt_triggers.measure`) so that hand-made triggers can be compared with them.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from backdoorlab.audit.alt_triggers import Candidate, default_patch_size, measure, propose
from backdoorlab.audit.pipeline import (
    DEFAULT_M,
    DEFAULT_SIGMA,
    PAPER_EPS,
    check_model_for_data,
    denoiser_for,
    resolve_classes,
    select_images,
    smoothed_labels,
)
from backdoorlab.audit.smoothadv import PAPER_PIXELS, basic_adv, scale_eps, smoothadv, smoothing_adv
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError
from backdoorlab.triggers import Trigger
from backdoorlab.ui.images import data_url
from backdoorlab.ui.jobs import Job

METHODS = {
    "smoothadv": "SmoothAdv on Denoised Smoothing (§3.1, Eq. 4)",
    "smoothing": "SmoothAdv, smoothing without a denoiser (quick; Fig. 6 'Smoothing')",
    "basic": "Basic Adv: PGD L2 on the bare model (Fig. 6)",
}
ATTACK_ID = r"^[0-9a-f]{16}$"


def default_eps(shape: tuple[int, int, int]) -> float:
    """The paper's ε = 60 on 3×224×224 scaled to ``shape`` (:func:`~backdoorlab.audit.smoothadv.scale_eps`)."""
    c, h, w = shape
    return round(scale_eps(PAPER_EPS, PAPER_PIXELS, c * h * w), 3)


def defaults(shape: tuple[int, int, int]) -> dict[str, Any]:
    """Form defaults for a data set of this shape (the audit's, §A.2 sized down for a CPU)."""
    return {
        "eps": default_eps(shape),
        "sigma": DEFAULT_SIGMA,
        "steps": 100,
        "m": DEFAULT_M,
        "n_images": 10,
        "n_eval": 50,
        "patch_size": default_patch_size(shape[1:]),
    }


@dataclass
class AttackSession:
    """One model attacked on one data set: probe images, adversarial examples, held-out images, candidates."""

    id: str
    model_id: str
    dataset: str
    classes: tuple[str, ...]
    method: str
    settings: dict[str, Any]
    x: torch.Tensor
    y: torch.Tensor
    y_model: torch.Tensor
    adv: torch.Tensor
    adv_pred: torch.Tensor
    adv_smoothed: torch.Tensor | None
    xe: torch.Tensor
    ye: torch.Tensor
    candidates: list[Candidate] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict[str, Any]:
        """What the page shows: every probe image, its adversarial example and the predicted classes."""
        items = []
        for i in range(len(self.x)):
            items.append(
                {
                    "index": i,
                    "clean": data_url(self.x[i]),
                    "adversarial": data_url(self.adv[i]),
                    "label": int(self.y[i]),
                    "pred_clean": int(self.y_model[i]),
                    "pred_adv": int(self.adv_pred[i]),
                    "pred_smoothed": None if self.adv_smoothed is None else int(self.adv_smoothed[i]),
                    "l2": round(float((self.adv[i] - self.x[i]).norm()), 3),
                }
            )
        counts = torch.bincount(self.adv_pred, minlength=self.num_classes)
        return {
            "id": self.id,
            "model_id": self.model_id,
            "dataset": self.dataset,
            "classes": list(self.classes),
            "method": self.method,
            "method_name": METHODS[self.method],
            "settings": self.settings,
            "shape": list(self.x.shape[1:]),
            "images": items,
            "moved_to": [int(c) for c in counts],
            "held_out": len(self.xe),
        }


class SessionStore:
    """Attack sessions kept in memory (the newest ``size``)."""

    def __init__(self, size: int = 16) -> None:
        self._items: OrderedDict[str, AttackSession] = OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    def add(self, session: AttackSession) -> None:
        with self._lock:
            self._items[session.id] = session
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, attack_id: str) -> AttackSession:
        with self._lock:
            s = self._items.get(attack_id)
        if s is None:
            raise KeyError(attack_id)
        return s


def prepare(
    model: nn.Module, test: ImageTensors, classes: list[int] | None, n_images: int, n_eval: int, seed: int
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Check the model against the data and pick probe / held-out indices (named errors, before any job)."""
    check_model_for_data(model, test)
    cls = resolve_classes(classes, test.classes)
    probe, held = select_images(test, cls, n_images, n_eval, seed)
    return cls, probe, held


def run_attack(
    job: Job,
    model: nn.Module,
    model_id: str,
    dataset: str,
    train: ImageTensors,
    test: ImageTensors,
    *,
    method: str,
    eps: float | None,
    sigma: float,
    steps: int,
    m: int,
    classes: list[int] | None,
    n_images: int,
    n_eval: int,
    seed: int,
    workspace: Path,
    denoiser_settings: dict[str, Any] | None = None,
) -> AttackSession:
    """The background half of ``POST /api/attacks``: denoiser (cached), adversarial examples, predictions."""
    if method not in METHODS:
        raise BackdoorLabError(f"method: must be one of {', '.join(METHODS)}, got {method!r}")
    cls, probe, held = prepare(model, test, classes, n_images, n_eval, seed)
    eps = default_eps(test.shape) if eps is None else float(eps)
    model.eval()
    x = test.float01(probe)
    y = test.labels[probe].cpu()
    xe, ye = test.float01(held), test.labels[held].cpu()
    with torch.no_grad():
        y_model = model(x).argmax(1)
    settings: dict[str, Any] = {
        "eps": eps,
        "eps_paper_scale": round(eps * (PAPER_PIXELS / x[0].numel()) ** 0.5, 2),
        "steps": steps,
        "seed": seed,
        "classes": cls,
        "n_images": n_images,
        "n_eval": n_eval,
    }
    smoothed = None

    def stage(name: str):
        job.set_stage(name)
        return lambda s, t, info: job.progress(s, t, {**info, "stage": name})

    if method == "basic":
        adv = basic_adv(model, x, y_model, eps, steps=steps, gen=seed, progress=stage("basic-adv"))
    else:
        settings.update(sigma=sigma, m=m)
        den = None
        if method == "smoothadv":
            den, info = denoiser_for(
                None,
                train,
                sigma,
                dict(denoiser_settings or {}),
                seed,
                workspace,
                torch.device("cpu"),
                stage("denoiser (trained once, then cached)"),
            )
            settings["denoiser"] = info
            adv = smoothadv(
                model,
                x,
                y_model,
                eps,
                sigma=sigma,
                denoiser=den,
                m=m,
                steps=steps,
                gen=seed,
                progress=stage("smoothadv"),
            )
        else:
            adv = smoothing_adv(
                model, x, y_model, eps, sigma=sigma, m=m, steps=steps, gen=seed, progress=stage("smoothing")
            )
        from backdoorlab.audit.denoiser import denoised

        net = model if den is None else denoised(model, den)
        smoothed = smoothed_labels(net, adv, sigma, 32, seed + 1)
    with torch.no_grad():
        adv_pred = model(adv).argmax(1).cpu()
    return AttackSession(
        id=secrets.token_hex(8),
        model_id=model_id,
        dataset=dataset,
        classes=tuple(test.classes),
        method=method,
        settings=settings,
        x=x.cpu(),
        y=y,
        y_model=y_model.cpu(),
        adv=adv.detach().cpu(),
        adv_pred=adv_pred,
        adv_smoothed=smoothed,
        xe=xe.cpu(),
        ye=ye,
    )


def run_candidates(
    job: Job,
    model: nn.Module,
    session: AttackSession,
    *,
    size: int,
    n_colors: int,
    reps: int,
    kept: list[tuple[str, str, Trigger, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The audit's automatic alternative triggers for this session (§3.3), measured like hand-made ones.

    Candidates come from the regions where each adversarial example's perturbation concentrates
    (:func:`~backdoorlab.audit.alt_triggers.propose`); every candidate is pasted on the held-out images at
    the same random places (repetition r uses seed r) and at the place it was found, in one batched
    :func:`~backdoorlab.audit.alt_triggers.measure`; its rate is the better of the two placements, as in the
    audit. The user's kept triggers (``kept``: ``(id, name, trigger, spec)``) are measured on the same images
    where they were kept to be pasted (the same random places, or their chosen one), for comparison.
    """
    job.set_stage("propose")
    cands = propose(session.x, session.adv, size, n_colors=n_colors, origin=session.adv_pred)
    if not cands:
        raise BackdoorLabError(
            "the adversarial examples equal the clean images, so no candidate can be built; raise eps or steps"
        )
    session.candidates = cands
    job.set_stage("measure")
    meas = measure(
        model,
        cands,
        session.xe,
        session.ye,
        num_classes=session.num_classes,
        reps=reps,
        placement="both",
        progress=job.progress,
    )
    rows = []
    best_rate, best_cls = meas.success.max(1)
    for i, c in enumerate(cands):
        rows.append(
            {
                "index": i,
                "kind": c.kind,
                "source": c.source,
                "region": list(c.region) if c.region else None,
                "origin": c.origin,
                "pattern": data_url(c.pattern),
                "success": [round(float(v), 4) for v in meas.success[i]],
                "best_class": int(best_cls[i]),
                "best_rate": round(float(best_rate[i]), 4),
                "found_better": bool(meas.placement[i, int(best_cls[i])]),
            }
        )
    rows.sort(key=lambda r: -r["best_rate"])
    compare = []
    if kept:
        from backdoorlab.ui.triggers import measure_trigger

        job.set_stage("measure kept triggers")
        for tid, name, trig, spec in kept:
            placement, at = spec.get("placement", "random"), spec.get("at")
            res = measure_trigger(
                model,
                trig,
                session.xe,
                session.ye,
                session.num_classes,
                placement=placement,
                at=at,
                reps=reps,
            )
            compare.append(
                {
                    "id": tid,
                    "name": name,
                    "pattern": data_url(trig.pattern.expand(session.x.shape[1], *trig.size)),
                    "success": [round(float(v), 4) for v in res.success],
                    "best_class": int(res.success.argmax()),
                    "best_rate": round(float(res.success.max()), 4),
                    "placement": placement if placement == "random" else f"at ({at[0]}, {at[1]})",
                }
            )
    return {
        "attack_id": session.id,
        "size": size,
        "reps": reps,
        "classes": list(session.classes),
        "candidates": rows,
        "kept": compare,
    }


__all__ = [
    "ATTACK_ID",
    "METHODS",
    "AttackSession",
    "SessionStore",
    "default_eps",
    "defaults",
    "prepare",
    "run_attack",
    "run_candidates",
]
