"""Visualisation aids of Sun et al. §3.4 / App. A.2: Eq. 5 Tikhonov filter, TV loss, Deep Dream octaves."""

from __future__ import annotations

import pytest
import torch

from backdoorlab.audit.smoothadv import smoothadv
from backdoorlab.audit.visualize import (
    deep_dream,
    image_gradient,
    octave_sizes,
    regularized_smoothadv,
    tikhonov_loss,
    tv_loss,
    visualize,
)
from backdoorlab.errors import BackdoorLabError
from tests.conftest import tiny_net

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(n: int = 6):
    torch.manual_seed(0)
    net = tiny_net()
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(n) % 3
    return net, x, y


def test_image_gradient_is_eq5_filter():
    x = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    g = image_gradient(x)
    expected = (x[:, :, :-1, :-1] - x[:, :, 1:, :-1]) + (x[:, :, :-1, :-1] - x[:, :, :-1, 1:])
    assert g.shape == (2, 3, 4, 5)
    torch.testing.assert_close(g, expected)


def test_regularisers_vanish_on_flat_images_and_grow_with_noise():
    flat = torch.full((2, 1, 6, 6), 0.3)
    noisy = flat + 0.1 * torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    for fn in (tikhonov_loss, tv_loss):
        assert torch.allclose(fn(flat), torch.zeros(2), atol=1e-6)
        assert (fn(noisy) > 0.01).all()
    d = noisy - flat
    sq = (d[:, :, 1:] - d[:, :, :-1]).pow(2).flatten(1).sum(1) + (d[..., 1:] - d[..., :-1]).pow(2).flatten(
        1
    ).sum(1)
    torch.testing.assert_close(tv_loss(d, power=2), sq)


def test_unregularised_equals_smoothadv():
    net, x, y = _setup()
    a = smoothadv(net, x, y, 1.0, sigma=0.25, m=4, steps=8, gen=3)
    b = regularized_smoothadv(net, x, y, 1.0, sigma=0.25, regularizer=None, m=4, steps=8, gen=3)
    c = regularized_smoothadv(
        net, x, y, 1.0, sigma=0.25, regularizer="tikhonov", weight=0.0, m=4, steps=8, gen=3
    )
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize("reg", ["tikhonov", "tv"])
def test_regularisation_smooths_the_perturbation_and_respects_the_ball(reg):
    net, x, y = _setup()
    eps = 2.0
    plain = regularized_smoothadv(net, x, y, eps, sigma=0.25, regularizer=None, m=4, steps=15, gen=0)
    smooth = regularized_smoothadv(
        net, x, y, eps, sigma=0.25, regularizer=reg, weight=1.0, m=4, steps=15, gen=0
    )
    for adv in (plain, smooth):
        assert adv.min() >= 0 and adv.max() <= 1
        assert ((adv - x).flatten(1).norm(dim=1) <= eps * (1 + 1e-5)).all()
    # relative roughness: the penalty of δ per unit of ‖δ‖²
    rough = lambda adv: tikhonov_loss(adv - x) / (adv - x).flatten(1).pow(2).sum(1)  # noqa: E731
    assert rough(smooth).mean() < 0.8 * rough(plain).mean()


def test_octave_sizes_follow_the_scale():
    assert octave_sizes((28, 28), 4, 1.2) == [(16, 16), (19, 19), (23, 23), (28, 28)]
    assert octave_sizes((32, 30), 1, 1.2) == [(32, 30)]


def test_deep_dream_with_one_octave_is_smoothadv_and_more_octaves_stay_in_the_ball():
    net, x, y = _setup(4)
    one = deep_dream(net, x, y, 1.0, sigma=0.25, octaves=1, m=3, steps=6, gen=1)
    ref = regularized_smoothadv(net, x, y, 1.0, sigma=0.25, regularizer=None, m=3, steps=6, gen=1)
    torch.testing.assert_close(one, ref)
    calls = []
    dd = deep_dream(
        net,
        x,
        y,
        1.5,
        sigma=0.25,
        octaves=3,
        m=3,
        steps=5,
        gen=1,
        progress=lambda s, t, i: calls.append((s, t)),
    )
    assert dd.shape == x.shape and dd.min() >= 0 and dd.max() <= 1
    assert ((dd - x).flatten(1).norm(dim=1) <= 1.5 * (1 + 1e-5)).all()
    assert not torch.allclose(dd, one)
    assert calls[-1] == (15, 15)  # 3 octaves × 5 steps


def test_visualize_dispatches_and_validates():
    net, x, y = _setup(2)
    out = visualize(net, x, y, 1.0, sigma=0.25, method="deep-dream", m=2, steps=2, gen=0)
    assert out.shape == x.shape
    with pytest.raises(BackdoorLabError, match="visualisation method"):
        visualize(net, x, y, 1.0, sigma=0.25, method="dream")
    with pytest.raises(BackdoorLabError, match="regularizer"):
        regularized_smoothadv(net, x, y, 1.0, sigma=0.25, regularizer="l1", steps=1)
    with pytest.raises(BackdoorLabError, match="eps"):
        regularized_smoothadv(net, x, y, 0.0, sigma=0.25, steps=1)
    with pytest.raises(BackdoorLabError, match="sigma"):
        deep_dream(net, x, y, 1.0, sigma=-1.0, steps=1)
    with pytest.raises(BackdoorLabError, match="weight"):
        regularized_smoothadv(net, x, y, 1.0, sigma=0.25, weight=1.5, steps=1)
    with pytest.raises(BackdoorLabError, match="octave_scale"):
        deep_dream(net, x, y, 1.0, sigma=0.25, octave_scale=0.5, steps=1)
