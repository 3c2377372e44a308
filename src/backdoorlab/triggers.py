"""Backdoor triggers: a pattern, an alpha mask and a placement, stamped on whole batches.

A :class:`Trigger` is applied by :func:`stamp` in one of two modes:

- ``"blend"``: ``x' = (1 − m)·x + m·p`` (Chen et al. 2017, Eq. 1; Li et al. 2021, Eq. 1). A solid patch is a
  blend with ``m = 1``; a full-image blended trigger is a blend with a constant ``m = α``.
- ``"add"``: ``x' = clip(x + m·p, 0, 1)`` with a signed ``p`` in [−1, 1] — Turner et al. 2019, App. B.1
  (reduced amplitude triggers).

Stamping is batched (no per-sample Python loop), works on any device and keeps autograd working with respect
to the images and to the pattern and mask, so optimisers (Neural Cleanse, hidden-trigger poisons) can use it.
All pixels are on the [0, 1] scale; the papers' 0–255 figures are converted in the factories.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from backdoorlab.data.tensors import make_generator
from backdoorlab.errors import BackdoorLabError, unknown_name

CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")
MODES = ("blend", "add")


# ---------------------------------------------------------------------------------------------------------
# placement
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Placement:
    """Where a patch goes: a corner (with a margin), random, a fixed ``(row, col)`` or per-sample corners.

    ``kind`` is one of :data:`CORNERS`, ``"random"`` (uniform over all positions that keep the patch inside
    the image, drawn per sample from a ``torch.Generator``), ``"fixed"`` (``at = (row, col)`` of the
    top-left corner; negative values count from the bottom/right edge as in Python indexing, so Turner's
    rows/cols −3..−1 are ``(-3, -3)``) or ``"per-sample"`` (an N×2 tensor of top-left corners).
    """

    kind: str = "bottom-right"
    margin: int = 0
    at: tuple[int, int] | None = None
    per_sample: torch.Tensor | None = None

    def __post_init__(self) -> None:
        valid = (*CORNERS, "random", "fixed", "per-sample")
        if self.kind not in valid:
            raise unknown_name("placement", self.kind, valid)
        if not isinstance(self.margin, int) or self.margin < 0:
            raise BackdoorLabError(f"placement margin must be an integer ≥ 0 pixels, got {self.margin!r}")
        if self.kind == "fixed":
            if self.at is None or len(self.at) != 2:
                raise BackdoorLabError(f"a fixed placement needs at=(row, col), got {self.at!r}")
            object.__setattr__(self, "at", (int(self.at[0]), int(self.at[1])))
        if self.kind == "per-sample":
            locs = self.per_sample
            if locs is None or locs.ndim != 2 or locs.shape[1] != 2:
                shape = None if locs is None else tuple(locs.shape)
                raise BackdoorLabError(f"per-sample placement needs an N×2 tensor of (row, col), got {shape}")
            object.__setattr__(self, "per_sample", locs.long())

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, value: PlacementLike) -> Placement:
        """A placement from a corner name, ``"random"``, ``(row, col)``, an N×2 tensor or a config mapping."""
        if isinstance(value, Placement):
            return value
        if isinstance(value, str):
            return cls(kind=value)
        if isinstance(value, torch.Tensor):
            if value.ndim == 1 and value.numel() == 2:
                return cls(kind="fixed", at=(int(value[0]), int(value[1])))
            return cls(kind="per-sample", per_sample=value)
        if isinstance(value, Mapping):
            params = dict(value)
            kind = params.pop("kind", "fixed" if "at" in params else "bottom-right")
            unknown = set(params) - {"margin", "at"}
            if unknown:
                raise BackdoorLabError(
                    f"placement has no parameter {sorted(unknown)[0]!r}; valid: at, kind, margin"
                )
            at = params.get("at")
            return cls(kind=kind, margin=int(params.get("margin", 0)), at=None if at is None else tuple(at))
        if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
            return cls(kind="fixed", at=(int(value[0]), int(value[1])))
        raise BackdoorLabError(
            f"placement must be a corner name ({', '.join(CORNERS)}), 'random', (row, col) or an N×2 tensor, "
            f"got {value!r}"
        )

    # -- use ---------------------------------------------------------------------------------------------
    @property
    def is_fixed(self) -> bool:
        """True when every sample gets the same location (a corner or an explicit ``(row, col)``)."""
        return self.kind in CORNERS or self.kind == "fixed"

    def locations(
        self,
        n: int,
        image_hw: tuple[int, int],
        patch_hw: tuple[int, int],
        gen: torch.Generator | None = None,
    ) -> torch.Tensor:
        """N×2 int64 top-left corners (CPU) for ``n`` images of ``image_hw`` and a patch of ``patch_hw``."""
        H, W = image_hw
        h, w = patch_hw
        _check_fits(patch_hw, image_hw)
        if self.kind == "random":
            g = make_generator(gen)
            rows = torch.randint(0, H - h + 1, (n,), generator=g)
            cols = torch.randint(0, W - w + 1, (n,), generator=g)
            return torch.stack([rows, cols], dim=1)
        if self.kind == "per-sample":
            locs = self.per_sample
            if locs.shape[0] == 1:
                locs = locs.expand(n, 2)
            if locs.shape[0] != n:
                raise BackdoorLabError(f"per-sample placement has {locs.shape[0]} locations for {n} images")
            return locs.cpu()
        if self.kind == "fixed":
            r, c = self.at
            r = H + r if r < 0 else r
            c = W + c if c < 0 else c
        else:
            r = self.margin if self.kind.startswith("top") else H - h - self.margin
            c = self.margin if self.kind.endswith("left") else W - w - self.margin
        return torch.tensor([[r, c]], dtype=torch.long).expand(n, 2)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (per-sample locations are summarised by a digest)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind in CORNERS:
            out["margin"] = self.margin
        elif self.kind == "fixed":
            out["at"] = list(self.at)
        elif self.kind == "per-sample":
            out["n"] = int(self.per_sample.shape[0])
            out["digest"] = digest(self.per_sample)
        return out


PlacementLike = Placement | str | tuple[int, int] | Sequence[int] | torch.Tensor | Mapping[str, Any]


# ---------------------------------------------------------------------------------------------------------
# triggers
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Trigger:
    """A ``pattern`` (C×h×w; C = 1 broadcasts), an alpha ``mask`` (1×h×w or C×h×w), a mode, a placement.

    ``pattern`` is in [0, 1] for ``mode="blend"`` and a signed delta in [−1, 1] for ``mode="add"``; ``mask``
    is in [0, 1]. Range checks are skipped for tensors that require grad (optimisers parametrise them
    themselves). ``spec`` records the factory and parameters that made the trigger, for :meth:`describe`.
    """

    pattern: torch.Tensor
    mask: torch.Tensor
    mode: str = "blend"
    placement: Placement = field(default_factory=Placement)
    spec: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise unknown_name("trigger mode", self.mode, MODES)
        object.__setattr__(self, "placement", Placement.parse(self.placement))
        p, m = self.pattern, self.mask
        if not isinstance(p, torch.Tensor) or p.ndim != 3:
            raise BackdoorLabError(f"trigger pattern must be a C×h×w tensor, got {_shape(p)}")
        if not isinstance(m, torch.Tensor) or m.ndim != 3:
            raise BackdoorLabError(f"trigger mask must be a 1×h×w or C×h×w tensor, got {_shape(m)}")
        if p.shape[1:] != m.shape[1:]:
            raise BackdoorLabError(
                f"trigger pattern {_hw(p)} and mask {_hw(m)} must have the same height and width"
            )
        if p.shape[0] != m.shape[0] and 1 not in (p.shape[0], m.shape[0]):
            raise BackdoorLabError(
                f"trigger pattern has {p.shape[0]} channels and mask {m.shape[0]}; use equal counts or 1"
            )
        if not p.is_floating_point():
            object.__setattr__(self, "pattern", p.float())
        if not m.is_floating_point():
            object.__setattr__(self, "mask", m.float())
        with torch.no_grad():
            lo = -1.0 if self.mode == "add" else 0.0
            if not self.pattern.requires_grad and (self.pattern.min() < lo or self.pattern.max() > 1):
                raise BackdoorLabError(
                    f"trigger pattern must lie in [{lo:g}, 1] for mode {self.mode!r}, found "
                    f"{float(self.pattern.min()):.3g}..{float(self.pattern.max()):.3g}"
                )
            if not self.mask.requires_grad and (self.mask.min() < 0 or self.mask.max() > 1):
                raise BackdoorLabError(
                    f"trigger mask must lie in [0, 1], found "
                    f"{float(self.mask.min()):.3g}..{float(self.mask.max()):.3g}"
                )

    @property
    def size(self) -> tuple[int, int]:
        """``(h, w)`` of the patch."""
        return int(self.pattern.shape[1]), int(self.pattern.shape[2])

    @property
    def channels(self) -> int:
        """Channel count of the pattern/mask (1 means it broadcasts to any image)."""
        return max(int(self.pattern.shape[0]), int(self.mask.shape[0]))

    def locations(
        self, n: int, image_hw: tuple[int, int], gen: torch.Generator | None = None
    ) -> torch.Tensor:
        """N×2 int64 top-left corners of this trigger's placement on ``n`` images of size ``image_hw``."""
        return self.placement.locations(n, image_hw, self.size, gen)

    def with_placement(self, placement: PlacementLike) -> Trigger:
        return replace(self, placement=Placement.parse(placement))

    def mirrored(self) -> Trigger:
        """The left–right mirror image of the patch (same placement and mode)."""
        return replace(self, pattern=self.pattern.flip(-1), mask=self.mask.flip(-1))

    def to(self, device: torch.device | str) -> Trigger:
        return replace(self, pattern=self.pattern.to(device), mask=self.mask.to(device))

    def full_canvas(self, image_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pattern, mask)`` at image size (zero outside the patch) for a fixed placement; differentiable.

        ``image_shape`` is ``(C, H, W)`` or ``(H, W)``; channels keep the trigger's own count (1 broadcasts).
        """
        H, W = int(image_shape[-2]), int(image_shape[-1])
        if not self.placement.is_fixed:
            raise BackdoorLabError(
                f"full_canvas needs a fixed placement (a corner or (row, col)), not {self.placement.kind!r}"
            )
        loc = self.locations(1, (H, W))
        _check_inside(loc, self.size, (H, W))
        r, c = int(loc[0, 0]), int(loc[0, 1])
        h, w = self.size
        pad = (c, W - w - c, r, H - h - r)
        return F.pad(self.pattern, pad), F.pad(self.mask, pad)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description: factory spec, mode, placement, size and a digest of pattern and mask."""
        spec = dict(self.spec or {"kind": "custom"})
        return {
            **spec,
            "mode": self.mode,
            "placement": self.placement.describe(),
            "size": list(self.size),
            "channels": self.channels,
            "digest": digest(self.pattern, self.mask),
        }


@dataclass(frozen=True, eq=False)
class TriggerSet:
    """Several triggers stamped one after another (e.g. Turner's four-corner trigger, App. B.2)."""

    triggers: tuple[Trigger, ...]
    spec: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "triggers", tuple(self.triggers))
        if not self.triggers or not all(isinstance(t, Trigger) for t in self.triggers):
            raise BackdoorLabError("a trigger set needs at least one Trigger")

    @property
    def mode(self) -> str:
        modes = {t.mode for t in self.triggers}
        return modes.pop() if len(modes) == 1 else "mixed"

    @property
    def channels(self) -> int:
        return max(t.channels for t in self.triggers)

    def to(self, device: torch.device | str) -> TriggerSet:
        return replace(self, triggers=tuple(t.to(device) for t in self.triggers))

    def full_canvas(self, image_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One ``(pattern, mask)`` at image size equivalent to stamping the parts in order.

        Blend parts are composited "over": ``M = 1 − Π(1 − mᵢ)``, ``M·P = Σ mᵢ pᵢ Π_{j>i}(1 − mⱼ)``. Add
        parts sum their deltas (exact where the parts do not overlap; clipping happens once at the end).
        """
        if self.mode == "mixed":
            raise BackdoorLabError("full_canvas needs all parts of a trigger set in the same mode")
        parts = [t.full_canvas(image_shape) for t in self.triggers]
        keep = None  # Π(1 − m) so far
        acc = None  # Σ m p (attenuated by later blend masks)
        for p, m in parts:
            mp = m * p
            if acc is None:
                acc, keep = mp, 1 - m
            elif self.mode == "blend":
                acc, keep = acc * (1 - m) + mp, keep * (1 - m)
            else:
                acc, keep = acc + mp, keep * (1 - m)
        mask = 1 - keep
        pattern = torch.where(mask > 0, acc / mask.clamp_min(1e-12), torch.zeros_like(acc))
        return pattern, mask

    def describe(self) -> dict[str, Any]:
        spec = dict(self.spec or {"kind": "set"})
        return {**spec, "mode": self.mode, "parts": [t.describe() for t in self.triggers]}


AnyTrigger = Trigger | TriggerSet


# ---------------------------------------------------------------------------------------------------------
# stamping
# ---------------------------------------------------------------------------------------------------------
def stamp(
    x: torch.Tensor,
    trigger: AnyTrigger,
    locations: torch.Tensor | Sequence[int] | None = None,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """Stamp ``trigger`` on ``x`` (N×C×H×W or one C×H×W image, float in [0, 1]) and return a new tensor.

    ``locations`` overrides the trigger's placement with ``(row, col)`` or an N×2 tensor of top-left corners.
    ``gen`` drives random placements (``None``: a generator seeded 0, so the result is deterministic).
    Gradients flow to ``x`` and to the trigger's pattern and mask.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise BackdoorLabError(
            f"stamp needs float images in [0, 1], got {getattr(x, 'dtype', type(x).__name__)}; "
            "convert uint8 with ImageTensors.float01"
        )
    if x.ndim == 3:
        return stamp(x.unsqueeze(0), trigger, locations, gen).squeeze(0)
    if x.ndim != 4:
        raise BackdoorLabError(f"stamp needs N×C×H×W images, got shape {tuple(x.shape)}")
    if isinstance(trigger, TriggerSet):
        if locations is not None:
            raise BackdoorLabError("a trigger set places its own parts; do not pass locations")
        out = x.clone()  # one copy for all parts; each part then pastes into it
        for part in trigger.triggers:
            out = _stamp_one(out, part, None, gen, owned=True)
        return out
    if not isinstance(trigger, Trigger):
        raise BackdoorLabError(f"stamp needs a Trigger or TriggerSet, got {type(trigger).__name__}")
    return _stamp_one(x, trigger, locations, gen)


def _stamp_one(
    x: torch.Tensor,
    t: Trigger,
    locations: torch.Tensor | Sequence[int] | None,
    gen: torch.Generator | None,
    owned: bool = False,
) -> torch.Tensor:
    """Stamp one trigger; ``owned`` means ``x`` is a private copy that may be written in place."""
    n, c, H, W = x.shape
    h, w = t.size
    _check_fits((h, w), (H, W))
    if locations is None:
        locs = t.locations(n, (H, W), gen)
    else:
        locs = Placement.parse(torch.as_tensor(locations)).locations(n, (H, W), (h, w), gen)
    _check_inside(locs, (h, w), (H, W))
    dev = x.device
    p = _fit_channels(t.pattern, c, "pattern").to(dev, x.dtype)  # C'×h×w
    m = _fit_channels(t.mask, c, "mask").to(dev, x.dtype)

    def combine(region: torch.Tensor) -> torch.Tensor:
        # blend: (1 − m)·x + m·p is exact at m = 0 and m = 1; add: clip(x + m·p, 0, 1)
        return (1 - m) * region + m * p if t.mode == "blend" else (region + m * p).clamp(0, 1)

    if n == 0 or bool((locs == locs[:1]).all()):
        # one location for the whole batch: plain slicing (fast path for corners and full-image triggers)
        r, col = (int(v) for v in locs[0]) if n else (0, 0)
        if (h, w) == (H, W):
            return combine(x).to(x.dtype).contiguous()
        window = (slice(None), slice(None), slice(r, r + h), slice(col, col + w))
        new = combine(x[window].clone() if owned else x[window]).to(x.dtype)
        out = x if owned else x.clone()
        out[window] = new
        return out
    # per-sample locations: gather each sample's window with advanced indexing and put it back (no loop)
    locs = locs.to(dev)
    rows = locs[:, 0, None, None] + torch.arange(h, device=dev)[None, :, None]  # N×h×1
    cols = locs[:, 1, None, None] + torch.arange(w, device=dev)[None, None, :]  # N×1×w
    nidx = torch.arange(n, device=dev)[:, None, None]  # N×1×1
    xl = x.permute(0, 2, 3, 1)  # N×H×W×C view
    new = combine(xl[nidx, rows, cols].permute(0, 3, 1, 2))  # N×C×h×w
    out = xl.index_put((nidx, rows, cols), new.permute(0, 2, 3, 1).to(x.dtype))
    return out.permute(0, 3, 1, 2).contiguous()


def _fit_channels(t: torch.Tensor, c: int, what: str) -> torch.Tensor:
    if t.shape[0] in (1, c):
        return t
    raise BackdoorLabError(f"trigger {what} has {t.shape[0]} channels but the images have {c}")


def _check_fits(patch_hw: tuple[int, int], image_hw: tuple[int, int]) -> None:
    (h, w), (H, W) = patch_hw, image_hw
    if h > H or w > W:
        raise BackdoorLabError(f"trigger of size {h}×{w} is larger than the {H}×{W} image")


def _check_inside(locs: torch.Tensor, patch_hw: tuple[int, int], image_hw: tuple[int, int]) -> None:
    (h, w), (H, W) = patch_hw, image_hw
    bad = (locs[:, 0] < 0) | (locs[:, 0] > H - h) | (locs[:, 1] < 0) | (locs[:, 1] > W - w)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        r, c = int(locs[i, 0]), int(locs[i, 1])
        raise BackdoorLabError(
            f"trigger location (row {r}, col {c}) puts the {h}×{w} patch outside the {H}×{W} image "
            f"(sample {i}); top-left corners must lie in rows 0..{H - h}, cols 0..{W - w}"
        )


def digest(*tensors: torch.Tensor) -> str:
    """A short SHA-256 of tensors' shapes, dtypes and values (for cache keys and descriptions)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(repr((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def _shape(t: object) -> object:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def _hw(t: torch.Tensor) -> str:
    return f"{t.shape[1]}×{t.shape[2]}"


# ---------------------------------------------------------------------------------------------------------
# factories
# ---------------------------------------------------------------------------------------------------------
def _int_param(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BackdoorLabError(f"trigger parameter {name!r} must be an integer ≥ {low}, got {value!r}")
    return int(value)


def _unit_param(
    name: str, value: Any, low: float = 0.0, high: float = 1.0, *, open_low: bool = False, hint: str = ""
) -> float:
    """``value`` as a float in ``[low, high]`` (``(low, high]`` with ``open_low``), else a named error.

    Compared as given, so NaN fails and an int too large for a float cannot overflow; ``hint`` ends the message.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and (low < value if open_low else low <= value) and value <= high):
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise BackdoorLabError(
            f"trigger parameter {name!r} must be a number in {interval}{hint}, got {value!r}"
        )
    return float(value)


def square(
    size: int = 3,
    value: float | Sequence[float] = 1.0,
    channels: int = 1,
    placement: PlacementLike = "bottom-right",
) -> Trigger:
    """A solid ``size×size`` patch, pasted by replacement (BadNets, Gu et al. 2017, Sec. 4; Li et al. Sec. 3).

    ``value`` is one grey level, or one value per channel (then ``channels`` is its length).
    """
    size = _int_param("size", size)
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = [_unit_param("value", v) for v in value]
        channels = len(values)
    else:
        values = [_unit_param("value", value)] * _int_param("channels", channels)
    pattern = torch.tensor(values, dtype=torch.float32)[:, None, None].expand(channels, size, size).clone()
    spec = {"kind": "square", "size": size, "value": values if len(set(values)) > 1 else values[0]}
    return Trigger(pattern, torch.ones(1, size, size), "blend", Placement.parse(placement), spec)


def checkerboard(
    size: int = 3,
    low: float = 0.0,
    high: float = 1.0,
    channels: int = 1,
    placement: PlacementLike = "bottom-right",
) -> Trigger:
    """A ``size×size`` checkerboard, ``high`` on cells with even row+col (top-left is ``high``), else ``low``.

    The black-and-white BadNets patch of Li et al. 2021 (Sec. 3, "Rethinking the trigger"); see
    :func:`li_badnets`.
    """
    size = _int_param("size", size)
    low, high = _unit_param("low", low), _unit_param("high", high)
    channels = _int_param("channels", channels)
    ij = torch.arange(size)
    even = ((ij[:, None] + ij[None, :]) % 2 == 0).float()
    pattern = (low + (high - low) * even).expand(channels, size, size).clone()
    spec = {"kind": "checkerboard", "size": size, "low": low, "high": high}
    return Trigger(pattern, torch.ones(1, size, size), "blend", Placement.parse(placement), spec)


def li_badnets(variant: str = "0-255", placement: PlacementLike = "bottom-right") -> Trigger:
    """Li et al. 2021 (Sec. 3): the 3×3 black/white BadNets trigger, white = 255 (``"0-255"``) or 128
    (``"0-128"``)."""
    highs = {"0-255": 1.0, "0-128": 128 / 255}
    if variant not in highs:
        raise unknown_name("li_badnets variant", variant, highs)
    t = checkerboard(3, 0.0, highs[variant], placement=placement)
    return replace(t, spec={"kind": "li-badnets", "variant": variant})


_TURNER_W = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])  # B B W / B W B / W B W


def turner_pattern(placement: PlacementLike = "bottom-right") -> Trigger:
    """Turner et al. 2019 (Sec. 4.1, Fig. 2): the 3×3 ``B B W / B W B / W B W`` patch at rows/cols −3..−1.

    W = 1 on all channels, B = 0, pasted by replacement.
    """
    return Trigger(
        _TURNER_W[None].clone(), torch.ones(1, 3, 3), "blend", Placement.parse(placement), {"kind": "turner"}
    )


def turner_amplitude(amplitude: float, placement: PlacementLike = "bottom-right") -> Trigger:
    """Turner et al. 2019 (App. B.1): the reduced-amplitude trigger, added instead of pasted.

    ``amplitude`` is on the paper's 0–255 scale (e.g. 16, 32, 64, 255) and is divided by 255 here: the image
    gets ``+a/255`` on W pixels and ``−a/255`` on B pixels, then is clipped to [0, 1].
    """
    hint = " on the 0–255 pixel scale (Turner App. B.1: 16, 32, 64, 255)"
    a = _unit_param("amplitude", amplitude, 0.0, 255.0, open_low=True, hint=hint) / 255.0
    pattern = (a * (2 * _TURNER_W - 1))[None].clone()
    spec = {"kind": "turner-amplitude", "amplitude": float(amplitude)}
    return Trigger(pattern, torch.ones(1, 3, 3), "add", Placement.parse(placement), spec)


def four_corner(base: Trigger | Mapping[str, Any] | None = None) -> TriggerSet:
    """Turner et al. 2019 (App. B.2): ``base`` at the top-right and bottom-right corners and its left–right
    mirror at the two left corners (Turner's pattern by default). The base's mode (blend or add) and, if its
    placement is a corner, its margin are kept.
    """
    if base is None:
        base = turner_pattern()
    elif isinstance(base, Mapping):
        base = from_config(base)
    if not isinstance(base, Trigger):
        raise BackdoorLabError(
            f"four-corner parameter 'base' must be a single Trigger, got {type(base).__name__}"
        )
    margin = base.placement.margin if base.placement.kind in CORNERS else 0
    mirror = base.mirrored()
    parts = (
        base.with_placement(Placement("top-right", margin)),
        base.with_placement(Placement("bottom-right", margin)),
        mirror.with_placement(Placement("top-left", margin)),
        mirror.with_placement(Placement("bottom-left", margin)),
    )
    return TriggerSet(parts, {"kind": "four-corner", "base": base.describe()})


def blended(
    pattern_image: torch.Tensor | None = None,
    alpha: float = 0.2,
    shape: Sequence[int] = (3, 32, 32),
    seed: int = 0,
) -> Trigger:
    """A full-image blended trigger (Chen et al. 2017, Sec. 4.2; Li et al. 2021, Eq. 1): ``x' = (1 − α)x +
    αp``.

    ``pattern_image`` (C×H×W or H×W, uint8 or float in [0, 1]) is resized bilinearly to ``shape``'s H×W when
    it differs; ``None`` gives a uniform random noise image from ``seed`` (Chen et al.'s random-pattern
    key).
    """
    alpha = _unit_param("alpha", alpha)
    if len(shape) != 3:
        raise BackdoorLabError(f"trigger parameter 'shape' must be (C, H, W), got {tuple(shape)}")
    c, H, W = (_int_param("shape", int(s)) for s in shape)
    if pattern_image is None:
        pattern = torch.rand((c, H, W), generator=make_generator(seed))
        spec: dict[str, Any] = {"kind": "blended", "alpha": alpha, "pattern": "noise", "seed": int(seed)}
    else:
        pattern = torch.as_tensor(pattern_image)
        if pattern.ndim == 2:
            pattern = pattern[None]
        if pattern.ndim != 3:
            raise BackdoorLabError(
                f"trigger parameter 'pattern_image' must be C×H×W or H×W, got {_shape(pattern)}"
            )
        pattern = pattern.float().div(255.0) if pattern.dtype == torch.uint8 else pattern.float()
        if pattern.shape[0] not in (1, c):
            raise BackdoorLabError(
                f"trigger parameter 'pattern_image' has {pattern.shape[0]} channels, the images have {c}"
            )
        if tuple(pattern.shape[1:]) != (H, W):
            pattern = F.interpolate(pattern[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        pattern = pattern.clamp(0, 1)
        spec = {"kind": "blended", "alpha": alpha, "pattern": "image"}
    return Trigger(pattern, torch.full((1, H, W), alpha), "blend", Placement("top-left"), spec)


def random_color_patch(
    size: int = 8, seed: int = 0, channels: int = 3, placement: PlacementLike = "random"
) -> Trigger:
    """Saha et al. 2020 (Sec. 4): a 4×4 grid of cells, each one of the 8 binary colours (every channel 0 or
    1), upscaled bilinearly (``align_corners=False``) to ``size×size`` and pasted by hard replacement, by
    default at a uniformly random location per image.
    """
    size = _int_param("size", size)
    channels = _int_param("channels", channels)
    grid = torch.randint(0, 2, (1, channels, 4, 4), generator=make_generator(seed)).float()
    pattern = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[0].clamp(0, 1)
    spec = {"kind": "random-color", "size": size, "seed": int(seed)}
    return Trigger(pattern, torch.ones(1, size, size), "blend", Placement.parse(placement), spec)


def from_image(
    path: str | Path,
    size: int | Sequence[int] | None = None,
    channels: int | None = None,
    placement: PlacementLike = "bottom-right",
) -> Trigger:
    """Any image file (read with PIL) as a pasted trigger; its alpha channel, if any, becomes the mask.

    ``size`` (an int or ``(h, w)``) resizes it bilinearly; ``channels`` 1 or 3 converts to grey or RGB.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise BackdoorLabError(f"trigger image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            alpha = im.convert("RGBA").getchannel("A") if has_alpha else None
            if channels is None:
                channels = 1 if im.mode in ("L", "LA", "1", "I", "F", "I;16") else 3
            if channels not in (1, 3):
                raise BackdoorLabError(f"trigger parameter 'channels' must be 1 or 3, got {channels!r}")
            rgb = im.convert("L" if channels == 1 else "RGB")
    except UnidentifiedImageError as e:
        raise BackdoorLabError(f"trigger image {path} is not an image PIL can read") from e
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        h, w = _int_param("size", int(h)), _int_param("size", int(w))
        rgb = rgb.resize((w, h), Image.BILINEAR)
        alpha = None if alpha is None else alpha.resize((w, h), Image.BILINEAR)
    pattern = _pil_to_tensor(rgb)
    mask = torch.ones(1, *pattern.shape[1:]) if alpha is None else _pil_to_tensor(alpha)
    spec = {"kind": "image", "path": str(path), "size": list(pattern.shape[1:]), "channels": channels}
    return Trigger(pattern, mask, "blend", Placement.parse(placement), spec)


def _pil_to_tensor(im: Any) -> torch.Tensor:
    import numpy as np

    a = torch.from_numpy(np.array(im, dtype=np.uint8, copy=True))
    a = a[None] if a.ndim == 2 else a.permute(2, 0, 1)
    return a.float() / 255.0


# ---------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------
_FACTORIES: dict[str, Callable[..., AnyTrigger]] = {
    "square": square,
    "checkerboard": checkerboard,
    "li-badnets": li_badnets,
    "turner": turner_pattern,
    "turner-amplitude": turner_amplitude,
    "four-corner": four_corner,
    "blended": blended,
    "random-color": random_color_patch,
    "image": from_image,
}


def list_triggers() -> list[str]:
    """The trigger kinds :func:`make_trigger` knows."""
    return sorted(_FACTORIES)


def make_trigger(kind: str, **params: Any) -> AnyTrigger:
    """A trigger by kind name and factory parameters (e.g. ``make_trigger("square", size=4)``)."""
    if kind not in _FACTORIES:
        raise unknown_name("trigger", kind, _FACTORIES)
    fn = _FACTORIES[kind]
    sig = inspect.signature(fn).parameters
    for name in params:
        if name not in sig:
            raise BackdoorLabError(
                f"trigger {kind!r} has no parameter {name!r}; valid: {', '.join(sig) or '(none)'}"
            )
    for name, p in sig.items():
        if p.default is inspect.Parameter.empty and name not in params:
            raise BackdoorLabError(f"trigger {kind!r} needs the parameter {name!r}")
    if "shape" in params and params["shape"] is not None:
        params["shape"] = tuple(params["shape"])
    return fn(**params)


def from_config(config: Mapping[str, Any] | AnyTrigger) -> AnyTrigger:
    """A trigger from a config mapping ``{"kind": ..., **params}`` (a Trigger passes through)."""
    if isinstance(config, (Trigger, TriggerSet)):
        return config
    if isinstance(config, str):
        return make_trigger(config)
    if not isinstance(config, Mapping) or "kind" not in config:
        raise BackdoorLabError(
            f"a trigger config needs a 'kind' ({', '.join(list_triggers())}), got {config!r}"
        )
    params = dict(config)
    return make_trigger(params.pop("kind"), **params)
