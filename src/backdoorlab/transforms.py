"""Shape-preserving image transformations (Li et al. 2021, "Rethinking the Trigger", Def. 3).

Every function maps an N×C×H×W float batch in [0, 1] to a batch of the same shape in [0, 1], on the
batch's device, with batched tensor operations only (no per-sample Python loop), so the same code serves
the transformation-based defences (Li §4.1, §5.1–5.2), the random transformation layer of the enhanced
attacks (Li §4.2, §5.3) and the imitation of a physical attack (Li §5.5).

Randomness: every random choice is drawn from a ``torch.Generator``; ``gen=None`` means a fresh CPU
generator seeded 0 (:func:`backdoorlab.data.tensors.make_generator`), so a call without a generator is
reproducible too. Random numbers are drawn on the generator's device (CPU unless you pass a CUDA
generator) and moved to the batch, so CPU and GPU runs with a CPU generator draw the same parameters.
Where a transform is differentiable in ``x`` (flip, shrink-pad, noise, jitter, physical) autograd passes
through it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from backdoorlab.data import loader
from backdoorlab.data.tensors import make_generator
from backdoorlab.errors import BackdoorLabError

__all__ = [
    "check_jitter",
    "check_noise_std",
    "check_shrink_size",
    "color_jitter",
    "flip",
    "gaussian_noise",
    "physical",
    "random_flip",
    "random_shrink_pad",
    "rgb_to_grayscale",
    "shrink_pad",
]

# ITU-R 601-2 luma weights, as PIL and torchvision use for grayscale conversion
_LUMA = (0.2989, 0.587, 0.114)


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def _check_batch(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise BackdoorLabError(f"images must be an N×C×H×W tensor, got {shape}")
    if not x.is_floating_point():
        raise BackdoorLabError(f"images must be float in [0, 1], got {x.dtype}; divide uint8 images by 255")


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """``n`` draws from U[lo, hi] on ``gen``'s device, moved to ``like``'s device and dtype."""
    u = torch.rand(n, generator=gen, device=gen.device)
    return (lo + (hi - lo) * u).to(device=like.device, dtype=like.dtype)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_shrink_size(k: int, image_hw: tuple[int, int] | None = None, what: str = "shrink size k") -> int:
    """Validate a ShrinkPad size: an integer with ``0 ≤ k ≤ min(H, W) // 3`` (the bound needs ``image_hw``)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise BackdoorLabError(f"{what} must be an integer number of pixels in 0..min(H, W) // 3, got {k!r}")
    if image_hw is not None:
        side = min(image_hw)
        if k > side // 3:
            name = what.split()[-1]
            raise BackdoorLabError(
                f"{what.rsplit(' ', 1)[0]} {name}={k} is larger than a third of the {side}-pixel image side "
                f"(max {side // 3})"
            )
    return int(k)


def check_noise_std(std: float) -> float:
    """Validate a Gaussian-noise std given on the 0–255 scale (Li Table 3): ``0 ≤ std ≤ 255``."""
    if not _is_number(std) or not 0 <= std <= 255:
        raise BackdoorLabError(f"noise std must be a number in [0, 255] (0–255 pixel units), got {std!r}")
    return float(std)


def check_jitter(
    brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0
) -> tuple[float, float, float, float]:
    """Validate ColorJitter strengths: brightness, contrast, saturation ≥ 0; hue in [0, 0.5]."""
    for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if not _is_number(v) or v < 0:
            raise BackdoorLabError(f"color jitter {name} must be a number ≥ 0, got {v!r}")
    if not _is_number(hue) or not 0 <= hue <= 0.5:
        raise BackdoorLabError(f"color jitter hue must be a number in [0, 0.5], got {hue!r}")
    return float(brightness), float(contrast), float(saturation), float(hue)


# ---------------------------------------------------------------------------------------------------------
# spatial transformations (Li §4.1, §5.1)
# ---------------------------------------------------------------------------------------------------------
def flip(x: torch.Tensor) -> torch.Tensor:
    """Left–right flip of every image (Li §5.1, "Flip"): moves the trigger to the mirrored location."""
    _check_batch(x)
    return x.flip(-1)


def random_flip(x: torch.Tensor, p: float = 0.5, gen: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left–right with probability ``p``, independently per sample (Li §4.2/§5.3).

    The data loader's augmentation (:func:`backdoorlab.data.loader.random_flip`) with ``p`` checked and
    ``gen=None`` meaning a generator seeded 0.
    """
    _check_batch(x)
    if not _is_number(p) or not 0 <= p <= 1:
        raise BackdoorLabError(f"flip probability p must be a number in [0, 1], got {p!r}")
    return loader.random_flip(x, float(p), make_generator(gen))


def _place(small: torch.Tensor, k: int, offsets: torch.Tensor) -> torch.Tensor:
    """Put each (H−k)×(W−k) image of ``small`` at its own ``(top, left)`` offset on a zero H×W canvas.

    Zero-pad by ``k`` on every side, then gather one H×W window per sample: output row ``r`` reads padded
    row ``r − top + k`` (likewise for columns). One advanced-indexing gather, differentiable.
    """
    n, _, hs, ws = small.shape
    h, w = hs + k, ws + k
    dev = small.device
    padded = F.pad(small, (k, k, k, k))
    top, left = offsets[:, 0].to(dev), offsets[:, 1].to(dev)
    rows = ((k - top)[:, None] + torch.arange(h, device=dev))[:, :, None]  # N×H×1
    cols = ((k - left)[:, None] + torch.arange(w, device=dev))[:, None, :]  # N×1×W
    batch = torch.arange(n, device=dev)[:, None, None]
    # advanced indexing puts the indexed dims first: N×H×W×C -> N×C×H×W
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def shrink_pad(x: torch.Tensor, k: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """ShrinkPad (Li §5.1): shrink by ``k`` pixels, then zero-pad back at a random offset per sample.

    Each image is resized bilinearly (``align_corners=False``, no antialiasing) to (H−k)×(W−k) and placed
    on a zero H×W canvas with left/top offsets ``(i, j)`` drawn uniformly from ``0..k`` independently per
    sample (right/bottom margins ``k − i``, ``k − j``), as the authors' toolbox does it — but per sample,
    never one offset per batch (REFERENCE_NOTES.md). ``k = 0`` is the identity. ``k`` must satisfy
    ``0 ≤ k ≤ min(H, W) // 3``. Offsets: two ``randint(0, k + 1, (N,))`` draws (rows, then columns).
    """
    _check_batch(x)
    n, _, h, w = x.shape
    k = check_shrink_size(k, (h, w))
    if k == 0:
        return x
    g = make_generator(gen)
    offsets = torch.stack(
        [
            torch.randint(0, k + 1, (n,), generator=g, device=g.device),
            torch.randint(0, k + 1, (n,), generator=g, device=g.device),
        ],
        dim=1,
    )
    small = F.interpolate(x, size=(h - k, w - k), mode="bilinear", align_corners=False, antialias=False)
    # interpolation weights can sum to 1 + ulp: clip so the output stays in [0, 1] (Li Def. 3)
    return _place(small.clamp(0.0, 1.0), k, offsets)


def random_shrink_pad(x: torch.Tensor, max_k: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Random ShrinkPad (Li §4.2, §5.3): per sample a size ``k ~ U{0..max_k}``, then :func:`shrink_pad`.

    The enhanced attacks' random transformation layer ("random Flip followed by random ShrinkPad", with
    ``max_k = 4`` in Li §5.3). Batched by size: one :func:`shrink_pad` call per distinct ``k`` (at most
    ``max_k + 1`` groups), never per sample. Draw order: the N sizes, then offsets for each size in
    increasing order.
    """
    _check_batch(x)
    n, _, h, w = x.shape
    max_k = check_shrink_size(max_k, (h, w), what="maximal shrink size max_k")
    if max_k == 0 or n == 0:
        return x
    g = make_generator(gen)
    sizes = torch.randint(0, max_k + 1, (n,), generator=g, device=g.device).cpu()
    out = x
    for k in range(1, max_k + 1):
        idx = (sizes == k).nonzero().squeeze(1)
        if len(idx):
            idx = idx.to(x.device)
            out = out.index_copy(0, idx, shrink_pad(x.index_select(0, idx), k, g))
    return out


# ---------------------------------------------------------------------------------------------------------
# non-spatial transformations (Li §5.2)
# ---------------------------------------------------------------------------------------------------------
def gaussian_noise(x: torch.Tensor, std: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """Additive Gaussian noise N(0, (std/255)²), clipped to [0, 1] (Li §5.2, Table 3).

    ``std`` is on the 0–255 scale as Li state it (5, 10, 15, 20) and divided by 255 here; ``std = 0`` is
    the identity. The noise is drawn with ``torch.randn`` on the generator's device.
    """
    _check_batch(x)
    std = check_noise_std(std)
    if std == 0:
        return x
    g = make_generator(gen)
    noise = torch.randn(x.shape, generator=g, device=g.device).to(device=x.device, dtype=x.dtype)
    return (x + noise * (std / 255.0)).clamp(0.0, 1.0)


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """N×1×H×W luma (ITU-R 601-2 weights, as torchvision) of an RGB batch; a 1-channel batch as is."""
    if x.shape[-3] == 1:
        return x
    r, g, b = x.unbind(-3)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(-3)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """``ratio·a + (1 − ratio)·b`` per sample, clipped to [0, 1] (torchvision's ``_blend``)."""
    r = ratio[:, None, None, None]
    return (r * a + (1 - r) * b).clamp(0.0, 1.0)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """N×3×H×W RGB in [0, 1] to HSV with every channel in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = x.unbind(-3)
    maxc, _ = x.max(dim=-3)
    minc, _ = x.min(dim=-3)
    delta = maxc - minc
    grey = delta == 0
    sat = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    d = torch.where(grey, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~is_r & ~is_g
    hue = is_r * (bc - gc) + is_g * (2.0 + rc - bc) + is_b * (4.0 + gc - rc)
    hue = torch.where(grey, torch.zeros_like(hue), hue)
    hue = torch.remainder(hue / 6.0, 1.0)
    return torch.stack([hue, sat, maxc], dim=-3)


# which of (v, p, q, t) gives R, G, B in each of the six hue sectors
_SECTOR_TABLE = (
    (0, 2, 1, 1, 3, 0),  # R: v q p p t v
    (3, 0, 0, 2, 1, 1),  # G: t v v q p p
    (1, 1, 3, 0, 0, 2),  # B: p p t v v q
)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_rgb_to_hsv` (the six-sector formula), batched with one-hot sector masks."""
    h, s, v = x.unbind(-3)
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.long().remainder(6)
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    vpqt = torch.stack([v, p, q, t], dim=-3)  # N×4×H×W
    onehot = F.one_hot(sector, 6).to(x.dtype)  # N×H×W×6
    table = torch.tensor(_SECTOR_TABLE, device=x.device)  # 3×6
    select = F.one_hot(table, 4).to(x.dtype)  # 3×6×4: channel, sector -> which of v, p, q, t
    return torch.einsum("nhws,csk,nkhw->nchw", onehot, select, vpqt)


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, 0] + shift[:, None, None], 1.0)
    return _hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1))


def color_jitter(
    x: torch.Tensor,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """torchvision's ``ColorJitter`` re-implemented in torch, batched, one random factor per sample (Li §5.2).

    - brightness ``B``: ``x·b`` with ``b ~ U[max(0, 1 − B), 1 + B]``;
    - contrast ``C``: blend with the mean of the image's grayscale version, ``c ~ U[max(0, 1 − C), 1 + C]``;
    - saturation ``S``: blend with the grayscale image, ``s ~ U[max(0, 1 − S), 1 + S]``;
    - hue ``H`` (≤ 0.5): rotate the hue by ``h ~ U[−H, H]`` turns through RGB→HSV→RGB.

    Each step clips to [0, 1] as torchvision does. A strength of 0 skips its step (all zero: the
    identity). For 1-channel images saturation and hue are the identity (as torchvision/PIL). Draw order
    from ``gen``: one permutation of the four steps per call (torchvision draws one per call too; here it
    orders the steps for the whole batch), then the per-sample factors of the enabled steps in the order
    brightness, contrast, saturation, hue.
    """
    _check_batch(x)
    brightness, contrast, saturation, hue = check_jitter(brightness, contrast, saturation, hue)
    if brightness == contrast == saturation == hue == 0:
        return x
    g = make_generator(gen)
    n, c = x.shape[0], x.shape[1]
    order = torch.randperm(4, generator=g, device=g.device).tolist()

    def factor(strength: float) -> torch.Tensor:
        return _uniform(n, max(0.0, 1.0 - strength), 1.0 + strength, g, x)

    b = factor(brightness) if brightness else None
    ct = factor(contrast) if contrast else None
    s = factor(saturation) if saturation else None
    h = _uniform(n, -hue, hue, g, x) if hue else None
    for step in order:
        if step == 0 and b is not None:
            x = (x * b[:, None, None, None]).clamp(0.0, 1.0)
        elif step == 1 and ct is not None:
            mean = rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
            x = _blend(x, mean, ct)
        elif step == 2 and s is not None and c == 3:
            x = _blend(x, rgb_to_grayscale(x), s)
        elif step == 3 and h is not None and c == 3:
            x = _adjust_hue(x, h)
    return x


# ---------------------------------------------------------------------------------------------------------
# physical-world imitation (Li §5.5)
# ---------------------------------------------------------------------------------------------------------
_CORNERS = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))  # TL, TR, BR, BL in (x, y), normalised


def _homography_to_corners(dst: torch.Tensor) -> torch.Tensor:
    """N×3×3 homographies mapping the quadrilaterals ``dst`` (N×4×2) onto the canonical corners ±1.

    Solves the usual 8×8 linear system per sample (``h33 = 1``) in float64, batched.
    """
    n = dst.shape[0]
    src = torch.tensor(_CORNERS, dtype=torch.float64, device=dst.device).expand(n, 4, 2)
    d = dst.to(torch.float64)
    xd, yd = d[..., 0], d[..., 1]
    u, v = src[..., 0], src[..., 1]
    one, zero = torch.ones_like(xd), torch.zeros_like(xd)
    rows_u = torch.stack([xd, yd, one, zero, zero, zero, -xd * u, -yd * u], dim=-1)  # N×4×8
    rows_v = torch.stack([zero, zero, zero, xd, yd, one, -xd * v, -yd * v], dim=-1)
    a = torch.cat([rows_u, rows_v], dim=1)  # N×8×8
    rhs = torch.cat([u, v], dim=1)  # N×8
    sol = torch.linalg.solve(a, rhs)
    return torch.cat([sol, torch.ones(n, 1, dtype=sol.dtype, device=sol.device)], dim=1).reshape(n, 3, 3)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with one ``sigma`` per sample: a grouped (depthwise) conv over N·C channels.

    The kernel width is set by ``max_sigma`` (radius ⌈3σ⌉) and shared; a smaller sigma just has
    near-zero tails. Edges are replicated. Kernels are normalised, so the result stays in [0, 1].
    """
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3.0 * max_sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    sig = sigma.clamp_min(1e-3)[:, None]
    kern = torch.exp(-0.5 * (t[None, :] / sig) ** 2)
    kern = kern / kern.sum(dim=1, keepdim=True)  # N×K
    kern = kern.repeat_interleave(c, dim=0)  # (N·C)×K
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, kern[:, None, None, :], groups=n * c)  # along W
    y = F.conv2d(y, kern[:, None, :, None], groups=n * c)  # along H
    return y.reshape(n, c, h, w).clamp(0.0, 1.0)


def physical(
    x: torch.Tensor,
    gen: torch.Generator | None = None,
    *,
    perspective: float | None = 0.2,
    scale: tuple[float, float] | None = (0.8, 1.0),
    rotation: float | None = 10.0,
    blur: float | None = 1.0,
    brightness: float | None = 0.2,
    padding: str = "border",
) -> torch.Tensor:
    """An imitation of printing a picture and photographing it (Li §5.5, physical attack).

    Per sample, in this order:

    1. geometry, one bilinear ``grid_sample`` — a random perspective warp (each corner of the picture
       moves by up to ``perspective`` × half the image side along each axis, in [0, 0.5], as torchvision's
       ``RandomPerspective`` distortion scale), a random scale ``s ~ U[scale]`` (< 1: the picture looks
       smaller, as from farther away) and a rotation ``U[−rotation, rotation]`` degrees. Outside the
       picture, ``padding="border"`` repeats the edge pixels, imitating a photo background that
       continues the picture's surroundings rather than a black frame (which would look like ShrinkPad);
       ``"zeros"`` and ``"reflection"`` are the other ``grid_sample`` options;
    2. camera blur: a Gaussian with ``sigma ~ U[0, blur]`` pixels (depthwise conv, per-sample kernels);
    3. exposure: brightness factor ``U[max(0, 1 − brightness), 1 + brightness]``, clipped to [0, 1].

    A parameter that is 0 or ``None`` disables its part; all disabled is the identity. Draw order from
    ``gen``: perspective (8 per sample), scale, rotation, blur sigma, brightness.
    """
    _check_batch(x)
    if perspective is not None and (not _is_number(perspective) or not 0 <= perspective <= 0.5):
        raise BackdoorLabError(f"physical perspective must be a number in [0, 0.5], got {perspective!r}")
    if scale is not None:
        ok = isinstance(scale, Sequence) and len(scale) == 2 and all(_is_number(v) for v in scale)
        if not ok or not 0 < scale[0] <= scale[1] <= 4:
            raise BackdoorLabError(
                f"physical scale must be (low, high) with 0 < low ≤ high ≤ 4, got {scale!r}"
            )
    if rotation is not None and (not _is_number(rotation) or not 0 <= rotation <= 180):
        raise BackdoorLabError(f"physical rotation must be a number of degrees in [0, 180], got {rotation!r}")
    if blur is not None and (not _is_number(blur) or not 0 <= blur <= 10):
        raise BackdoorLabError(f"physical blur must be a sigma in pixels in [0, 10], got {blur!r}")
    if brightness is not None and (not _is_number(brightness) or not 0 <= brightness <= 1):
        raise BackdoorLabError(f"physical brightness must be a number in [0, 1], got {brightness!r}")
    if padding not in ("border", "zeros", "reflection"):
        raise BackdoorLabError(f"physical padding must be one of: border, reflection, zeros; got {padding!r}")

    g = make_generator(gen)
    n, _, h, w = x.shape
    if n == 0:
        return x
    dev = x.device
    f64 = torch.float64

    def draw(shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
        u = torch.rand(shape, generator=g, device=g.device)
        return (lo + (hi - lo) * u).to(device=dev, dtype=f64)

    warp = torch.eye(3, dtype=f64, device=dev).expand(n, 3, 3)
    geometric = False
    if perspective:
        corners = torch.tensor(_CORNERS, dtype=f64, device=dev) + draw((n, 4, 2), -perspective, perspective)
        warp = _homography_to_corners(corners)  # camera (output) coords -> picture coords
        geometric = True
    if (scale is not None and tuple(scale) != (1.0, 1.0)) or rotation:
        s = draw((n,), scale[0], scale[1]) if scale is not None else torch.ones(n, dtype=f64, device=dev)
        angle = draw((n,), -rotation, rotation) if rotation else torch.zeros(n, dtype=f64, device=dev)
        theta = torch.deg2rad(angle)
        cos, sin = torch.cos(theta) / s, torch.sin(theta) / s
        # rotate and scale in pixel units (so non-square images are not sheared): P⁻¹ · R(−θ)/s · P
        aspect = w / h
        affine = torch.zeros(n, 3, 3, dtype=f64, device=dev)
        affine[:, 0, 0], affine[:, 0, 1] = cos, sin / aspect
        affine[:, 1, 0], affine[:, 1, 1] = -sin * aspect, cos
        affine[:, 2, 2] = 1.0
        warp = affine @ warp
        geometric = True
    if geometric:
        ys = (2 * torch.arange(h, dtype=f64, device=dev) + 1) / h - 1
        xs = (2 * torch.arange(w, dtype=f64, device=dev) + 1) / w - 1
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        base = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(1, h * w, 3)
        pts = base @ warp.transpose(1, 2)  # N×HW×3
        grid = (pts[..., :2] / pts[..., 2:]).reshape(n, h, w, 2).to(x.dtype)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)
        x = x.clamp(0.0, 1.0)
    if blur:
        sigma = draw((n,), 0.0, blur).to(x.dtype)
        x = _gaussian_blur(x, sigma, blur)
    if brightness:
        factor = draw((n,), max(0.0, 1.0 - brightness), 1.0 + brightness).to(x.dtype)
        x = (x * factor[:, None, None, None]).clamp(0.0, 1.0)
    return x
