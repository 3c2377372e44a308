"""How sensitive a backdoor is to its test-time trigger (Li et al. 2021, Sec. 3.2, Figs. 4–5).

- :func:`position_heatmap` moves the unchanged trigger over the image and measures the attack success rate
  at every position (Fig. 4: ASR falls from 100 % to below 50 % within 2–3 pixels).
- :func:`value_sweep` keeps the trigger where it was trained and replaces its non-zero pattern value
  (Fig. 5: Li's 0/128 trigger with 128 swept over 0..255).

ASR follows Li's Eq. 3: only test images whose true label is not the target count. Positions here are the
top-left corner of the trigger patch (Li's Definition 2 names the bottom-right pixel of the covering box;
for an ``h×w`` patch that is the top-left corner plus ``(h − 1, w − 1)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import torch
from matplotlib.figure import Figure

from backdoorlab.data.tensors import ImageTensors, make_generator
from backdoorlab.errors import BackdoorLabError
from backdoorlab.triggers import Trigger, stamp

Progress = Callable[[int, int, dict], None]


@dataclass(frozen=True, eq=False)
class Heatmap:
    """ASR per trigger position: ``asr[i, j]`` has the patch's top-left corner at ``(rows[i], cols[j])``.

    ``trained_at`` is the (top-left) position the trigger had in training, when its placement is fixed.
    """

    asr: torch.Tensor  # Hpos×Wpos float, in [0, 1]
    rows: torch.Tensor  # Hpos int64
    cols: torch.Tensor  # Wpos int64
    trained_at: tuple[int, int] | None = None

    def at(self, row: int, col: int) -> float:
        """The ASR with the patch's top-left corner at ``(row, col)`` (must be a grid position)."""
        i = (self.rows == row).nonzero()
        j = (self.cols == col).nonzero()
        if len(i) == 0 or len(j) == 0:
            raise BackdoorLabError(f"position ({row}, {col}) is not on the heat-map grid")
        return float(self.asr[int(i[0, 0]), int(j[0, 0])])


def _victims(data: ImageTensors, target: int, max_images: int | None) -> torch.Tensor:
    """Indices (CPU int64) of the images that count for ASR (label ≠ target), at most ``max_images``."""
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < data.num_classes:
        raise BackdoorLabError(f"target must be a class index in 0..{data.num_classes - 1}, got {target!r}")
    if max_images is not None and max_images < 1:
        raise BackdoorLabError(f"max_images must be ≥ 1 (or None for all), got {max_images}")
    idx = (data.labels.cpu() != target).nonzero().squeeze(1)
    if len(idx) == 0:
        raise BackdoorLabError(f"no test image has a label other than the target {target}; ASR is undefined")
    return idx if max_images is None else idx[:max_images]


def _check_trigger(trigger: object) -> Trigger:
    if not isinstance(trigger, Trigger):
        raise BackdoorLabError(
            f"sensitivity analysis needs a single Trigger (pattern + mask), got {type(trigger).__name__}"
        )
    return trigger


def _device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return torch.device("cpu") if p is None else p.device


@torch.no_grad()
def position_heatmap(
    model: torch.nn.Module,
    data: ImageTensors,
    trigger: Trigger,
    target: int,
    stride: int = 1,
    max_images: int | None = None,
    batch_size: int = 1024,
    progress: Progress | None = None,
) -> Heatmap:
    """ASR of ``trigger`` stamped at every position of a grid with ``stride`` (Li Sec. 3.2, Fig. 4).

    The (images × positions) pairs are stamped ``batch_size`` at a time with per-sample locations, so
    one forward pass covers many positions. ``max_images`` caps the number of (non-target) test images
    used; ``progress(done, total, info)`` is called after every batch.
    """
    trigger = _check_trigger(trigger)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise BackdoorLabError(f"heat-map stride must be an integer ≥ 1 pixels, got {stride!r}")
    if batch_size < 1:
        raise BackdoorLabError(f"batch_size must be ≥ 1, got {batch_size}")
    _, H, W = data.shape
    h, w = trigger.size
    if h > H or w > W:
        raise BackdoorLabError(f"trigger of size {h}×{w} is larger than the {H}×{W} images")
    rows = torch.arange(0, H - h + 1, stride)
    cols = torch.arange(0, W - w + 1, stride)
    grid = torch.cartesian_prod(rows, cols)  # P×2, row-major over (rows, cols)
    victims = _victims(data, target, max_images)
    n_img, n_pos = len(victims), len(grid)
    total = n_img * n_pos
    dev = _device(model)
    trig = trigger.to(dev)
    hits = torch.zeros(n_pos, dtype=torch.long, device=dev)
    was_training = model.training
    model.eval()
    n_batches = (total + batch_size - 1) // batch_size
    try:
        for b, start in enumerate(range(0, total, batch_size)):
            pair = torch.arange(start, min(start + batch_size, total))
            img, pos = pair // n_pos, pair % n_pos
            x = data.float01(victims[img].to(data.device), device=dev)
            x = stamp(x, trig, locations=grid[pos])
            fired = model(x).argmax(1) == target
            hits.index_add_(0, pos.to(dev), fired.long())
            if progress is not None:
                progress(b + 1, n_batches, {"stage": "position heat-map"})
    finally:
        model.train(was_training)
    asr = (hits.cpu().double() / n_img).float().reshape(len(rows), len(cols))
    trained_at = None
    if trigger.placement.is_fixed:
        loc = trigger.locations(1, (H, W))
        trained_at = (int(loc[0, 0]), int(loc[0, 1]))
    return Heatmap(asr=asr, rows=rows, cols=cols, trained_at=trained_at)


def with_value(trigger: Trigger, value: float) -> Trigger:
    """``trigger`` with every non-zero pattern entry set to ``value`` (in [0, 1]); zeros stay zero (Fig. 5).

    For an additive trigger the sign of each entry is kept.
    """
    p = trigger.pattern.detach()
    new = torch.where(p != 0, torch.sign(p) * float(value), torch.zeros_like(p))
    spec = {**dict(trigger.spec or {"kind": "custom"}), "value": float(value)}
    return replace(trigger, pattern=new, spec=spec)


@torch.no_grad()
def value_sweep(
    model: torch.nn.Module,
    data: ImageTensors,
    trigger: Trigger,
    target: int,
    values: Iterable[int] = range(0, 256, 16),
    max_images: int | None = None,
    batch_size: int = 512,
    seed: int | torch.Generator | None = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ASR with the trigger's non-zero pattern pixels set to ``v/255`` for each ``v`` in ``values`` (0–255),
    at the trigger's own placement (Li Sec. 3.2, Fig. 5). Returns ``(values, asr)`` as 1-D tensors.

    ``seed`` drives a random placement, reset for every value so all values see the same locations.
    """
    trigger = _check_trigger(trigger)
    vals = torch.as_tensor(list(values), dtype=torch.float32)
    if vals.ndim != 1 or len(vals) == 0:
        raise BackdoorLabError("value_sweep needs at least one value")
    if bool((vals < 0).any() or (vals > 255).any()):
        raise BackdoorLabError(f"trigger values must lie in 0..255, got {vals.min():g}..{vals.max():g}")
    victims = _victims(data, target, max_images)
    dev = _device(model)
    asr = torch.empty(len(vals))
    was_training = model.training
    model.eval()
    try:
        for i, v in enumerate(vals.tolist()):
            t = with_value(trigger, v / 255.0).to(dev)
            gen = make_generator(seed.initial_seed() if isinstance(seed, torch.Generator) else seed)
            hits = 0
            for start in range(0, len(victims), batch_size):
                part = victims[start : start + batch_size].to(data.device)
                x = stamp(data.float01(part, device=dev), t, gen=gen)
                hits += int((model(x).argmax(1) == target).sum())
            asr[i] = hits / len(victims)
    finally:
        model.train(was_training)
    return vals, asr


# -- plots ------------------------------------------------------------------------------------------------
def plot_heatmap(heatmap: Heatmap, title: str | None = None) -> Figure:
    """The ASR heat-map over trigger positions, training position outlined in red (Li Fig. 4)."""
    fig = Figure(figsize=(4.6, 4.0), layout="constrained")
    ax = fig.subplots()
    rows, cols = heatmap.rows.float(), heatmap.cols.float()
    dr = float(rows[1] - rows[0]) if len(rows) > 1 else 1.0
    dc = float(cols[1] - cols[0]) if len(cols) > 1 else 1.0
    extent = (
        float(cols[0]) - dc / 2,
        float(cols[-1]) + dc / 2,
        float(rows[-1]) + dr / 2,
        float(rows[0]) - dr / 2,
    )
    im = ax.imshow(
        heatmap.asr.numpy() * 100, cmap="viridis", vmin=0, vmax=100, extent=extent, interpolation="nearest"
    )
    fig.colorbar(im, ax=ax, label="ASR (%)")
    if heatmap.trained_at is not None:
        r, c = heatmap.trained_at
        ax.plot([c], [r], marker="s", markersize=9, markerfacecolor="none", markeredgecolor="red", mew=2)
        ax.annotate("training", (c, r), xytext=(4, 4), textcoords="offset points", color="red", fontsize=8)
    ax.set_xlabel("trigger column (top-left corner)")
    ax.set_ylabel("trigger row (top-left corner)")
    ax.set_title(title or "ASR vs test-time trigger position")
    return fig


def plot_value_sweep(
    values: torch.Tensor | Iterable[float],
    asr: torch.Tensor | Iterable[float],
    original: float | None = None,
    original_asr: float | None = None,
    title: str | None = None,
) -> Figure:
    """ASR vs the trigger's non-zero pixel value (0–255), the ``original`` value as a red dot (Li Fig. 5).

    ``original_asr`` is the ASR at ``original``; when omitted it is interpolated from the sweep.
    """
    v = torch.as_tensor(list(values) if not isinstance(values, torch.Tensor) else values).float()
    a = torch.as_tensor(list(asr) if not isinstance(asr, torch.Tensor) else asr).float()
    fig = Figure(figsize=(4.6, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(v.numpy(), a.numpy() * 100, marker="o", markersize=3, color="tab:blue")
    if original is not None:
        if original_asr is None:
            original_asr = float(np.interp(float(original), v.numpy(), a.numpy()))
        ax.plot(
            [original], [original_asr * 100], "o", color="red", markersize=7, label=f"original ({original:g})"
        )
        ax.legend(loc="lower right")
    ax.set_xlim(0, 255)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("non-zero trigger pixel value")
    ax.set_ylabel("ASR (%)")
    ax.set_title(title or "ASR vs trigger pixel value")
    return fig
