"""``shapes``: a procedural RGB dataset of ten drawn shapes, generated from a seed in batched torch.

Each image is one shape (the class) drawn with a random position, scale, small rotation and aspect
jitter, filled with a random colour and texture (solid, stripes, checker, noise) over a random background
(solid, gradient or blotchy noise), plus a little pixel noise. Foreground and background colours are drawn
independently of the class, so colour carries no label information: a model has to learn shape, which
makes the set a fair stand-in for colour-trigger work and fast enough to generate inside tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from backdoorlab.data.registry import register_dataset
from backdoorlab.data.tensors import ImageTensors, make_generator
from backdoorlab.errors import BackdoorLabError

SHAPE_CLASSES = (
    "circle",
    "square",
    "triangle",
    "plus",
    "ring",
    "horizontal_bar",
    "vertical_bar",
    "diamond",
    "star",
    "ellipse",
)

_SQRT3_2 = math.sqrt(3) / 2


def _sdf(label: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance (approximate; < 0 inside) of shape ``label`` in units of the shape's radius."""
    au, av = u.abs(), v.abs()
    rho = torch.sqrt(u * u + v * v)
    if label == 0:  # circle
        return rho - 0.9
    if label == 1:  # square
        return torch.maximum(au, av) - 0.75
    if label == 2:  # triangle, apex up (v grows downwards), circumradius 1
        edges = torch.stack((v, _SQRT3_2 * u - 0.5 * v, -_SQRT3_2 * u - 0.5 * v))
        return edges.amax(0) - 0.5
    if label == 3:  # plus
        return torch.minimum(torch.maximum(au - 0.95, av - 0.28), torch.maximum(au - 0.28, av - 0.95))
    if label == 4:  # ring
        return (rho - 0.7).abs() - 0.22
    if label == 5:  # horizontal bar
        return torch.maximum(au - 0.95, av - 0.3)
    if label == 6:  # vertical bar
        return torch.maximum(au - 0.3, av - 0.95)
    if label == 7:  # diamond
        return (au + av) / math.sqrt(2) - 0.68
    if label == 8:  # five-pointed star: radius modulated by a triangle wave of the angle
        phase = (torch.atan2(u, -v) * (5 / (2 * math.pi))) % 1.0
        spike = 1.0 - (2.0 * phase - 1.0).abs()  # 1 at a point's tip... 0 between points
        return rho - (0.42 + 0.58 * (1.0 - spike))
    if label == 9:  # ellipse, 2:1
        return (torch.sqrt(u * u + (2.0 * v) ** 2) - 0.95) * 0.5
    raise AssertionError(label)


def _texture(kind: torch.Tensor, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-sample N×1×H×W texture in [-1, 1]: 0 solid, 1 stripes, 2 checker, 3 noise (drawn where used)."""
    n, h, w = kind.shape[0], y.shape[1], x.shape[2]
    freq = 0.6 + 0.9 * torch.rand(n, 1, 1, generator=gen)  # radians per pixel
    angle = torch.rand(n, 1, 1, generator=gen) * math.pi
    phase = torch.rand(n, 1, 1, generator=gen) * 2 * math.pi
    noise = torch.rand(int((kind == 3).sum()), h, w, generator=gen) * 2 - 1
    tex = torch.zeros(n, h, w)
    periodic = (kind == 1) | (kind == 2)
    idx = periodic.nonzero().squeeze(1)
    if len(idx):
        f, a, ph = freq[idx], angle[idx], phase[idx]
        s = torch.sin(f * (x * torch.cos(a) + y * torch.sin(a)) + ph)
        checker = (kind[idx] == 2).view(-1, 1, 1)
        t = torch.sin(f * (y * torch.cos(a) - x * torch.sin(a)) + ph)
        tex[idx] = torch.sign(torch.where(checker, s * t, s))
    tex[kind == 3] = noise
    return tex.unsqueeze(1)


def _background(
    n: int, size: int, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """N×3×H×W backgrounds (unclamped) and their base colours: solid, linear gradient or blotchy noise."""
    c1 = torch.rand(n, 3, 1, 1, generator=gen)
    c2 = torch.rand(n, 3, 1, 1, generator=gen)
    kind = torch.randint(0, 3, (n,), generator=gen)
    angle = torch.rand(n, 1, 1, generator=gen) * 2 * math.pi
    coarse = torch.rand(int((kind == 2).sum()), 3, 4, 4, generator=gen) * 2 - 1
    bg = c1.expand(n, 3, size, size).clone()
    g = (kind == 1).nonzero().squeeze(1)
    if len(g):
        a = angle[g]
        ramp = ((x * torch.cos(a) + y * torch.sin(a)) / (size * math.sqrt(2)) + 0.5).clamp_(0, 1)
        bg[g] += (c2[g] - c1[g]) * ramp.unsqueeze(1)
    b = (kind == 2).nonzero().squeeze(1)
    if len(b):
        bg[b] += 0.35 * F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return bg, c1


def generate_shapes(n: int, seed: int | torch.Generator = 0, size: int = 32) -> ImageTensors:
    """``n`` shape images (3×size×size uint8), classes balanced (counts differ by ≤ 1) in a seeded order."""
    if n < 1:
        raise BackdoorLabError(f"number of shape images must be ≥ 1, got {n}")
    if size < 8:
        raise BackdoorLabError(f"shapes size must be ≥ 8 pixels, got {size}")
    gen = make_generator(seed)
    k = len(SHAPE_CLASSES)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=gen)]

    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = coords.view(1, size, 1), coords.view(1, 1, size)

    # geometry: radius in pixels, centre keeping most of the shape inside, rotation ±15°, aspect jitter
    radius = size * (0.24 + 0.2 * torch.rand(n, 1, 1, generator=gen))
    room = (size / 2 - radius * 0.8).clamp(min=0)
    cx = size / 2 + room * (torch.rand(n, 1, 1, generator=gen) * 2 - 1)
    cy = size / 2 + room * (torch.rand(n, 1, 1, generator=gen) * 2 - 1)
    theta = (torch.rand(n, 1, 1, generator=gen) * 2 - 1) * math.radians(15)
    aspect = 0.9 + 0.2 * torch.rand(n, 1, 1, generator=gen)
    dx, dy = x - cx, y - cy
    cos, sin = torch.cos(theta), torch.sin(theta)
    u = (dx * cos + dy * sin).div_(radius * aspect)
    v = (dy * cos - dx * sin).mul_(aspect / radius)

    sdf = torch.empty(n, size, size)
    for c in range(k):
        idx = (labels == c).nonzero().squeeze(1)
        if len(idx):
            sdf[idx] = _sdf(c, u[idx], v[idx])
    mask = sdf.mul_(-radius).add_(0.5).clamp_(0, 1).unsqueeze(1)  # about one pixel of anti-aliasing

    img, bg_colour = _background(n, size, x, y, gen)
    fg = torch.rand(n, 3, 1, 1, generator=gen)
    # keep the shape visible: a colour too close to the background's is replaced by its opposite
    close = (fg - bg_colour).norm(dim=1, keepdim=True) < 0.4
    fg = torch.where(close, (bg_colour + 0.5) % 1.0, fg)
    tex_kind = torch.randint(0, 4, (n,), generator=gen)
    amp = 0.15 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen)
    texture = _texture(tex_kind, x, y, gen).mul_(amp)
    pixel_noise = torch.rand(n, 1, size, size, generator=gen).sub_(0.5).mul_(0.1)

    # img = background + mask * (textured foreground - background), then grey pixel noise, then quantise
    img.clamp_(0, 1)
    delta = (fg - img).add_(texture).mul_(mask)
    img.add_(delta).add_(pixel_noise)
    images = img.mul_(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8)
    return ImageTensors(images, labels, SHAPE_CLASSES, name="shapes")


@register_dataset(
    "shapes",
    "procedural RGB shapes (10 classes) with colour, texture, position and background varied; from a seed",
    (3, 32, 32),
    10,
    "generated in memory (no files): n_train, n_test, seed, size",
)
def load_shapes(
    n_train: int = 5000, n_test: int = 1000, seed: int = 0, size: int = 32
) -> tuple[ImageTensors, ImageTensors]:
    """``(train, test)`` of procedural shapes; the same ``seed`` gives identical tensors."""
    if n_train < 1 or n_test < 1:
        raise BackdoorLabError(f"n_train and n_test must be ≥ 1, got {n_train} and {n_test}")
    gen = make_generator(seed)
    train = generate_shapes(n_train, gen, size)
    test = generate_shapes(n_test, gen, size)
    meta = {"seed": seed}
    return train.with_images(train.images, **meta), test.with_images(test.images, **meta)
