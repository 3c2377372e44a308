"""SmoothAdv (Salman et al. 2019, as Sun et al. App. A.2) and the Fig. 6 baselines."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from backdoorlab.audit.smoothadv import PAPER_PIXELS, basic_adv, scale_eps, smoothadv, smoothing_adv
from backdoorlab.errors import BackdoorLabError
from backdoorlab.models import create_model
from backdoorlab.models.dncnn import DnCNN
from tests.conftest import tiny_net

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(torch.nn.Module):
    """Wraps a model and keeps a copy of every input batch."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.model(x)


class Flat(torch.nn.Module):
    """Logits that do not depend on the input (zero gradient everywhere)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), 3) + 0 * x.flatten(1).sum(1, keepdim=True)


def _setup(n: int = 6):
    torch.manual_seed(0)
    net = tiny_net()
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(n) % 3
    return net, x, y


def _smooth_ce(net, x, y, noise):
    """CE of the mean softmax over fixed noise (N×m×C×H×W)."""
    n, m = noise.shape[:2]
    with torch.no_grad():
        p = F.softmax(net((x.unsqueeze(1) + noise).flatten(0, 1)), 1).view(n, m, -1).mean(1)
    return -p.gather(1, y[:, None]).log().squeeze(1)


@pytest.mark.parametrize("eps", [0.5, 3.0])
def test_smoothadv_stays_in_the_ball_and_the_box(eps):
    net, x, y = _setup()
    adv = smoothadv(net, x, y, eps, sigma=0.5, m=4, steps=10, gen=0)
    assert adv.shape == x.shape and adv.dtype == torch.float32
    assert adv.min() >= 0 and adv.max() <= 1
    norms = (adv - x).flatten(1).norm(dim=1)
    assert (norms <= eps * (1 + 1e-5)).all()
    if eps == 0.5:  # the normalised steps of 2ε/T reach the sphere
        assert (norms > 0.9 * eps).all()


def test_smoothadv_increases_the_smoothed_loss():
    net, x, y = _setup()
    sigma, m = 0.25, 8
    noise = sigma * torch.randn((len(x), m, *x.shape[1:]), generator=torch.Generator().manual_seed(5))
    adv = smoothadv(net, x, y, 1.0, sigma=sigma, m=m, steps=20, gen=5)
    assert (_smooth_ce(net, adv, y, noise) > _smooth_ce(net, x, y, noise)).all()


def test_noise_is_drawn_once_and_fixed_for_all_steps():
    net, x, y = _setup(4)
    m, steps = 3, 5
    rec = Recorder(net)
    gen = torch.Generator().manual_seed(11)
    smoothadv(rec, x, y, 1.0, sigma=0.5, m=m, steps=steps, gen=gen)
    # one forward per step, all N·m copies together
    assert [len(b) for b in rec.inputs] == [len(x) * m] * steps
    # the generator advanced by exactly one draw of N×m×C×H×W (no per-step noise, no random start)
    ref = torch.Generator().manual_seed(11)
    noise = 0.5 * torch.randn((len(x), m, *x.shape[1:]), generator=ref)
    assert torch.equal(gen.get_state(), ref.get_state())
    # between steps, all m copies of an image move by the same δ change: the noise is fixed
    first = rec.inputs[0].view(len(x), m, -1)
    for later in rec.inputs[1:]:
        moved = later.view(len(x), m, -1) - first
        assert torch.allclose(moved, moved[:, :1].expand_as(moved), atol=1e-6)
    # δ starts at 0 (no random start): the first step sees exactly x + σ·noise
    assert torch.allclose(first, (x.unsqueeze(1) + noise).view(len(x), m, -1), atol=1e-6)


def test_seeded_and_independent_of_chunking():
    net, x, y = _setup()
    kw = dict(sigma=0.5, m=4, steps=8)
    a = smoothadv(net, x, y, 1.0, gen=3, **kw)
    assert torch.equal(a, smoothadv(net, x, y, 1.0, gen=3, **kw))
    assert torch.allclose(a, smoothadv(net, x, y, 1.0, gen=3, batch_size=4, **kw), atol=1e-6)
    assert not torch.allclose(a, smoothadv(net, x, y, 1.0, gen=4, **kw))


def test_identity_denoiser_and_smoothing_baseline_agree():
    net, x, y = _setup(3)
    kw = dict(sigma=0.5, m=2, steps=4, gen=2)
    plain = smoothing_adv(net, x, y, 1.0, **kw)
    with_identity = smoothadv(net, x, y, 1.0, denoiser=DnCNN(1, 3, 4), **kw)  # fresh DnCNN is the identity
    assert torch.allclose(plain, with_identity, atol=1e-6)


def test_zero_gradient_moves_in_a_random_direction():
    x = torch.rand(2, 1, 4, 4)
    adv = smoothadv(Flat(), x, torch.tensor([0, 1]), 0.5, sigma=0.5, m=2, steps=3, gen=0)
    norms = (adv - x).flatten(1).norm(dim=1)
    assert (norms > 0).all() and (norms <= 0.5 + 1e-6).all()


def test_basic_adv_is_the_noise_free_attack():
    net, x, y = _setup()
    rec = Recorder(net)
    adv = basic_adv(rec, x, y, 1.0, steps=10)
    assert [len(b) for b in rec.inputs] == [len(x)] * 10 and torch.equal(rec.inputs[0], x)
    assert ((adv - x).flatten(1).norm(dim=1) <= 1.0 + 1e-5).all() and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        before = F.cross_entropy(net(x), y, reduction="none")
        after = F.cross_entropy(net(adv), y, reduction="none")
    assert (after > before).all()


def test_model_parameters_get_no_gradients_and_mode_is_restored():
    net, x, y = _setup(2)
    net.train()
    smoothadv(net, x, y, 1.0, sigma=0.5, m=2, steps=2)
    assert net.training and all(p.grad is None for p in net.parameters())
    assert all(p.is_contiguous() for p in net.parameters())  # channels-last weights were restored


def test_scale_eps():
    assert scale_eps(20, PAPER_PIXELS, 784) == pytest.approx(20 * math.sqrt(784 / 150528))
    assert scale_eps(20, PAPER_PIXELS, 3 * 32 * 32) == pytest.approx(20 / 7)  # √(3072 / 150528) = 1/7
    assert scale_eps(1.0, 100, 400) == 2.0
    with pytest.raises(BackdoorLabError, match="to_pixels"):
        scale_eps(1.0, 100, 0)


def test_bad_input_is_named():
    net, x, y = _setup(2)
    with pytest.raises(BackdoorLabError, match="eps"):
        smoothadv(net, x, y, 0.0, sigma=0.5)
    with pytest.raises(BackdoorLabError, match="eps"):
        basic_adv(net, x, y, -1.0)
    with pytest.raises(BackdoorLabError, match="sigma"):
        smoothadv(net, x, y, 1.0, sigma=0.0)
    with pytest.raises(BackdoorLabError, match="m must"):
        smoothadv(net, x, y, 1.0, sigma=0.5, m=0)
    with pytest.raises(BackdoorLabError, match="steps"):
        smoothadv(net, x, y, 1.0, sigma=0.5, steps=0)
    with pytest.raises(BackdoorLabError, match=r"\[0, 1\]"):
        smoothadv(net, x * 2 + 0.5, y, 1.0, sigma=0.5)
    with pytest.raises(BackdoorLabError, match="one label per image"):
        smoothadv(net, x, y[:1], 1.0, sigma=0.5)
    with pytest.raises(BackdoorLabError, match="labels must lie in"):
        smoothadv(net, x, torch.tensor([0, 7]), 1.0, sigma=0.5, steps=1)
    with pytest.raises(BackdoorLabError, match="≥ 0"):
        basic_adv(net, x, torch.tensor([0, -1]), 1.0, steps=1)
    lenet = create_model("lenet", in_channels=1, num_classes=10, input_size=28)
    with pytest.raises(BackdoorLabError, match="model expects 1×28×28"):
        smoothadv(lenet, torch.rand(2, 3, 32, 32), y, 1.0, sigma=0.5, denoiser=DnCNN(3, 3, 4))
