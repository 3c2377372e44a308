"""Trigger construction and stamping (triggers.py)."""

from __future__ import annotations

import json

import pytest
import torch

from backdoorlab.errors import BackdoorLabError
from backdoorlab.triggers import (
    Placement,
    Trigger,
    TriggerSet,
    blended,
    checkerboard,
    four_corner,
    from_config,
    from_image,
    li_badnets,
    list_triggers,
    make_trigger,
    random_color_patch,
    square,
    stamp,
    turner_amplitude,
    turner_pattern,
)


def _images(n: int = 5, c: int = 3, h: int = 10, w: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(seed))


def _expected_paste(x: torch.Tensor, pattern: torch.Tensor, locs: torch.Tensor) -> torch.Tensor:
    """Reference: a per-sample loop that pastes ``pattern`` (C'×h×w) at each location."""
    out = x.clone()
    h, w = pattern.shape[1:]
    for i, (r, c) in enumerate(locs.tolist()):
        out[i, :, r : r + h, c : c + w] = pattern.expand(x.shape[1], h, w)
    return out


def _random_patch(c: int = 3, h: int = 3, w: int = 4, seed: int = 1) -> Trigger:
    g = torch.Generator().manual_seed(seed)
    return Trigger(torch.rand((c, h, w), generator=g), torch.ones(1, h, w))


@pytest.mark.parametrize(
    ("corner", "expected"),
    [("top-left", (0, 0)), ("top-right", (0, 8)), ("bottom-left", (7, 0)), ("bottom-right", (7, 8))],
)
def test_corners_paste_exactly_the_pattern(corner: str, expected: tuple[int, int]) -> None:
    x = _images()
    t = _random_patch().with_placement(corner)
    locs = t.locations(len(x), (10, 12))
    assert locs.tolist() == [list(expected)] * len(x)
    out = stamp(x, t)
    assert torch.equal(out, _expected_paste(x, t.pattern, locs))
    assert torch.equal(x, _images())  # input untouched


def test_margin_and_explicit_and_negative_locations() -> None:
    x = _images()
    t = _random_patch()
    assert t.with_placement(Placement("bottom-right", margin=2)).locations(1, (10, 12)).tolist() == [[5, 6]]
    assert t.with_placement(Placement("top-left", margin=1)).locations(1, (10, 12)).tolist() == [[1, 1]]
    assert t.with_placement((2, 3)).locations(1, (10, 12)).tolist() == [[2, 3]]
    assert t.with_placement((-3, -4)).locations(1, (10, 12)).tolist() == [[7, 8]]
    out = stamp(x, t, locations=(4, 5))
    assert torch.equal(out, _expected_paste(x, t.pattern, torch.tensor([[4, 5]] * 5)))


def test_per_sample_locations_and_random_placement() -> None:
    x = _images()
    t = _random_patch()
    locs = torch.tensor([[0, 0], [7, 8], [3, 2], [5, 1], [1, 6]])
    assert torch.equal(stamp(x, t, locations=locs), _expected_paste(x, t.pattern, locs))
    assert torch.equal(stamp(x, t.with_placement(locs)), _expected_paste(x, t.pattern, locs))

    rnd = t.with_placement("random")
    a = rnd.locations(200, (10, 12), torch.Generator().manual_seed(3))
    b = rnd.locations(200, (10, 12), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a[:, 0].min() == 0 and a[:, 0].max() == 7 and a[:, 1].min() == 0 and a[:, 1].max() == 8
    out = stamp(x, rnd, gen=torch.Generator().manual_seed(4))
    expected_locs = rnd.locations(5, (10, 12), torch.Generator().manual_seed(4))
    assert torch.equal(out, _expected_paste(x, t.pattern, expected_locs))
    assert torch.equal(out, stamp(x, rnd, gen=torch.Generator().manual_seed(4)))


def test_blend_with_alpha_and_channel_broadcast() -> None:
    x = _images(c=3)
    p = torch.rand((1, 3, 3), generator=torch.Generator().manual_seed(5))
    t = Trigger(p, torch.full((1, 3, 3), 0.3), "blend", Placement("top-left"))
    out = stamp(x, t)
    expected = x.clone()
    expected[:, :, :3, :3] = 0.7 * x[:, :, :3, :3] + 0.3 * p
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(out[:, :, 3:], x[:, :, 3:]) and torch.equal(out[:, :, :, 3:], x[:, :, :, 3:])

    grey = _images(c=1)
    assert stamp(grey, square(2, 0.5)).shape == grey.shape
    with pytest.raises(BackdoorLabError, match="3 channels"):
        stamp(grey, _random_patch(c=3))


def test_full_image_blended_trigger() -> None:
    x = _images(c=3, h=8, w=8)
    t = blended(alpha=0.2, shape=(3, 8, 8), seed=1)
    assert torch.equal(t.pattern, blended(alpha=0.2, shape=(3, 8, 8), seed=1).pattern)
    assert torch.allclose(stamp(x, t), 0.8 * x + 0.2 * t.pattern, atol=1e-6)
    img = torch.zeros(16, 16, dtype=torch.uint8) + 255
    t2 = blended(img, alpha=0.5, shape=(3, 8, 8))
    assert t2.pattern.shape == (1, 8, 8) and torch.allclose(stamp(x, t2), 0.5 * x + 0.5)


def test_turner_pattern_layout() -> None:
    x = _images(c=3, h=8, w=8)
    out = stamp(x, turner_pattern())
    patch = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    assert torch.equal(out[:, :, 5:, 5:], patch.expand(5, 3, 3, 3))
    assert torch.equal(out[:, :, :5], x[:, :, :5]) and torch.equal(out[:, :, :, :5], x[:, :, :, :5])


def test_additive_amplitude_clips_and_signs() -> None:
    x = torch.randint(0, 256, (6, 3, 8, 8), generator=torch.Generator().manual_seed(2)).float() / 255
    x[0, :, 5:, 5:] = 1.0  # saturates on W pixels
    x[1, :, 5:, 5:] = 0.0  # saturates on B pixels
    t = turner_amplitude(16)
    assert t.mode == "add"
    out = stamp(x, t)
    w_mask = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.bool)
    region, orig = out[:, :, 5:, 5:], x[:, :, 5:, 5:]
    a = 16 / 255
    assert torch.allclose(region[..., w_mask], (orig[..., w_mask] + a).clamp(max=1), atol=1e-6)
    assert torch.allclose(region[..., ~w_mask], (orig[..., ~w_mask] - a).clamp(min=0), atol=1e-6)
    assert torch.all(region[0][..., w_mask] == 1.0) and torch.all(region[1][..., ~w_mask] == 0.0)
    assert torch.equal(out[:, :, :5], x[:, :, :5])
    with pytest.raises(BackdoorLabError, match="amplitude"):
        turner_amplitude(300)


@pytest.mark.parametrize(
    "bad", [0, 0.0, -0.0, -16, 255.5, 300, 10**400, float("inf"), float("nan"), True, "32", None]
)
def test_amplitude_outside_0_255_is_a_named_error(bad: object) -> None:
    """0 adds nothing (it used to be accepted): every amplitude outside (0, 255] names the valid range."""
    msg = r"trigger parameter 'amplitude' must be a number in \(0, 255\]"
    with pytest.raises(BackdoorLabError, match=msg):
        turner_amplitude(bad)  # type: ignore[arg-type]
    with pytest.raises(BackdoorLabError, match=msg):
        make_trigger("turner-amplitude", amplitude=bad)
    with pytest.raises(BackdoorLabError, match=msg):
        four_corner({"kind": "turner-amplitude", "amplitude": bad})


@pytest.mark.parametrize("amplitude", [0, -8])
def test_amplitude_error_from_a_yaml_config(tmp_path, amplitude: int) -> None:
    """The same named error from an experiment YAML's trigger params, prefixed with the config field."""
    from backdoorlab.experiments.config import load_config
    from backdoorlab.experiments.runner import build_attack

    path = tmp_path / "exp.yaml"
    path.write_text(
        "attack: {name: clean-label, target: 1, rate: 0.5, "
        f"trigger: {{kind: turner-amplitude, params: {{amplitude: {amplitude}}}}}}}\n"
    )
    cfg = load_config(path)
    with pytest.raises(
        BackdoorLabError,
        match=r"^attack\.trigger: trigger parameter 'amplitude' must be a number in \(0, 255\]",
    ):
        build_attack(cfg, 4)


def test_smallest_and_largest_amplitudes_are_valid() -> None:
    assert turner_amplitude(1e-3).pattern.abs().max() == pytest.approx(1e-3 / 255)
    assert turner_amplitude(255).pattern.abs().max() == 1.0


def test_four_corner_mirrors_on_the_left() -> None:
    x = _images(c=3, h=9, w=9)
    trig = four_corner()
    assert isinstance(trig, TriggerSet) and len(trig.triggers) == 4
    out = stamp(x, trig)
    right = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    left = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])  # W B B / B W B / W B W
    assert torch.equal(out[:, :, :3, 6:], right.expand(5, 3, 3, 3))
    assert torch.equal(out[:, :, 6:, 6:], right.expand(5, 3, 3, 3))
    assert torch.equal(out[:, :, :3, :3], left.expand(5, 3, 3, 3))
    assert torch.equal(out[:, :, 6:, :3], left.expand(5, 3, 3, 3))
    assert torch.equal(out[:, :, 3:6], x[:, :, 3:6]) and torch.equal(out[:, :, :, 3:6], x[:, :, :, 3:6])

    add = four_corner(turner_amplitude(64))
    assert add.mode == "add"
    out_add = stamp(x, add)
    assert torch.allclose(out_add[:, :, :3, :3], (x[:, :, :3, :3] + (2 * left - 1) * 64 / 255).clamp(0, 1))
    # the full canvas reproduces the stamp
    pattern, mask = add.full_canvas((3, 9, 9))
    canvas = Trigger(pattern, mask, "add", Placement("top-left"))
    assert torch.allclose(stamp(x, canvas), out_add, atol=1e-6)
    pattern, mask = trig.full_canvas((3, 9, 9))
    assert torch.allclose(stamp(x, Trigger(pattern, mask, "blend", "top-left")), out, atol=1e-6)


def test_size_and_location_errors() -> None:
    x = _images(h=4, w=4)
    with pytest.raises(BackdoorLabError, match=r"5×5.*4×4"):
        stamp(x, square(5))
    with pytest.raises(BackdoorLabError, match=r"row 3, col 0"):
        stamp(x, square(2), locations=(3, 0))
    with pytest.raises(BackdoorLabError, match=r"sample 1"):
        stamp(x[:2], square(2), locations=torch.tensor([[0, 0], [0, 3]]))
    with pytest.raises(BackdoorLabError, match="float images"):
        stamp((x * 255).to(torch.uint8), square(2))
    with pytest.raises(BackdoorLabError, match="pattern must lie"):
        Trigger(torch.full((1, 2, 2), 2.0), torch.ones(1, 2, 2))
    with pytest.raises(BackdoorLabError, match="placement"):
        square(placement="middle")


def test_gradients_flow_to_image_pattern_and_mask() -> None:
    x = _images(n=3).requires_grad_(True)
    pattern = torch.rand(3, 3, 3).requires_grad_(True)
    mask = torch.full((1, 3, 3), 0.5).requires_grad_(True)
    t = Trigger(pattern, mask, "blend", "random")
    out = stamp(x, t, gen=torch.Generator().manual_seed(0))
    out.sum().backward()
    assert pattern.grad is not None and torch.allclose(pattern.grad, torch.full_like(pattern, 3 * 0.5))
    assert mask.grad is not None and mask.grad.abs().sum() > 0
    # x: gradient 1 outside the patch, 1 − m = 0.5 inside
    assert x.grad is not None and set(x.grad.unique().tolist()) == {0.5, 1.0}
    # the fixed-location path (slicing) and trigger sets keep gradients too
    pattern.grad = mask.grad = x.grad = None
    stamp(x, four_corner(Trigger(pattern, mask, "blend"))).sum().backward()
    assert torch.allclose(pattern.grad, torch.full_like(pattern, 4 * 3 * 0.5))
    assert mask.grad.abs().sum() > 0 and set(x.grad.unique().tolist()) == {0.5, 1.0}


def test_factories_and_registry() -> None:
    assert li_badnets("0-128").pattern.max() == pytest.approx(128 / 255)
    assert checkerboard(3).pattern[0].tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    rc = random_color_patch(size=8, seed=3)
    assert rc.pattern.shape == (3, 8, 8) and rc.placement.kind == "random"
    assert torch.equal(rc.pattern, random_color_patch(size=8, seed=3).pattern)
    assert set(list_triggers()) >= {
        "square",
        "checkerboard",
        "turner",
        "turner-amplitude",
        "four-corner",
        "blended",
        "random-color",
        "image",
    }
    t = make_trigger("square", size=4, value=0.5, placement="top-left")
    assert t.size == (4, 4) and t.placement.kind == "top-left"
    fc = from_config({"kind": "four-corner", "base": {"kind": "turner-amplitude", "amplitude": 32}})
    assert isinstance(fc, TriggerSet) and fc.mode == "add"
    json.dumps(fc.describe())
    json.dumps(make_trigger("blended", shape=[1, 8, 8]).describe())
    with pytest.raises(BackdoorLabError, match="unknown trigger 'nope'"):
        make_trigger("nope")
    with pytest.raises(BackdoorLabError, match="'sise'"):
        make_trigger("square", sise=3)
    with pytest.raises(BackdoorLabError, match="'size'"):
        make_trigger("square", size=0)
    with pytest.raises(BackdoorLabError, match="'amplitude'"):
        make_trigger("turner-amplitude")


def test_from_image_uses_alpha_as_mask(tmp_path) -> None:
    from PIL import Image

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 128))
    rgba.save(tmp_path / "t.png")
    t = from_image(tmp_path / "t.png")
    assert t.pattern.shape == (3, 4, 4) and torch.allclose(t.mask, torch.full((1, 4, 4), 128 / 255))
    Image.new("L", (5, 5), 200).save(tmp_path / "g.png")
    g = from_image(tmp_path / "g.png", size=3)
    assert g.pattern.shape == (1, 3, 3) and torch.equal(g.mask, torch.ones(1, 3, 3))
    with pytest.raises(BackdoorLabError, match="not found"):
        from_image(tmp_path / "missing.png")
