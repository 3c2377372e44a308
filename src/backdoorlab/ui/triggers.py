"""The trigger lab of the web tool (Sun et al. §3.3 and App. D, Fig. 20b): build, measure, keep and export triggers.

A user builds an alternative trigger by hand from what the adversarial examples of the robustified model show:

- a **colour patch**: one to four colours (picked from a pixel of an adversarial image or with a colour picker)
  in a shape (square, circle, diamond, cross, triangle) of a chosen size — the paper's "Color Selector" and
  "Shape Selector"; several colours are laid out in blocks as the authors' three-colour ImageNet triggers
  (:func:`backdoorlab.audit.alt_triggers.color_pattern`);
- a **cropped patch**: a square box dragged on an adversarial image (:func:`~backdoorlab.audit.alt_triggers.crop_trigger`).

The trigger is pasted on held-out clean test images — at a uniformly random place per image, repetition r drawn
with seed r (REFERENCE_NOTES "000"), or at a chosen ``(row, col)`` — and its success rate toward *every* class is
measured at once: the share of patched images whose true label is not t that the model classifies as t (§3).
Square patches are measured by :func:`backdoorlab.audit.alt_triggers.measure` itself; shaped patches (a mask with
holes) by :func:`masked_success`, the same computation with alpha-blended stamping (identical for a full mask).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save as st_save
from torch import nn

from backdoorlab.audit.alt_triggers import (
    color_pattern,
    crop_trigger,
    measure,
    random_locations,
)
from backdoorlab.errors import BackdoorLabError, unknown_name
from backdoorlab.triggers import Trigger, stamp

SHAPES = ("square", "circle", "diamond", "cross", "triangle")
LAYOUTS = ("blocks", "stripes")
PLACEMENTS = ("random", "fixed")
TRIGGER_ID = r"^[0-9a-f]{12}$"
LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601-2, as PIL / torchvision grey conversion


# -- building -------------------------------------------------------------------------------------------------
def shape_mask(shape: str, size: int) -> torch.Tensor:
    """A 1×size×size {0, 1} mask of ``shape`` filling the box (the centre pixel is always on)."""
    if shape not in SHAPES:
        raise unknown_name("shape", str(shape), SHAPES)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise BackdoorLabError(f"size must be a patch side in pixels ≥ 1, got {size!r}")
    ar = torch.arange(size, dtype=torch.float32)
    c = (size - 1) / 2
    r, q = ar[:, None] - c, ar[None, :] - c  # row / column offsets from the centre
    half = size / 2
    if shape == "square":
        m = torch.ones(size, size, dtype=torch.bool)
    elif shape == "circle":
        m = r**2 + q**2 <= half**2
    elif shape == "diamond":
        m = r.abs() + q.abs() <= half
    elif shape == "cross":
        arm = max(size / 6, 0.5)
        m = (r.abs() <= arm) | (q.abs() <= arm)
    else:  # triangle pointing up: row i spans a width growing linearly to the full base
        width = (ar[:, None] + 1) / size * half
        m = q.abs() <= width
    m = m.clone()
    m[size // 2, size // 2] = True
    return m.float()[None]


def to_channels(colors: torch.Tensor, channels: int) -> torch.Tensor:
    """k×3 RGB colours for images with ``channels`` channels (1: luma of ITU-R 601-2; 3: unchanged)."""
    if channels == 3:
        return colors
    if channels == 1:
        return (colors @ LUMA)[:, None].clamp(0, 1)
    raise BackdoorLabError(f"colour triggers need 1- or 3-channel images, got {channels} channels")


def parse_hex(colors: Sequence[str]) -> torch.Tensor:
    """``["#rrggbb", …]`` as a k×3 float tensor in [0, 1] (the page's colour inputs)."""
    out = []
    for i, c in enumerate(colors):
        if not isinstance(c, str) or not re.fullmatch(r"#[0-9a-fA-F]{6}", c):
            raise BackdoorLabError(f"colors[{i}]: {c!r} is not a colour; write it as #rrggbb")
        out.append([int(c[j : j + 2], 16) / 255 for j in (1, 3, 5)])
    if not out:
        raise BackdoorLabError("colors: give at least one colour (#rrggbb)")
    return torch.tensor(out, dtype=torch.float32)


def color_shape_trigger(
    colors: torch.Tensor, shape: str, size: int, channels: int, layout: str = "blocks"
) -> Trigger:
    """A colour patch (Sun et al. §3.3 "color patch") of ``colors`` (k×3 RGB in [0, 1]) cut to ``shape``."""
    if layout not in LAYOUTS:
        raise unknown_name("layout", str(layout), LAYOUTS)
    mask = shape_mask(shape, size)
    pattern = color_pattern(to_channels(colors, channels), size, layout)
    spec = {
        "kind": "ui-color",
        "colors": [[round(float(v), 4) for v in c] for c in colors],
        "shape": shape,
        "size": size,
        "layout": layout,
    }
    return Trigger(pattern, mask, "blend", "random", spec)


def crop_patch_trigger(image: torch.Tensor, row: int, col: int, size: int) -> Trigger:
    """A ``size×size`` crop of one (adversarial) image at ``(row, col)`` (Sun et al. §3.3 "cropped patch")."""
    _, h, w = image.shape
    if size < 1 or size > min(h, w):
        raise BackdoorLabError(f"size: a crop must be 1..{min(h, w)} pixels on these {h}×{w} images")
    if not (0 <= row <= h - size and 0 <= col <= w - size):
        raise BackdoorLabError(
            f"row/col: a {size}×{size} crop at (row {row}, col {col}) leaves the {h}×{w} image; "
            f"the top-left corner must lie in rows 0..{h - size}, cols 0..{w - size}"
        )
    return crop_trigger(image, (row, col), size)


# -- measuring ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TriggerResult:
    """Success rates toward every class, the trials behind them and how they were measured."""

    success: torch.Tensor  # classes
    trials: torch.Tensor  # classes
    placement: str
    reps: int
    n_images: int
    engine: str  # "measure" (alt_triggers.measure) or "masked" (masked_success)

    def to_json(self, classes: Sequence[str]) -> dict[str, Any]:
        best = int(self.success.argmax())
        return {
            "success": [round(float(v), 4) for v in self.success],
            "trials": [int(v) for v in self.trials],
            "best_class": best,
            "best_name": str(classes[best]) if best < len(classes) else str(best),
            "best_rate": round(float(self.success[best]), 4),
            "placement": self.placement,
            "reps": self.reps,
            "n_images": self.n_images,
            "engine": self.engine,
        }


def _rates(pred: torch.Tensor, y: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """pred R×N → (success[t], trials[t]) over (r, i) with y_i ≠ t (as alt_triggers.measure)."""
    onehot = F.one_hot(pred, classes).sum(0).float()  # N×classes
    other = (y[:, None] != torch.arange(classes, device=y.device)[None]).float()
    hits = (onehot * other).sum(0)
    trials = other.sum(0) * pred.shape[0]
    return (hits / trials.clamp_min(1)).cpu(), trials.cpu()


@torch.no_grad()
def masked_success(
    model: nn.Module,
    trigger: Trigger,
    x: torch.Tensor,
    y: torch.Tensor,
    locations: torch.Tensor,
    num_classes: int,
    batch_size: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Success rates of a (masked) trigger stamped at ``locations`` (R×N×2 top-left corners) on ``x``.

    All R·N patched images are built by one batched :func:`~backdoorlab.triggers.stamp` and classified in
    batches of ``batch_size``. Returns ``(success[classes], trials[classes])``.
    """
    r, n = locations.shape[:2]
    imgs = x.repeat(r, 1, 1, 1)
    patched = stamp(imgs, trigger.to(x.device), locations.reshape(-1, 2))
    was = model.training
    model.eval()
    try:
        pred = torch.cat(
            [model(patched[i : i + batch_size]).argmax(1) for i in range(0, len(patched), batch_size)]
        )
    finally:
        model.train(was)
    return _rates(pred.view(r, n), y.to(pred.device), num_classes)


def measure_trigger(
    model: nn.Module,
    trigger: Trigger,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    placement: str = "random",
    at: Sequence[int] | None = None,
    reps: int = 10,
) -> TriggerResult:
    """Success rate of ``trigger`` toward every class on held-out clean ``x`` with labels ``y`` (Sun et al. §4).

    ``placement="random"``: ``reps`` repetitions, repetition r pastes at locations drawn with seed r (the same
    locations as :func:`~backdoorlab.audit.alt_triggers.measure` uses for the audit's candidates, so rates are
    comparable); ``"fixed"``: at ``at = (row, col)`` on every image.
    """
    if placement not in PLACEMENTS:
        raise unknown_name("placement", str(placement), PLACEMENTS)
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise BackdoorLabError(f"reps must be an integer ≥ 1 (random placements per image), got {reps!r}")
    s = trigger.size[0]
    H, W = x.shape[-2:]
    if trigger.size[0] != trigger.size[1]:
        raise BackdoorLabError(f"triggers are square here, got {trigger.size}")
    if s > min(H, W):
        raise BackdoorLabError(f"size: the {s}×{s} trigger is larger than the {H}×{W} images")
    if placement == "fixed":
        if at is None or len(at) != 2:
            raise BackdoorLabError("at: a fixed placement needs (row, col) of the trigger's top-left corner")
        r0, c0 = int(at[0]), int(at[1])
        if not (0 <= r0 <= H - s and 0 <= c0 <= W - s):
            raise BackdoorLabError(
                f"at: (row {r0}, col {c0}) puts the {s}×{s} trigger outside the {H}×{W} images; "
                f"use rows 0..{H - s}, cols 0..{W - s}"
            )
    full = bool((trigger.mask >= 1).all())
    if full:
        patch = trigger.pattern.expand(x.shape[1], s, s)[None]
        if placement == "random":
            m = measure(model, patch, x, y, num_classes=num_classes, reps=reps, placement="random")
            return TriggerResult(m.random[0], m.trials, placement, reps, len(x), "measure")
        m = measure(
            model, patch, x, y, num_classes=num_classes, placement="found", regions=torch.tensor([[r0, c0]])
        )
        return TriggerResult(m.random[0], m.trials, placement, 1, len(x), "measure")
    if placement == "random":
        locs = random_locations(len(x), (H, W), s, reps)
    else:
        locs = torch.tensor([[r0, c0]]).expand(1, len(x), 2)
    success, trials = masked_success(model, trigger, x, y, locs, num_classes)
    return TriggerResult(success, trials, placement, int(locs.shape[0]), len(x), "masked")


@torch.no_grad()
def patched_examples(
    model: nn.Module,
    trigger: Trigger,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    target: int,
    placement: str = "random",
    at: Sequence[int] | None = None,
    n: int = 8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to ``n`` held-out images of other classes than ``target`` with the trigger pasted (repetition 0's
    random places, or ``at``): ``(patched, labels, predictions on clean, predictions on patched)``."""
    keep = (y != target).nonzero().squeeze(1)[:n]
    if len(keep) == 0:
        keep = torch.arange(min(n, len(x)))
    xs, ys = x[keep], y[keep]
    s = trigger.size[0]
    if placement == "fixed" and at is not None:
        locs = torch.tensor([[int(at[0]), int(at[1])]]).expand(len(xs), 2)
    else:
        locs = random_locations(len(x), tuple(x.shape[-2:]), s, 1)[0][keep]
    patched = stamp(xs, trigger.to(xs.device), locs)
    was = model.training
    model.eval()
    try:
        before, after = model(xs).argmax(1).cpu(), model(patched).argmax(1).cpu()
    finally:
        model.train(was)
    return patched.cpu(), ys.cpu(), before, after


# -- keeping and exporting ------------------------------------------------------------------------------------
@dataclass
class KeptTrigger:
    """A trigger the user kept and named, with what it was measured against."""

    id: str
    name: str
    trigger: Trigger
    spec: dict[str, Any]
    model_id: str
    attack_id: str
    result: dict[str, Any]
    created: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "spec": self.spec,
            "trigger": self.trigger.describe(),
            "model_id": self.model_id,
            "attack_id": self.attack_id,
            "measured": self.result,
            "created": self.created,
        }


class TriggerShelf:
    """The triggers kept in this session (in memory, newest last, at most ``size``)."""

    def __init__(self, size: int = 200) -> None:
        self._items: OrderedDict[str, KeptTrigger] = OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    def add(self, **kw: Any) -> KeptTrigger:
        kept = KeptTrigger(id=secrets.token_hex(6), **kw)
        with self._lock:
            self._items[kept.id] = kept
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return kept

    def get(self, trigger_id: str) -> KeptTrigger:
        with self._lock:
            kept = self._items.get(trigger_id)
        if kept is None:
            raise KeyError(trigger_id)
        return kept

    def list(self) -> list[KeptTrigger]:
        with self._lock:
            return list(self._items.values())

    def delete(self, trigger_id: str) -> None:
        with self._lock:
            if self._items.pop(trigger_id, None) is None:
                raise KeyError(trigger_id)


def export_safetensors(kept: KeptTrigger) -> bytes:
    """``pattern`` (C×s×s) and ``mask`` (1×s×s) as safetensors, the JSON description in the metadata."""
    t = kept.trigger
    meta = {"backdoorlab-trigger": json.dumps(kept.describe(), default=str)}
    return st_save(
        {"pattern": t.pattern.contiguous().float(), "mask": t.mask.contiguous().float()}, metadata=meta
    )


def slug(name: str) -> str:
    """A file-name-safe version of a trigger name (for Content-Disposition)."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s[:40] or "trigger"


__all__ = [
    "LAYOUTS",
    "PLACEMENTS",
    "SHAPES",
    "TRIGGER_ID",
    "KeptTrigger",
    "TriggerResult",
    "TriggerShelf",
    "color_shape_trigger",
    "crop_patch_trigger",
    "export_safetensors",
    "masked_success",
    "measure_trigger",
    "parse_hex",
    "patched_examples",
    "shape_mask",
    "slug",
]
