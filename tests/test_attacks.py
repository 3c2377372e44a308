"""BadNets and Blended poisoning (attacks/)."""

from __future__ import annotations

import json

import pytest
import torch

from backdoorlab.attacks import Attack, BadNets, Blended, PoisonedSet, list_attacks, make_attack
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError
from backdoorlab.triggers import blended, square, turner_pattern


def _data(
    n: int = 200, k: int = 5, c: int = 3, size: int = 8, dtype: torch.dtype = torch.uint8
) -> ImageTensors:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    if dtype == torch.float32:
        images = images.float() / 255
    labels = torch.arange(n) % k
    return ImageTensors(images, labels, tuple(str(i) for i in range(k)), name="toy")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_untouched(train: ImageTensors, ps: PoisonedSet) -> None:
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[ps.poison_idx] = False
    assert torch.equal(ps.data.images[keep], train.images[keep])
    assert torch.equal(ps.data.labels[keep], train.labels[keep])


def test_badnets_all_to_one() -> None:
    train = _data()
    attack = BadNets(turner_pattern(), target=2, rate=0.1)
    assert isinstance(attack, Attack)
    ps = attack.poison(train, _gen())
    assert len(ps.poison_idx) == round(0.1 * len(train)) == 20
    assert ps.poison_idx.dtype == torch.int64 and torch.equal(ps.poison_idx, ps.poison_idx.sort().values)
    assert torch.all(train.labels[ps.poison_idx] != 2)  # never a target-class image
    assert torch.equal(ps.original_labels, train.labels[ps.poison_idx])
    assert torch.all(ps.data.labels[ps.poison_idx] == 2)
    assert ps.data.images.dtype == torch.uint8
    patch = (torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 1]]) * 255).to(torch.uint8)
    assert torch.equal(ps.data.images[ps.poison_idx][:, :, 5:, 5:], patch.expand(20, 3, 3, 3))
    _check_untouched(train, ps)
    # seeded
    again = attack.poison(train, _gen())
    assert torch.equal(again.poison_idx, ps.poison_idx) and torch.equal(again.data.images, ps.data.images)
    assert not torch.equal(attack.poison(train, _gen(1)).poison_idx, ps.poison_idx)
    json.dumps(attack.describe())


def test_badnets_count_and_float_images() -> None:
    train = _data(dtype=torch.float32)
    ps = BadNets(square(2), target=0, rate=7).poison(train, _gen())
    assert len(ps.poison_idx) == 7 and ps.data.images.dtype == torch.float32
    assert torch.all(ps.data.images[ps.poison_idx][:, :, 6:, 6:] == 1.0)
    _check_untouched(train, ps)


def test_badnets_all_to_all_and_source_specific() -> None:
    train = _data(k=5)
    a2a = BadNets(square(), rate=0.5, mode="all-to-all")
    ps = a2a.poison(train, _gen())
    assert len(ps.poison_idx) == 100
    assert torch.equal(ps.data.labels[ps.poison_idx], (ps.original_labels + 1) % 5)
    assert torch.equal(a2a.target_labels(torch.tensor([0, 4])), torch.tensor([1, 0]))
    assert a2a.victim_mask(torch.arange(5)).all()
    _check_untouched(train, ps)

    src = BadNets(square(), target=0, rate=10, mode="source-specific", sources=(1, 3))
    ps = src.poison(train, _gen())
    assert set(ps.original_labels.tolist()) <= {1, 3} and len(ps.poison_idx) == 10
    assert torch.all(ps.data.labels[ps.poison_idx] == 0)
    assert src.victim_mask(torch.arange(5)).tolist() == [False, True, False, True, False]
    with pytest.raises(BackdoorLabError, match=r"81 poisoned.*80 images of source classes"):
        BadNets(square(), rate=81, mode="source-specific", sources=(1, 3)).poison(train, _gen())


def test_rate_and_target_validation() -> None:
    with pytest.raises(
        BackdoorLabError, match=r"rate must be a fraction in \(0, 1\] or a count ≥ 1, got 1.5"
    ):
        BadNets(square(), rate=1.5)
    for bad in (0, 0.0, -3, True):
        with pytest.raises(BackdoorLabError, match="rate must be"):
            BadNets(square(), rate=bad)
    train = _data(n=50, k=5)
    with pytest.raises(BackdoorLabError, match=r"41 poisoned images but only 40"):
        BadNets(square(), target=0, rate=41).poison(train, _gen())
    with pytest.raises(BackdoorLabError, match="target 7"):
        BadNets(square(), target=7).poison(train, _gen())
    with pytest.raises(BackdoorLabError, match="unknown attack mode"):
        BadNets(square(), mode="some-to-one")
    with pytest.raises(BackdoorLabError, match="sources"):
        BadNets(square(), mode="source-specific")


def test_victim_mask_and_apply_trigger() -> None:
    attack = BadNets(square(3), target=1)
    y = torch.tensor([0, 1, 2, 1])
    assert attack.victim_mask(y).tolist() == [True, False, True, False]
    assert torch.equal(attack.target_labels(y), torch.ones(4, dtype=torch.long))
    x = torch.rand(4, 3, 8, 8)
    out = attack.apply_trigger(x)
    assert torch.all(out[:, :, 5:, 5:] == 1.0) and torch.equal(out[:, :, :5], x[:, :, :5])


def test_blended_matches_formula_up_to_rounding() -> None:
    train = _data(c=3, size=8)
    attack = Blended(alpha=0.2, target=0, rate=0.2, seed=3)
    ps = attack.poison(train, _gen())
    p = blended(alpha=0.2, shape=(3, 8, 8), seed=3).pattern
    x = train.float01(ps.poison_idx)
    expected = 0.8 * x + 0.2 * p
    got = ps.data.float01(ps.poison_idx)
    assert (got - expected).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.all(ps.data.labels[ps.poison_idx] == 0)
    _check_untouched(train, ps)
    # test time: same pattern, optionally a different alpha
    xt = torch.rand(2, 3, 8, 8)
    assert torch.allclose(attack.apply_trigger(xt), 0.8 * xt + 0.2 * p, atol=1e-6)
    strong = Blended(alpha=0.2, test_alpha=0.5, seed=3)
    assert torch.allclose(strong.apply_trigger(xt), 0.5 * xt + 0.5 * p, atol=1e-6)
    json.dumps(attack.describe())


def test_blended_with_image_and_given_trigger() -> None:
    img = torch.full((1, 4, 4), 1.0)
    a = Blended(img, alpha=0.5)
    xt = torch.zeros(2, 3, 8, 8)
    assert torch.allclose(a.apply_trigger(xt), torch.full_like(xt, 0.5))
    t = blended(alpha=0.1, shape=(1, 8, 8), seed=0)
    b = Blended(t, alpha=0.3)
    assert torch.allclose(b.trigger_for((1, 8, 8)).mask, torch.full((1, 8, 8), 0.3))
    assert Blended(t).trigger_for((1, 8, 8)) is t


def test_registry() -> None:
    assert list_attacks() == [
        "advtrojan",
        "badnets",
        "badnets+",
        "blended",
        "blended+",
        "clean-label",
        "clean-label+",
    ]
    with pytest.raises(BackdoorLabError, match="unknown attack 'advtrojan\\+'"):
        make_attack("advtrojan+")
    plus = make_attack("badnets+", max_shrink=2, transform_benign=True, target=1, rate=0.1)
    assert plus.name == "badnets+" and plus.max_shrink == 2 and plus.base.target == 1
    a = make_attack("badnets", trigger={"kind": "square", "size": 4}, target=3, rate=0.05)
    assert isinstance(a, BadNets) and a.trigger.size == (4, 4) and a.target == 3
    b = make_attack("blended", alpha=0.1, mode="source-specific", sources=[1, 2])
    assert isinstance(b, Blended) and b.sources == (1, 2)
    with pytest.raises(BackdoorLabError, match="unknown attack 'trojannn'"):
        make_attack("trojannn")
    # an attack that exists but needs what a config cannot give says how to build it instead
    with pytest.raises(BackdoorLabError, match=r"'hidden-trigger' is built in Python.*HiddenTrigger\(model"):
        make_attack("hidden-trigger", target=1)
    with pytest.raises(BackdoorLabError, match="'ratio'"):
        make_attack("badnets", ratio=0.1)
