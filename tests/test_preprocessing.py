"""Input-transform defences and the defended model (Li et al. 2021, Def. 4, §5.1–5.2)."""

from __future__ import annotations

import pytest
import torch

from backdoorlab import metrics
from backdoorlab.defenses.preprocessing import (
    ColorJitter,
    Compose,
    DefendedModel,
    Flip,
    GaussianNoise,
    ShrinkPad,
    make_defense,
)
from backdoorlab.errors import BackdoorLabError
from tests.conftest import tiny_net


def test_defences_describe_and_transform():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for d in (Flip(), ShrinkPad(2), GaussianNoise(5), ColorJitter(brightness=0.2, hue=0.1)):
        y = d(x, torch.Generator().manual_seed(0))
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        assert d.describe()["name"] == d.name
    assert ShrinkPad(3).describe() == {"name": "shrinkpad", "k": 3}
    both = Compose([Flip(), ShrinkPad(2)])
    assert both.describe() == {"name": "compose", "steps": [{"name": "flip"}, {"name": "shrinkpad", "k": 2}]}
    assert torch.equal(both(x), ShrinkPad(2)(x.flip(-1)))


def test_validation_at_construction():
    with pytest.raises(BackdoorLabError, match="shrink size k"):
        ShrinkPad(-1)
    with pytest.raises(BackdoorLabError, match="std"):
        GaussianNoise(-5)
    with pytest.raises(BackdoorLabError, match="hue"):
        ColorJitter(hue=0.7)
    with pytest.raises(BackdoorLabError, match="compose step 1"):
        Compose([Flip(), "shrinkpad"])


def test_make_defense():
    assert isinstance(make_defense("shrinkpad", k=4), ShrinkPad)
    assert make_defense("noise", std=20).std == 20
    assert make_defense("jitter", hue=0.1).hue == 0.1
    with pytest.raises(BackdoorLabError, match="flip, jitter, noise, shrinkpad"):
        make_defense("blur")
    with pytest.raises(BackdoorLabError, match="no parameter 'size'; valid: k"):
        make_defense("shrinkpad", size=2)


def test_defended_model_with_metrics(toy):
    torch.manual_seed(0)
    net = tiny_net()
    wrapped = DefendedModel(net, ShrinkPad(2), seed=0)
    assert next(wrapped.parameters()) is next(net.parameters())
    a1 = metrics.accuracy(wrapped, toy, batch_size=64)
    a2 = metrics.accuracy(wrapped, toy, batch_size=64)
    assert a1 == a2  # the defence's generator restarts at every evaluation
    logits = metrics.predict_logits(wrapped, toy)
    assert torch.equal(logits, metrics.predict_logits(wrapped, toy))
    assert not torch.equal(logits, metrics.predict_logits(net, toy))
    flipped = DefendedModel(net, Flip())
    x = toy.float01(torch.arange(10)) if hasattr(toy, "float01") else toy.images[:10].float() / 255
    assert torch.equal(flipped(x), net(x.flip(-1)))
