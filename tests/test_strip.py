"""STRIP (Gao et al. 2019) and E-STRIP (AdvTrojan Table 4)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from backdoorlab.data.tensors import ImageTensors
from backdoorlab.defenses.strip import ESTRIP, STRIP, auroc, normal_threshold, roc_curve
from backdoorlab.errors import BackdoorLabError
from backdoorlab.triggers import square, stamp


class Fixed(torch.nn.Module):
    """Returns the same logits for every input; counts its forward calls."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits), requires_grad=False)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.logits.expand(len(x), -1)


class Linear(torch.nn.Module):
    """A fixed random linear classifier; a bright bottom-right pixel (the "trigger") forces class 0."""

    def __init__(self, d: int, k: int = 3, backdoor: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w = torch.nn.Parameter(torch.randn(d, k, generator=g) * 0.6, requires_grad=False)
        self.backdoor = backdoor
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        z = x.flatten(1) @ self.w
        if self.backdoor:
            z = z + torch.stack([30 * x[:, 0, -1, -1], torch.zeros(len(x)), torch.zeros(len(x))], 1)
        return z


def _images(n: int, seed: int, size: int = 4) -> ImageTensors:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g) * 0.5
    x[:, :, -1, -1] = 0  # clean images have a black trigger pixel
    return ImageTensors(x, torch.zeros(n, dtype=torch.long), ("a", "b", "c"))


def test_constant_prediction_has_zero_entropy_and_uniform_has_log2k():
    data = _images(30, 0)
    one_hot = STRIP(n=5).fit(Fixed([60.0, -60.0, -60.0]), data)
    assert torch.allclose(
        one_hot.entropy(data.float01()), torch.zeros(len(data), dtype=torch.float64), atol=1e-9
    )
    uniform = STRIP(n=5).fit(Fixed([0.0, 0.0, 0.0, 0.0]), data)
    assert torch.allclose(uniform.entropy(data), torch.full((len(data),), 2.0, dtype=torch.float64))


def test_all_overlays_of_a_chunk_in_one_forward():
    data = _images(40, 0)
    model = Linear(16)
    strip = STRIP(n=4, batch_size=40).fit(model, data)
    x = _images(10, 5).float01()
    model.calls = 0
    one = strip.entropy(x)
    assert model.calls == 1  # 10 inputs × 4 overlays = 40 images = one forward
    strip.batch_size = 8  # 2 inputs per forward
    model.calls = 0
    five = strip.entropy(x)
    assert model.calls == 5
    assert torch.allclose(one, five)
    # the definition by hand for input 0: mean over overlays of each overlay's entropy in bits
    blends = x[:1] + strip.pool
    p = model(blends).softmax(1)
    want = float((-(p * p.log2()).sum(1)).mean())
    assert float(one[0]) == pytest.approx(want, rel=1e-5)


class SumLogit(torch.nn.Module):
    """Two classes, logit gap affine in the pixel sum: the clean entropies are close to normal (CLT)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 0.1 * (x.flatten(1).sum(1) - 0.5 * x[0].numel()) + 1.5
        return torch.stack([z, torch.zeros_like(z)], 1)


def _gray(n: int, seed: int) -> ImageTensors:
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 0.5
    return ImageTensors(x, torch.zeros(n, dtype=torch.long), ("a", "b"))


@pytest.mark.parametrize("frr", [0.05, 0.1])
def test_threshold_gives_about_frr_false_rejections_on_clean_data(frr):
    strip = STRIP(n=20, frr=frr, batch_size=8000).fit(SumLogit(), _gray(2020, 0))
    assert strip.threshold == pytest.approx(norm.ppf(frr, loc=strip.mu, scale=strip.sigma), rel=1e-9)
    assert len(strip.clean_entropy) == 2000  # the 20 pool images are kept out of the calibration set
    flagged = strip.detect(_gray(2000, 7))  # fresh clean images from the same distribution
    assert float(flagged.double().mean()) == pytest.approx(frr, abs=0.025)
    assert strip.threshold_at(0.5) == pytest.approx(strip.mu)


def test_evaluate_on_a_backdoored_model():
    model = Linear(16, backdoor=True)
    strip = STRIP(n=10, frr=0.05).fit(model, _images(200, 0))
    clean = _images(100, 3).float01()
    trojaned = stamp(clean, square(1))  # white bottom-right pixel → class 0 for every overlay
    res = strip.evaluate(clean, trojaned, fprs=(0.05, 0.1))
    assert res["fnr"] == 0.0 and res["far"] == 0.0 and res["auroc"] == 1.0
    assert res["fpr"] == res["frr"] and res["fpr"] < 0.15
    assert set(res["table"]) == {"0.05", "0.1"} and res["inputs_per_s"] > 0
    assert res["roc"]["fpr"][0] == 0.0 and res["roc"]["tpr"][-1] == 1.0
    assert max(res["trojaned_entropy"]) < min(res["clean_entropy"])


class DtypeProbe(torch.nn.Module):
    """A small MLP that records the dtype its hidden layer computes in (bfloat16 under CPU autocast)."""

    def __init__(self, d: int = 16, k: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(d, 32), torch.nn.Linear(32, k)
        self.seen: set[torch.dtype] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x.flatten(1))
        self.seen.add(h.dtype)
        return self.fc2(h.relu())


def test_bf16_runs_the_model_under_autocast_and_keeps_the_decisions():
    data, x = _images(200, 0), _images(40, 5).float01()
    fp32 = STRIP(n=10, draw="random").fit(DtypeProbe(), data)
    model = DtypeProbe()
    bf16 = STRIP(n=10, draw="random", bf16=True).fit(model, data)
    assert model.seen == {torch.bfloat16} and fp32.model.seen == {torch.float32}
    h32, h16 = fp32.entropy(x), bf16.entropy(x)
    assert h16.dtype == torch.float64 and not torch.equal(h32, h16)  # bf16 rounding shows …
    assert torch.allclose(h32, h16, atol=0.05)  # … but only in the second decimal of the bits
    assert bf16.describe()["bf16"] is True


def test_roc_and_auroc_by_hand():
    fpr, tpr = roc_curve(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0]))
    assert auroc(fpr, tpr) == 1.0
    fpr, tpr = roc_curve(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]))
    assert auroc(fpr, tpr) == 0.5 and fpr.tolist() == [0.0, 1.0]
    fpr, tpr = roc_curve(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 3.0]))
    assert auroc(fpr, tpr) == pytest.approx(0.75)
    assert normal_threshold(1.0, 2.0, 0.5) == 1.0


def test_random_draw_mode_is_deterministic():
    data = _images(50, 0)
    model = Linear(16)
    a = STRIP(n=6, draw="random", seed=3).fit(model, data)
    x = _images(7, 2).float01()
    assert torch.equal(a.entropy(x), a.entropy(x))
    a.batch_size = 6
    assert torch.allclose(a.entropy(x), STRIP(n=6, draw="random", seed=3).fit(model, data).entropy(x))


def test_estrip_attaches_the_trigger():
    data = _images(30, 0)
    model = Linear(16, backdoor=True)
    trig = square(1)
    over = ESTRIP(trig, n=5).fit(model, data)
    assert bool((over.pool[:, 0, -1, -1] == 1).all())
    clean = _images(10, 4).float01()
    # the trigger on every overlay sends every blend to class 0: clean inputs look trojaned
    assert float(over.entropy(clean).max()) < 1e-3
    mask = torch.zeros(4, 4)
    mask[-1, -1] = 1
    inputs = ESTRIP((mask, torch.ones(1, 4, 4)), n=5, attach_to="inputs").fit(model, data)
    assert bool((inputs.pool[:, 0, -1, -1] == 0).all())
    assert float(inputs.entropy(clean).max()) < 1e-3
    plain = STRIP(n=5).fit(model, data)
    assert float(plain.entropy(clean).min()) > 0.1


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"n": 1}, "n .* must be an integer ≥ 2"),
        ({"frr": 0.0}, "frr .* strictly between 0 and 1"),
        ({"frr": 1.0}, "frr .* strictly between 0 and 1"),
        ({"blend": "max"}, "unknown STRIP blend"),
        ({"draw": "all"}, "unknown STRIP draw"),
        ({"bf16": "yes"}, "bf16 must be True or False"),
    ],
)
def test_bad_settings_are_named_errors(kw, match):
    with pytest.raises(BackdoorLabError, match=match):
        STRIP(**kw)


def test_misuse_is_a_named_error():
    with pytest.raises(BackdoorLabError, match="not fitted"):
        STRIP(n=2).detect(torch.zeros(1, 1, 4, 4))
    with pytest.raises(BackdoorLabError, match="at least n = 10"):
        STRIP(n=10).fit(Linear(16), _images(5, 0))
    with pytest.raises(BackdoorLabError, match="attach_to"):
        ESTRIP(square(1), attach_to="labels")
    strip = STRIP(n=2).fit(Linear(16), _images(5, 0))
    with pytest.raises(BackdoorLabError, match="shape"):
        strip.entropy(torch.zeros(1, 1, 5, 5))
    assert math.isfinite(strip.threshold)
