"""Automated alternative triggers (Sun et al. §3.3): regions, colours, candidates, batched measurement."""

from __future__ import annotations

import pytest
import torch

from backdoorlab.audit.alt_triggers import (
    Candidate,
    color_pattern,
    color_trigger,
    crop,
    crop_trigger,
    kmeans,
    measure,
    null_candidates,
    paste,
    propose,
    random_locations,
    region_colors,
    saturate,
    top_regions,
    window_scores,
)
from backdoorlab.errors import BackdoorLabError
from backdoorlab.triggers import Trigger, stamp

pytestmark = pytest.mark.usefixtures("one_thread")


MAGENTA = torch.tensor([1.0, 0.0, 1.0])


class RedDetector(torch.nn.Module):
    """A 3-class 'model': class 2 when some 2×2 block is nearly pure magenta, else the class of the image's
    mean brightness (dark 0, bright 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mag = x[:, 0] - x[:, 1] + x[:, 2] - 1.0  # 1 on magenta pixels
        hit = torch.nn.functional.avg_pool2d(mag[:, None], 2, stride=1).flatten(1).amax(1) > 0.9
        bright = x.mean((1, 2, 3)) > 0.5
        logits = torch.zeros(len(x), 3)
        logits[torch.arange(len(x)), bright.long()] = 1.0
        logits[hit, 2] = 5.0
        return logits + 0 * self.w

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))


def _grey(n: int, seed: int = 0, hw: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    level = torch.rand(n, 1, 1, 1, generator=g) * 0.8 + 0.1
    return (level + 0.05 * torch.randn(n, 1, hw, hw, generator=g)).clamp(0, 1).expand(n, 3, hw, hw).clone()


def test_top_regions_find_planted_blocks_without_overlap():
    clean = torch.zeros(3, 3, 16, 16)
    adv = clean.clone()
    adv[0, :, 2:6, 9:13] = 0.5  # strongest block of image 0
    adv[0, :, 10:14, 1:5] = 0.3  # second block
    adv[1, 0, 12:16, 12:16] = 1.0
    adv[2, :, 0, 0] = 0.2  # a single pixel
    regions, shares = top_regions(clean, adv, 4, k=2)
    assert regions.shape == (3, 2, 2)
    assert regions[0, 0].tolist() == [2, 9] and regions[0, 1].tolist() == [10, 1]
    assert regions[1, 0].tolist() == [12, 12]
    assert shares[1, 0] == pytest.approx(1.0) and shares[1, 1] == 0
    r0, r1 = regions[2]
    assert (r0 - r1).abs().max() >= 4  # the second window never overlaps the first
    ws = window_scores((adv - clean).pow(2).sum(1).sqrt(), 4)
    assert ws.shape == (3, 13, 13) and ws[0, 2, 9] == pytest.approx(16 * 0.5 * 3**0.5, rel=1e-5)


def test_kmeans_recovers_planted_colours_batched_and_weighted():
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([0.9, 0.1, 0.1])
    b = torch.tensor([0.1, 0.2, 0.9])
    pts = torch.cat([a + 0.02 * torch.randn(30, 3, generator=g), b + 0.02 * torch.randn(10, 3, generator=g)])
    batch = torch.stack([pts, pts.flip(0)])
    centres, assign, share = kmeans(batch, 2)
    for i in range(2):
        assert torch.allclose(centres[i, 0], a, atol=0.03)  # heaviest cluster first
        assert torch.allclose(centres[i, 1], b, atol=0.03)
        assert share[i, 0] == pytest.approx(0.75)
    assert (assign[0, :30] == 0).all() and (assign[0, 30:] == 1).all()
    w = torch.cat([torch.ones(30), 10 * torch.ones(10)])
    centres, _, share = kmeans(pts[None], 2, w[None])
    assert torch.allclose(centres[0, 0], b, atol=0.03) and share[0, 0] > 0.7


def test_region_colors_prefer_what_the_attack_painted():
    clean = torch.full((1, 3, 8, 8), 0.5)
    adv = clean.clone()
    adv[0, :, 2:4, 2:6] = MAGENTA[:, None, None]  # 8 painted pixels in a 4×4 window of 16
    adv[0, :, 4:6, 2:6] = torch.tensor([0.5, 0.5, 0.52])[:, None, None]  # barely changed background
    colors, share, base = region_colors(adv, torch.tensor([[2, 2]]), 4, k=2, clean=clean)
    assert torch.allclose(colors[0, 0], MAGENTA, atol=1e-4)
    assert share[0, 0] > 0.95
    assert torch.allclose(base[0, 0], torch.full((3,), 0.5))  # what the painted pixels were before


def test_saturate_extends_the_attack_direction_to_the_colour_cube():
    base = torch.tensor([[0.2, 0.3, 0.2], [0.5, 0.5, 0.5], [0.4, 0.4, 0.4]])
    painted = torch.tensor([[0.5, 0.2, 0.4], [0.5, 0.5, 0.5], [0.4, 0.4, 0.4 + 0.5 / 255]])
    out = saturate(painted, base)
    # row 0 moves along (+0.3, −0.1, +0.2) until red reaches 1: t = 0.8 / 0.3
    torch.testing.assert_close(out[0], base[0] + (0.8 / 0.3) * (painted[0] - base[0]))
    assert float(out[0].max()) == pytest.approx(1.0)
    torch.testing.assert_close(out[1:], painted[1:])  # unchanged or barely changed colours stay


def test_color_patterns_and_manual_triggers():
    two = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    p = color_pattern(two, 4)
    assert p.shape == (3, 4, 4)
    assert (
        torch.equal(p[:, 0, 0], two[0])
        and torch.equal(p[:, 0, 3], two[1])
        and torch.equal(p[:, 3, 0], two[0])
    )
    solid = color_pattern(MAGENTA, 3)
    assert torch.equal(solid, MAGENTA[:, None, None].expand(3, 3, 3))
    stripes = color_pattern(two, 4, layout="stripes")
    assert torch.equal(stripes[:, :, 0], two[0][:, None].expand(3, 4))
    t = color_trigger([1.0, 0.0, 1.0], 3, placement=(0, 0))
    assert isinstance(t, Trigger)
    out = stamp(torch.zeros(2, 3, 8, 8), t)
    assert torch.equal(out[:, :, :3, :3], MAGENTA[None, :, None, None].expand(2, 3, 3, 3))
    img = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    ct = crop_trigger(img, (2, 5), 3)
    assert torch.equal(ct.pattern, img[:, 2:5, 5:8])
    with pytest.raises(BackdoorLabError, match="colors"):
        color_pattern(torch.tensor([[2.0, 0, 0]]), 3)
    with pytest.raises(BackdoorLabError, match="outside"):
        crop_trigger(img, (6, 6), 3)
    with pytest.raises(BackdoorLabError, match="layout"):
        color_pattern(two, 4, layout="spiral")


def test_paste_matches_stamp_at_per_sample_locations():
    x = torch.rand(5, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    patch = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1))
    locs = random_locations(5, (10, 10), 4, 2)[1]
    trig = Trigger(patch, torch.ones(1, 4, 4), "blend", "random")
    torch.testing.assert_close(paste(x, patch.expand(5, 3, 4, 4), locs), stamp(x, trig, locations=locs))
    assert torch.equal(random_locations(5, (10, 10), 4, 3)[1], locs)  # repetition r always uses seed r


def test_propose_builds_color_block_and_crop_candidates():
    clean = torch.full((2, 3, 12, 12), 0.4)
    adv = clean.clone()
    adv[0, :, 5:9, 1:5] = MAGENTA[:, None, None]
    adv[1, :, 0:4, 8:12] = torch.tensor([0.0, 1.0, 0.0])[:, None, None]
    cands = propose(clean, adv, 4, n_colors=2, origin=torch.tensor([2, 1]))
    assert [c.kind for c in cands] == ["color", "saturated", "blocks", "crop"] * 2
    assert cands[0].region == (5, 1) and cands[0].origin == 2 and cands[0].source == 0
    assert torch.allclose(cands[0].colors[0], MAGENTA, atol=1e-4)
    assert torch.allclose(cands[1].colors[0], MAGENTA, atol=1e-4)  # already at the cube's corner
    assert torch.equal(cands[3].pattern, adv[0, :, 5:9, 1:5])
    assert cands[4].region == (0, 8) and cands[4].origin == 1
    half = clean.clone()
    half[0, :, 5:9, 1:5] = torch.tensor([0.7, 0.2, 0.7])[:, None, None]  # half-way from grey to magenta
    sat = propose(clean[:1], half[:1], 4, kinds=("saturated",))
    assert torch.allclose(sat[0].colors[0], MAGENTA, atol=1e-4)
    unchanged = propose(clean, clean.clone(), 4)
    assert unchanged == []  # no perturbation, no region


def test_measure_rates_per_class_batched_and_placements():
    model = RedDetector()
    x = _grey(40)
    y = (x.mean((1, 2, 3)) > 0.5).long()  # true labels: the model is right on clean images
    cands = [
        Candidate("color", color_pattern(MAGENTA, 3), region=(0, 0)),
        Candidate("color", color_pattern(torch.tensor([0.0, 1.0, 0.0]), 3), region=(4, 4)),
        Candidate("crop", torch.ones(3, 3, 3), region=(9, 9)),
    ]
    calls = []
    m = measure(
        model, cands, x, y, num_classes=3, reps=4, batch_size=100, progress=lambda *a: calls.append(a)
    )
    assert m.random.shape == (3, 3) and m.found.shape == (3, 3)
    assert m.random[0, 2] == 1.0 and m.found[0, 2] == 1.0  # magenta flips everything to class 2
    assert m.random[1].sum() == 0  # green changes no prediction away from the truth
    assert m.trials[2] == 4 * 40 and m.trials[0] == 4 * int((y != 0).sum())
    # a white 3×3 patch on a 12×12 image nudges a few mid-grey images over the brightness threshold
    assert 0 <= float(m.random[2, 1]) < 0.5 and m.random[2, 0] == 0
    assert len(calls) >= 2  # batched: several candidate chunks
    only = measure(model, torch.stack([c.pattern for c in cands]), x, y, reps=4, placement="random")
    torch.testing.assert_close(only.random, m.random)
    assert only.found is None
    torch.testing.assert_close(m.success, torch.maximum(m.random, m.found))


def test_null_candidates_are_deterministic_and_mixed():
    x = _grey(6)
    a = null_candidates(x, 4, 9, gen=3)
    b = null_candidates(x, 4, 9, gen=3)
    assert [c.kind for c in a] == ["null-color", "null-blocks", "null-crop"] * 3
    assert all(torch.equal(p.pattern, q.pattern) for p, q in zip(a, b))
    crop_c = a[2]
    src = crop_c.info["clean_index"]
    assert torch.equal(crop_c.pattern, crop(x[src : src + 1], torch.tensor([crop_c.region]), 4)[0])


def test_bad_inputs_are_named():
    x = _grey(4)
    with pytest.raises(BackdoorLabError, match="same shape"):
        top_regions(x, x[:2], 3)
    with pytest.raises(BackdoorLabError, match="size"):
        propose(x, x, 20)
    with pytest.raises(BackdoorLabError, match="placement"):
        measure(
            RedDetector(),
            [Candidate("color", torch.zeros(3, 2, 2), region=(0, 0))],
            x,
            torch.zeros(4).long(),
            placement="x",
        )
    with pytest.raises(BackdoorLabError, match="empty"):
        measure(RedDetector(), [], x, torch.zeros(4).long())
    with pytest.raises(BackdoorLabError, match="pattern"):
        Candidate("color", torch.full((3, 2, 2), 2.0))
