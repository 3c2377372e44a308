"""The convolutional auto-encoder and the auto-encoder input-purification defence (Li et al. §5.1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from backdoorlab.defenses.autoencoder import AutoEncoderDefense
from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics import accuracy
from backdoorlab.models.autoencoder import ConvAutoEncoder
from tests.conftest import tiny_net


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 27, 25), (1, 8, 8)])
def test_autoencoder_keeps_shape_and_range(shape):
    c, h, w = shape
    ae = ConvAutoEncoder(c, (h, w), width=8, latent=4)
    x = torch.rand(2, c, h, w)
    with torch.no_grad():
        out = ae(x)
    assert out.shape == x.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    quarter = (math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2))
    assert ae.encode(x).shape == (2, 4, *quarter)


def test_autoencoder_rejects_wrong_channels():
    with pytest.raises(BackdoorLabError, match="expects N×3×H×W"):
        ConvAutoEncoder(3, 32)(torch.rand(1, 1, 32, 32))
    with pytest.raises(BackdoorLabError, match="width"):
        ConvAutoEncoder(3, 32, width=0)


@pytest.fixture(scope="module")
def small_mnist(mnist5k):
    train, _ = mnist5k
    return train.subset(torch.arange(300))


def _mse(defense: AutoEncoderDefense, x: torch.Tensor) -> float:
    return float(F.mse_loss(defense.transform(x), x))


def test_fit_lowers_reconstruction_error(small_mnist):
    x = small_mnist.float01()
    untrained = AutoEncoderDefense(epochs=0, width=8, latent=8, device="cpu").fit(small_mnist)
    trained = AutoEncoderDefense(epochs=2, width=8, latent=8, device="cpu").fit(small_mnist)
    assert len(trained.history) == 2 and trained.seconds > 0
    assert _mse(trained, x) < 0.75 * _mse(untrained, x)
    out = trained.transform(x[:10])
    assert out.shape == x[:10].shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert trained(x[:10]).shape == out.shape


def test_defaults_follow_li_et_al():
    d = AutoEncoderDefense()
    assert (d.epochs, d.lr, d.batch_size) == (100, 1e-3, 16)
    with pytest.raises(BackdoorLabError, match="not fitted"):
        d.transform(torch.rand(1, 1, 8, 8))
    with pytest.raises(BackdoorLabError, match="batch_size"):
        AutoEncoderDefense(batch_size=0)


def test_wrap_works_with_metrics(toy):
    defense = AutoEncoderDefense(epochs=1, width=4, latent=4, device="cpu").fit(toy)
    torch.manual_seed(0)
    model = tiny_net()
    wrapped = defense.wrap(model)
    assert next(wrapped.parameters()).device == next(model.parameters()).device
    acc = accuracy(wrapped, toy)
    assert 0.0 <= acc <= 1.0
    x = toy.float01()[:16]
    with torch.no_grad():
        torch.testing.assert_close(wrapped.eval()(x), model(defense.transform(x)))
