"""WGAN-GP, latent inversion and interpolation for Turner et al.'s GAN clean-label attack (§4.1, §5.2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backdoorlab.errors import BackdoorLabError, UnsafeFileError
from backdoorlab.models.wgan import (
    WGANCritic,
    WGANGenerator,
    gradient_penalty,
    interpolate,
    invert,
    load_generator,
    reconstruction_error,
    sample,
    save_generator,
    train_wgan_gp,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_generator(seed: int = 0, **kw) -> WGANGenerator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kw = {"latent_dim": 8, "channels": 1, "size": 8, "width": 8, **kw}
        return WGANGenerator(**kw).eval()


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (1, 8), (2, 12)])
def test_generator_and_critic_shapes(channels, size):
    g = _tiny_generator(latent_dim=5, channels=channels, size=size, width=4)
    z = torch.randn(3, 5) * 10  # large codes: the sigmoid still keeps pixels in [0, 1]
    x = g(z.requires_grad_(True))
    assert x.shape == (3, channels, size, size)
    assert x.requires_grad  # differentiable in z (needed by invert)
    x = x.detach()
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert float(x.std()) > 0
    assert WGANCritic(channels, size, width=4)(x).shape == (3,)
    assert WGANGenerator(**g.spec).spec == g.spec


def test_batchnorm_generator_option():
    g = _tiny_generator(batchnorm=True)
    assert any(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) for m in WGANCritic(1, 8, 8).modules())


@pytest.mark.parametrize("size", [30, 4, 0])
def test_unsupported_size_raises(size):
    with pytest.raises(BackdoorLabError, match="size"):
        WGANGenerator(size=size)


def test_gradient_penalty_linear_critic_known_norm():
    # D(x) = <w, x> + b has gradient w everywhere: penalty = (‖w‖ − 1)² for any real/fake
    critic = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    with torch.no_grad():
        critic[1].weight.fill_(0.75)  # ‖w‖ = 0.75·√16 = 3
    real, fake = torch.rand(5, 1, 4, 4), torch.rand(5, 1, 4, 4)
    gp = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(0))
    assert float(gp.detach()) == pytest.approx(4.0, rel=1e-5)
    gp.backward()  # differentiable w.r.t. the critic's weights (create_graph)
    assert critic[1].weight.grad is not None and float(critic[1].weight.grad.abs().sum()) > 0


def test_gradient_penalty_interpolates_real_and_fake():
    # D(x) = ½‖x‖²: ∇ = x̂ = ε·real + (1 − ε)·fake; with fake = 0, ‖x̂‖ = ε‖real‖
    def critic(x):
        return 0.5 * x.flatten(1).pow(2).sum(1)

    real = torch.full((4, 1, 2, 2), 1.0)  # ‖real‖ = 2
    fake = torch.zeros_like(real)
    eps = torch.rand(4, generator=torch.Generator().manual_seed(7))
    expected = ((2 * eps - 1) ** 2).mean()
    gp = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(7))
    assert float(gp.detach()) == pytest.approx(float(expected), rel=1e-5)


def _blobs(n: int = 64) -> torch.Tensor:
    """A bright 4×4 square in the middle of dark 8×8 images (slightly jittered brightness)."""
    x = torch.full((n, 1, 8, 8), 0.05)
    x[:, :, 2:6, 2:6] = 0.9 + 0.05 * torch.rand(n, 1, 1, 1, generator=torch.Generator().manual_seed(1))
    return x


def test_training_moves_samples_towards_data_and_is_deterministic():
    x = _blobs()
    kw = {"batch_size": 32, "latent_dim": 8, "width": 8, "lr": 5e-3, "betas": (0.5, 0.9), "device": "cpu"}
    seen = []
    g_long = train_wgan_gp(x, steps=15, seed=3, progress=lambda s, t, i: seen.append((s, t, i)), **kw)
    g_short = train_wgan_gp(x, steps=3, seed=3, **kw)
    g_again = train_wgan_gp(x, steps=3, seed=3, **kw)
    g_other = train_wgan_gp(x, steps=3, seed=4, **kw)
    assert not g_long.training
    assert [s for s, _, _ in seen] == list(range(1, 16)) and seen[-1][1] == 15
    assert {"critic_loss", "wasserstein", "gradient_penalty", "generator_loss"} <= set(seen[-1][2])
    for a, b in zip(g_short.state_dict().values(), g_again.state_dict().values()):
        assert torch.equal(a, b)
    assert any(
        not torch.equal(a, b) for a, b in zip(g_short.state_dict().values(), g_other.state_dict().values())
    )
    # more steps changed the weights, and in the right direction: the samples look more like the data
    assert any(
        not torch.equal(a, b) for a, b in zip(g_long.state_dict().values(), g_short.state_dict().values())
    )
    mean_img = x.mean(0)
    err_short = (sample(g_short, 64) - mean_img).abs().mean()
    err_long = (sample(g_long, 64) - mean_img).abs().mean()
    assert float(err_long) < 0.75 * float(err_short)


def test_training_accepts_uint8_and_validates():
    x8 = (_blobs(8) * 255).to(torch.uint8)
    g = train_wgan_gp(x8, steps=1, batch_size=4, n_critic=1, latent_dim=4, width=4, device="cpu")
    assert g.spec == {"latent_dim": 4, "channels": 1, "size": 8, "width": 4, "batchnorm": False}
    with pytest.raises(BackdoorLabError, match="steps"):
        train_wgan_gp(x8, steps=0, device="cpu")
    with pytest.raises(BackdoorLabError, match="batch_size"):
        train_wgan_gp(x8, batch_size=0, device="cpu")
    with pytest.raises(BackdoorLabError, match="latent_dim"):
        train_wgan_gp(x8, latent_dim=0, device="cpu")
    with pytest.raises(BackdoorLabError, match="4-D"):
        train_wgan_gp(torch.rand(8, 8, 8), device="cpu")
    with pytest.raises(BackdoorLabError, match=r"\[0, 1\]"):
        train_wgan_gp(torch.rand(4, 1, 8, 8) * 2, device="cpu")
    with pytest.raises(BackdoorLabError, match="size"):
        train_wgan_gp(torch.rand(4, 1, 10, 10), device="cpu")


def test_invert_lowers_reconstruction_error():
    """The issue's requirement: latent inversion lowers the reconstruction error vs the initial z."""
    g = _tiny_generator()
    with torch.no_grad():  # a freshly initialised generator barely varies its output: make it expressive
        g.out[0].weight.mul_(30)
    z_true = torch.randn(6, 8, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        x = g(z_true)
    z0 = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))  # invert's documented start
    flags = [p.requires_grad for p in g.parameters()]
    z = invert(g, x, steps=300, lr=1.0, seed=0)
    assert z.shape == (6, 8)
    assert [p.requires_grad for p in g.parameters()] == flags  # unfrozen again
    err0 = reconstruction_error(g, z0, x)
    err = reconstruction_error(g, z, x)
    assert err.shape == (6,)
    assert float(err.mean()) < 0.4 * float(err0.mean())
    assert bool((err < err0).all())
    # one step from the documented start equals one explicit gradient step on Σ_i ‖x_i − G(z_i)‖²
    zz = z0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((g(zz) - x).pow(2).sum(), zz)
    assert torch.allclose(invert(g, x, steps=1, lr=0.1, seed=0), z0 - 0.1 * grad, atol=1e-5)
    z_mean = invert(g, x, steps=1, lr=0.1, seed=0, reduction="mean")
    assert torch.allclose(z_mean, z0 - 0.1 * grad / 64, atol=1e-6)
    # batching over chunks does not change the result (every z has its own gradient)
    assert torch.allclose(invert(g, x, steps=5, batch_size=4), invert(g, x, steps=5), atol=1e-6)


def test_invert_validates():
    g = _tiny_generator()
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(BackdoorLabError, match="steps"):
        invert(g, x, steps=0)
    with pytest.raises(BackdoorLabError, match="image shape"):
        invert(g, torch.rand(2, 3, 8, 8))
    with pytest.raises(BackdoorLabError, match="reduction"):
        invert(g, x, reduction="max")
    with pytest.raises(BackdoorLabError, match="z_init"):
        invert(g, x, z_init=torch.zeros(2, 5))
    with pytest.raises(BackdoorLabError, match="z"):
        reconstruction_error(g, torch.zeros(2, 3), x)


def test_interpolate_endpoints_and_midpoint():
    g = _tiny_generator()
    z_own, z_other = torch.randn(4, 8), torch.randn(4, 8)
    with torch.no_grad():
        own, other = g(z_own), g(z_other)
        mid = g(0.8 * z_own + 0.2 * z_other)
    assert torch.allclose(interpolate(g, z_own, z_other, 0.0), own, atol=1e-6)
    assert torch.allclose(interpolate(g, z_own, z_other, 1), other, atol=1e-6)
    out = interpolate(g, z_own, z_other, 0.2)
    assert torch.allclose(out, mid, atol=1e-6)
    assert not torch.allclose(out, own, atol=1e-4)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.mark.parametrize("tau", [-0.1, 1.5, float("nan"), "0.2", True])
def test_interpolate_bad_tau_raises(tau):
    g = _tiny_generator()
    with pytest.raises(BackdoorLabError, match="tau"):
        interpolate(g, torch.zeros(1, 8), torch.zeros(1, 8), tau)


def test_interpolate_bad_z_raises():
    g = _tiny_generator()
    with pytest.raises(BackdoorLabError, match="latent_dim"):
        interpolate(g, torch.zeros(2, 7), torch.zeros(2, 7), 0.2)
    with pytest.raises(BackdoorLabError, match="same shape"):
        interpolate(g, torch.zeros(2, 8), torch.zeros(3, 8), 0.2)


def test_save_load_round_trip_and_refusals(tmp_path):
    g = _tiny_generator(batchnorm=True)
    with torch.no_grad():  # non-trivial running statistics must survive too
        g.train()
        g(torch.randn(16, 8))
        g.eval()
    path = save_generator(g, tmp_path / "g.safetensors")
    loaded = load_generator(path)
    assert loaded.spec == g.spec and not loaded.training
    z = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.equal(loaded(z), g(z))

    pickled = tmp_path / "g.pt"
    torch.save(g.state_dict(), pickled)
    with pytest.raises(UnsafeFileError, match="safetensors"):
        load_generator(pickled)
    garbage = tmp_path / "bad.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(UnsafeFileError):
        load_generator(garbage)
    tampered = bytearray(path.read_bytes())
    tampered[-1] ^= 0xFF  # flip bits of the last weight
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(bytes(tampered))
    with pytest.raises(UnsafeFileError, match="sha256"):
        load_generator(bad)
