"""Randomized smoothing (Cohen et al. 2019): counts, PREDICT, CERTIFY, the binomial statistics, certified accuracy."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from backdoorlab.audit.denoiser import denoised
from backdoorlab.defenses.smoothing import (
    SmoothedClassifier,
    betainc,
    binomial_test_pvalue,
    certified_accuracy,
    clopper_pearson_lower,
)
from backdoorlab.errors import BackdoorLabError
from backdoorlab.models import create_model
from backdoorlab.models.dncnn import DnCNN
from tests.conftest import tiny_net

pytestmark = pytest.mark.usefixtures("one_thread")


class Constant(torch.nn.Module):
    """Always votes ``cls`` out of ``k``; records the batch size of every call."""

    def __init__(self, cls: int, k: int = 3) -> None:
        super().__init__()
        self.cls, self.k, self.calls = cls, k, []
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        out = torch.zeros(len(x), self.k)
        out[:, self.cls] = 1.0
        return out + 0 * self.dummy


class Alternating(torch.nn.Module):
    """Votes class (row index mod 2): every image gets exactly n/2 votes for classes 0 and 1 (n, chunk even)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), 3)
        out[torch.arange(len(x)), torch.arange(len(x)) % 2] = 1.0
        return out


class Sign(torch.nn.Module):
    """Class 1 when the first pixel is positive: P(class 1 | x + σε) = Φ(x₀ / σ)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = (x.flatten(1)[:, 0] > 0).float()
        return torch.stack([1 - pos, pos], dim=1)


def test_constant_model_predicts_the_constant_and_certifies_the_hand_radius():
    model, sigma, n, alpha = Constant(2), 0.5, 200, 0.001
    smooth = SmoothedClassifier(model, sigma)
    x = torch.rand(5, 1, 4, 4)
    assert smooth.predict(x, n=50, alpha=alpha, gen=0).tolist() == [2] * 5
    pred, radius = smooth.certify(x, n0=10, n=n, alpha=alpha, gen=0)
    assert pred.tolist() == [2] * 5
    expected = sigma * NormalDist().inv_cdf(alpha ** (1 / n))  # all n draws vote c: p_A ≥ α^(1/n)
    assert torch.allclose(radius, torch.full((5,), expected, dtype=torch.float64), rtol=1e-9)


def test_tie_abstains():
    smooth = SmoothedClassifier(Alternating(), 0.25, batch_size=64)
    x = torch.rand(3, 1, 4, 4)
    counts = smooth.counts(x, 100, gen=0)
    assert counts[:, :2].tolist() == [[50, 50]] * 3
    assert smooth.predict(x, n=100, gen=0).tolist() == [-1, -1, -1]
    pred, radius = smooth.certify(x, n0=10, n=100, gen=0)
    assert pred.tolist() == [-1, -1, -1] and radius.tolist() == [0.0, 0.0, 0.0]


def test_counts_are_batched_over_images_and_draws():
    model = Constant(1, k=4)
    smooth = SmoothedClassifier(model, 0.5, batch_size=64)
    counts = smooth.counts(torch.rand(5, 1, 4, 4), 40, gen=0)
    assert model.calls == [64, 64, 64, 8]  # 5·40 copies in chunks of 64, not 5 or 200 calls
    assert counts.shape == (5, 4) and counts.dtype == torch.long
    assert counts.sum(1).tolist() == [40] * 5


def test_counts_follow_the_gaussian_probability_and_are_seeded():
    sigma, n = 0.5, 4000
    x = torch.tensor([0.0, 0.25, 0.5]).view(3, 1, 1, 1)
    smooth = SmoothedClassifier(Sign(), sigma, batch_size=5000)
    counts = smooth.counts(x, n, gen=7)
    p = torch.tensor([NormalDist().cdf(v / sigma) for v in (0.0, 0.25, 0.5)])
    sd = (p * (1 - p) / n).sqrt()
    assert ((counts[:, 1] / n - p).abs() < 4 * sd).all()
    assert torch.equal(counts, smooth.counts(x, n, gen=7))
    assert not torch.equal(counts, smooth.counts(x, n, gen=8))


def test_predict_and_certify_on_a_real_model_and_denoised_pipeline():
    torch.manual_seed(0)
    net = tiny_net()
    x = torch.rand(4, 1, 8, 8)
    plain = SmoothedClassifier(net, 0.25)
    identity = SmoothedClassifier(denoised(net, DnCNN(1, 3, 4)), 0.25)  # fresh DnCNN = identity
    assert torch.equal(plain.counts(x, 30, gen=1), identity.counts(x, 30, gen=1))
    pred, radius = plain.certify(x, n0=20, n=200, gen=3)
    assert ((pred == -1) == (radius == 0)).all()
    assert (radius <= 0.25 * NormalDist().inv_cdf(0.001 ** (1 / 200)) + 1e-9).all()


def test_clopper_pearson_and_binomial_test_edge_cases():
    k = torch.tensor([0, 5, 10])
    lo = clopper_pearson_lower(k, 10, 0.05)
    assert lo[0] == 0 and lo[2] == pytest.approx(0.05 ** (1 / 10))
    # k = 1 of n: Beta(1, n) quantile solves 1 − (1 − p)^n = α
    assert float(clopper_pearson_lower(torch.tensor([1]), 20, 0.01)) == pytest.approx(1 - 0.99 ** (1 / 20))
    # two-sided binomial test against ½: equal counts give p = 1, all successes give 2·2⁻ⁿ
    p = binomial_test_pvalue(torch.tensor([5, 10, 0]), torch.tensor([10, 10, 10]))
    assert p.tolist() == pytest.approx([1.0, 2 * 0.5**10, 2 * 0.5**10])
    assert float(betainc(2.0, 3.0, 0.4)) == pytest.approx(0.5248, abs=1e-12)  # 1 − (1 − 0.4)^3·(1 + 3·0.4)


def test_statistics_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    for n in (7, 100, 10_000):
        k = torch.randint(1, n + 1, (50,), generator=gen)
        ours = clopper_pearson_lower(k, n, 0.001)
        ref = torch.tensor(stats.beta.ppf(0.001, k.numpy(), n - k.numpy() + 1))
        assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-12)
    ka, m = torch.randint(0, 61, (30,), generator=gen), 60
    ours = binomial_test_pvalue(ka, torch.full_like(ka, m))
    ref = torch.tensor([stats.binomtest(int(a), m, 0.5).pvalue for a in ka])
    assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_certified_accuracy():
    radii = torch.tensor([0.0, 0.3, 0.6, 1.0])
    pred = torch.tensor([-1, 1, 2, 0])
    labels = torch.tensor([0, 1, 2, 2])
    assert certified_accuracy(radii, pred, labels, 0.0) == 0.5  # abstain and a wrong one miss
    assert certified_accuracy(radii, pred, labels, 0.5) == 0.25
    assert certified_accuracy(radii, pred, labels, 0.7) == 0.0
    with pytest.raises(BackdoorLabError, match="equal length"):
        certified_accuracy(radii, pred[:2], labels, 0.0)
    with pytest.raises(BackdoorLabError, match="radius"):
        certified_accuracy(radii, pred, labels, -1.0)
    assert math.isnan(certified_accuracy(radii[:0], pred[:0], labels[:0], 0.0))


def test_bad_input_is_named():
    x = torch.rand(2, 1, 4, 4)
    for sigma in (0.0, -0.5, float("nan")):
        with pytest.raises(BackdoorLabError, match="sigma"):
            SmoothedClassifier(Constant(0), sigma)
    smooth = SmoothedClassifier(Constant(0), 0.5)
    with pytest.raises(BackdoorLabError, match="n must"):
        smooth.counts(x, 0)
    with pytest.raises(BackdoorLabError, match="n0"):
        smooth.certify(x, n0=0)
    for alpha in (0.0, 1.0, 1.5):
        with pytest.raises(BackdoorLabError, match="alpha"):
            smooth.predict(x, alpha=alpha)
    with pytest.raises(BackdoorLabError, match="num_classes"):
        SmoothedClassifier(Constant(0, k=3), 0.5, num_classes=5).counts(x, 2)
    lenet = create_model("lenet", in_channels=1, num_classes=10, input_size=28)
    with pytest.raises(BackdoorLabError, match="model expects 1×28×28"):
        SmoothedClassifier(lenet, 0.5).predict(torch.rand(2, 3, 32, 32))
    with pytest.raises(BackdoorLabError, match="N×C×H×W"):
        smooth.counts(torch.rand(4, 4), 2)
    with pytest.raises(BackdoorLabError, match="failed on inputs"):
        SmoothedClassifier(tiny_net(), 0.5).counts(torch.rand(2, 3, 8, 8), 2)


def test_eval_channels_last_restores_each_submodule_mode():
    from backdoorlab.defenses.smoothing import eval_channels_last

    inner = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).eval()
    wrapper = torch.nn.Sequential(inner)  # a fresh wrapper is in train mode; the model inside is not
    wrapper.training = True
    with eval_channels_last(wrapper):
        assert not any(m.training for m in wrapper.modules())
    assert wrapper.training and not inner.training and not inner[1].training
