"""DnCNN layout and init, denoiser training, safe files, and the composed classifier f ∘ D."""

from __future__ import annotations

import inspect

import pytest
import torch

from backdoorlab.audit.denoiser import (
    Denoised,
    denoised,
    denoising_mse,
    load_denoiser,
    save_denoiser,
    train_denoiser,
)
from backdoorlab.errors import BackdoorLabError, UnsafeFileError
from backdoorlab.models import create_model, save_model
from backdoorlab.models.dncnn import DnCNN
from tests.conftest import tiny_net

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dncnn_is_identity_at_init():
    d = DnCNN(channels=3, depth=5, width=8).eval()
    x = torch.rand(4, 3, 9, 7)
    assert torch.equal(d(x), x)
    d.train()
    assert torch.equal(d(x), x)  # zero last conv: identity whatever the BatchNorm statistics


def test_dncnn_layout_follows_reference_notes():
    defaults = inspect.signature(DnCNN).parameters
    assert (defaults["depth"].default, defaults["width"].default) == (17, 64)
    d = DnCNN(channels=1, depth=17, width=8)  # narrow: same layout, cheaper orthogonal init
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in d.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == 17 and len(bns) == 15
    assert convs[0].bias is not None and all(c.bias is None for c in convs[1:])
    assert (convs[0].in_channels, convs[-1].out_channels) == (1, 1)
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert all(b.eps == 1e-4 and b.momentum == 0.95 for b in bns)
    assert torch.count_nonzero(convs[-1].weight) == 0
    # orthogonal init: the 8 rows of a middle conv (8 × 72) are orthonormal
    w = convs[5].weight.flatten(1)
    assert torch.allclose(w @ w.T, torch.eye(8), atol=1e-5)
    assert d.spec == {"name": "dncnn", "channels": 1, "depth": 17, "width": 8}


def test_dncnn_seeded_init_and_bad_arguments():
    a, b = DnCNN(1, 4, 8), DnCNN(1, 4, 8)
    a.reset_parameters(torch.Generator().manual_seed(3))
    b.reset_parameters(torch.Generator().manual_seed(3))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(BackdoorLabError, match="depth"):
        DnCNN(1, depth=1)
    with pytest.raises(BackdoorLabError, match="width"):
        DnCNN(1, width=0)
    with pytest.raises(BackdoorLabError, match="channels"):
        DnCNN(1, 3, 4)(torch.rand(2, 3, 8, 8))


def test_train_denoiser_lowers_mse(toy):
    sigma = 0.5
    d = train_denoiser(toy, sigma, epochs=3, batch_size=32, depth=4, width=16, seed=0, device="cpu")
    assert isinstance(d, DnCNN) and d.sigma == sigma and not d.training
    assert len(d.history) == 3 and d.history[-1]["loss"] < d.history[0]["loss"]
    noisy = denoising_mse(None, toy, sigma, seed=1)
    assert noisy == pytest.approx(sigma**2, rel=0.05)  # unclipped noise: MSE of the noisy input is σ²
    after = denoising_mse(d, toy, sigma, seed=1)
    assert after < 0.5 * noisy  # more than 3 dB PSNR gain on held-out noise


def test_train_denoiser_is_deterministic_and_accepts_tensors(toy):
    x = toy.float01()[:64]
    kw = dict(epochs=1, batch_size=16, depth=3, width=4, seed=5, device="cpu")
    a, b = train_denoiser(x, 0.25, **kw), train_denoiser(x, 0.25, **kw)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
    ],
)
def test_train_denoiser_rejects_bad_input(toy, kwargs, field):
    args = {"sigma": 0.5, "epochs": 1, "batch_size": 8, **kwargs}
    sigma = args.pop("sigma")
    with pytest.raises(BackdoorLabError, match=field):
        train_denoiser(toy, sigma, depth=3, width=4, **args)


def test_train_denoiser_rejects_bad_images():
    with pytest.raises(BackdoorLabError, match=r"\[0, 1\]"):
        train_denoiser(torch.full((4, 1, 8, 8), 3.0), 0.5, epochs=1, batch_size=2)
    with pytest.raises(BackdoorLabError, match="no images"):
        train_denoiser(torch.zeros(0, 1, 8, 8), 0.5, epochs=1, batch_size=2)


def test_save_load_round_trip_and_refusals(tmp_path):
    d = DnCNN(channels=3, depth=4, width=8)
    torch.nn.init.normal_(d.net[-1].weight, std=0.1)  # non-trivial output
    d.sigma = 0.5
    path = save_denoiser(d, tmp_path / "d.safetensors", extra={"dataset": "shapes"})
    back = load_denoiser(path)
    assert back.spec == d.spec and back.sigma == 0.5 and back.extra == {"dataset": "shapes"}
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(back(x), d.eval()(x))

    pickled = tmp_path / "d.pt"
    torch.save(d.state_dict(), pickled)
    with pytest.raises(UnsafeFileError, match="pickle"):
        load_denoiser(pickled)

    clf = create_model("lenet", in_channels=1, num_classes=2, input_size=28)
    other = save_model(clf, tmp_path / "clf.safetensors", classes=["a", "b"])
    with pytest.raises(UnsafeFileError, match="denoiser"):
        load_denoiser(other)

    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # flip a bit of the last weight
    tampered = tmp_path / "t.safetensors"
    tampered.write_bytes(bytes(raw))
    with pytest.raises(UnsafeFileError, match="sha256"):
        load_denoiser(tampered)
    with pytest.raises(BackdoorLabError, match="DnCNN"):
        save_denoiser(clf, tmp_path / "x.safetensors")


def test_denoised_composes_and_keeps_gradients():
    f = tiny_net()
    d = DnCNN(1, 3, 4)
    torch.nn.init.normal_(d.net[-1].weight, std=0.1)
    g = denoised(f, d)
    assert isinstance(g, Denoised)
    x = torch.rand(3, 1, 8, 8, requires_grad=True)
    assert torch.allclose(g(x), f(d(x)))
    g(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    lenet = create_model("lenet", in_channels=1, num_classes=10, input_size=28)
    assert denoised(lenet, d).spec == lenet.spec  # shape checks see the classifier's input shape
    with pytest.raises(BackdoorLabError, match="denoiser"):
        denoised(f, "not a module")
