"""Enhanced attacks (Li et al. 2021, Sec. 4.2 / 5.3): random Flip + ShrinkPad on the poisoned samples."""

from __future__ import annotations

import pytest
import torch

from backdoorlab.attacks.badnets import BadNets
from backdoorlab.attacks.base import Attack
from backdoorlab.attacks.blended import Blended
from backdoorlab.attacks.enhanced import Enhanced
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError
from backdoorlab.triggers import li_badnets


@pytest.fixture
def data() -> ImageTensors:
    """200 random 1×16×16 uint8 images in 4 classes with a bright, asymmetric block (flip is visible)."""
    gen = torch.Generator().manual_seed(1)
    images = (torch.rand(200, 1, 16, 16, generator=gen) * 120).to(torch.uint8)
    images[:, :, 2:10, 1:5] = 230
    return ImageTensors(images, torch.arange(200) % 4, ("a", "b", "c", "d"), name="tiny")


def base_attack() -> BadNets:
    return BadNets(trigger=li_badnets("0-255"), target=1, rate=0.2)


def poison(attack, data: ImageTensors, seed: int = 3):
    return attack.poison(data, torch.Generator().manual_seed(seed))


def test_is_an_attack_and_named_after_base() -> None:
    e = Enhanced(base_attack())
    assert isinstance(e, Attack)
    assert e.name == "badnets+"
    assert Enhanced(Blended(alpha=0.2)).name == "blended+"
    d = e.describe()
    assert d["base"] == base_attack().describe()
    assert d["enhancement"] == {"flip": True, "max_shrink": 4, "transform_benign": False}
    assert e.target == 1  # other attributes are read from the base


@pytest.mark.parametrize("bad", [-1, 1.5, True, "4"])
def test_rejects_bad_max_shrink(bad) -> None:
    with pytest.raises(BackdoorLabError, match="max_shrink"):
        Enhanced(base_attack(), max_shrink=bad)


def test_rejects_max_shrink_too_large_for_the_images(data: ImageTensors) -> None:
    with pytest.raises(BackdoorLabError, match="max_shrink=6"):
        poison(Enhanced(base_attack(), max_shrink=6), data)  # 16-pixel images allow at most 5


def test_rejects_non_attack() -> None:
    with pytest.raises(BackdoorLabError, match="wraps another attack"):
        Enhanced(object())


def test_poisons_like_base_but_transforms_poisoned_images(data: ImageTensors) -> None:
    ref = poison(base_attack(), data)
    enh = poison(Enhanced(base_attack(), max_shrink=3), data)
    assert torch.equal(enh.poison_idx, ref.poison_idx)
    assert torch.equal(enh.original_labels, ref.original_labels)
    assert torch.equal(enh.data.labels, ref.data.labels)
    assert enh.data.images.dtype == torch.uint8
    idx = ref.poison_idx
    changed = (enh.data.images[idx] != ref.data.images[idx]).flatten(1).any(1)
    assert changed.float().mean() > 0.6  # θ = identity (no flip, k = 0) has probability 0.1
    benign = torch.ones(len(data), dtype=torch.bool)
    benign[idx] = False
    assert torch.equal(enh.data.images[benign], data.images[benign])
    assert enh.data.meta["attack"]["name"] == "badnets+"


def test_flip_only_gives_base_image_or_its_mirror(data: ImageTensors) -> None:
    ref = poison(base_attack(), data)
    enh = poison(Enhanced(base_attack(), max_shrink=0, flip=True), data)
    idx = ref.poison_idx
    a, b = enh.data.images[idx], ref.data.images[idx]
    same = (a == b).flatten(1).all(1)
    mirror = (a == b.flip(-1)).flatten(1).all(1)
    assert bool((same | mirror).all())
    assert 0 < int(mirror.sum()) < len(idx)


def test_identity_enhancement_equals_base(data: ImageTensors) -> None:
    ref = poison(base_attack(), data)
    enh = poison(Enhanced(base_attack(), max_shrink=0, flip=False), data)
    assert torch.equal(enh.data.images, ref.data.images)
    assert torch.equal(enh.data.labels, ref.data.labels)
    assert torch.equal(enh.poison_idx, ref.poison_idx)


def test_transform_benign_changes_benign_samples(data: ImageTensors) -> None:
    ref = poison(base_attack(), data)
    enh = poison(Enhanced(base_attack(), transform_benign=True), data)
    assert torch.equal(enh.data.labels, ref.data.labels)
    benign = torch.ones(len(data), dtype=torch.bool)
    benign[ref.poison_idx] = False
    changed = (enh.data.images[benign] != data.images[benign]).flatten(1).any(1)
    assert changed.float().mean() > 0.6


def test_deterministic_for_a_seed(data: ImageTensors) -> None:
    e = Enhanced(base_attack(), transform_benign=True)
    a, b = poison(e, data, seed=5), poison(e, data, seed=5)
    assert torch.equal(a.data.images, b.data.images)
    c = poison(e, data, seed=6)
    assert not torch.equal(a.data.images, c.data.images)


def test_float_data_stays_float(data: ImageTensors) -> None:
    fdata = data.with_images(data.float01())
    enh = poison(Enhanced(base_attack()), fdata)
    assert enh.data.images.dtype == torch.float32
    assert float(enh.data.images.min()) >= 0 and float(enh.data.images.max()) <= 1


def test_test_time_trigger_delegates_to_base(data: ImageTensors) -> None:
    base = base_attack()
    e = Enhanced(base)
    x = data.float01()[:8]
    y = data.labels[:8]
    assert torch.equal(e.apply_trigger(x), base.apply_trigger(x))
    assert torch.equal(e.target_labels(y), base.target_labels(y))
    assert torch.equal(e.victim_mask(y), base.victim_mask(y))
