from __future__ import annotations

import functools
import warnings

import pytest
import torch
import torch.nn.functional as F

from backdoorlab.adversarial import (
    bim,
    eps_from_255,
    fgsm,
    madry_objective,
    perturb_dataset,
    pgd,
    robust_accuracy,
    warn_unreachable,
)
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics import accuracy
from backdoorlab.training import TrainRecipe, fit
from tests.conftest import tiny_net

EPS, STEP, STEPS = 0.15, 0.03, 10


def _linear(seed: int = 0, classes: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, classes))


def _margin_data(n: int, seed: int) -> ImageTensors:
    """2 classes, 1×8×8: one robust pixel (±0.3, margin 0.3 > ε) and 63 weak, noisy, non-robust pixels.

    A natural model leans on the many weak pixels that an ε = 0.15 L∞ attack flips; an adversarially
    trained one relies on the robust pixel and stays correct.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    s = (2 * y - 1).float()
    x = 0.5 + 0.1 * s.view(-1, 1, 1, 1) + 0.1 * torch.randn(n, 1, 8, 8, generator=g)
    x[:, 0, 0, 0] = 0.5 + 0.3 * s
    return ImageTensors(x.clamp(0, 1), y, ("neg", "pos"), name="margin")


RECIPE = TrainRecipe(epochs=10, batch_size=64, lr=0.1, channels_last=False)


@pytest.fixture(scope="module")
def margin() -> tuple[ImageTensors, ImageTensors]:
    return _margin_data(512, 0), _margin_data(256, 1)


@pytest.fixture(scope="module")
def natural(margin) -> torch.nn.Module:
    model = _linear(0)
    fit(model, margin[0], RECIPE, device="cpu", seed=0)
    return model


def _batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_linf_pgd_stays_in_ball_and_box():
    model = tiny_net()
    x, y = _batch()
    adv = pgd(model, x, y, 0.1, 0.03, 8, random_start=True, gen=torch.Generator().manual_seed(1))
    assert adv.shape == x.shape and not adv.requires_grad
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() > 0.09  # it actually moved to the boundary


def test_l2_pgd_stays_in_ball_and_box():
    model = tiny_net()
    x, y = _batch()
    eps = 0.5
    for rs in (False, True):
        adv = pgd(model, x, y, eps, 0.2, 8, norm="l2", random_start=rs, gen=3)
        norms = (adv - x).flatten(1).norm(dim=1)
        assert (norms <= eps + 1e-5).all()
        assert norms.max() > 0.4
        assert adv.min() >= 0 and adv.max() <= 1


def test_pgd_raises_loss_and_drops_accuracy(margin, natural):
    _, test = margin
    x, y = test.float01(), test.labels
    adv = pgd(natural, x, y, EPS, STEP, STEPS)
    with torch.no_grad():
        assert F.cross_entropy(natural(adv), y) > F.cross_entropy(natural(x), y) + 0.5
    assert accuracy(natural, test) > 0.95
    attack = functools.partial(pgd, natural, eps=EPS, step=STEP, steps=STEPS)
    assert robust_accuracy(natural, test, attack) < 0.85
    # BIM and FGSM hurt too; the iterative attacks at least as much as the single step
    acc_bim = robust_accuracy(natural, test, functools.partial(bim, natural, eps=EPS, step=STEP, steps=STEPS))
    acc_fgsm = robust_accuracy(natural, test, functools.partial(fgsm, natural, eps=EPS))
    assert acc_bim < 0.85 and acc_fgsm < 0.95


def test_targeted_pgd_raises_target_probability():
    model = tiny_net()
    x, _ = _batch()
    target = torch.full((len(x),), 2)
    with torch.no_grad():
        before = model(x).softmax(1)[:, 2]
    adv = pgd(model, x, target, 0.1, 0.02, 10, targeted=True)
    with torch.no_grad():
        after = model(adv).softmax(1)[:, 2]
    assert (after > before).all()


def test_fgsm_on_linear_model_moves_eps_sign_w():
    model = _linear(3)
    w = model[1].weight.detach()
    x = torch.full((4, 1, 8, 8), 0.5)
    y = torch.tensor([0, 1, 0, 1])
    eps = 0.1
    adv = fgsm(model, x, y, eps)
    # d CE / dx = Σ_c (p_c − 1[c = y]) w_c = (1 − p_y)(w_other − w_y) for two classes
    direction = torch.stack([w[1 - int(c)] - w[int(c)] for c in y]).view(4, 1, 8, 8)
    torch.testing.assert_close(adv - x, eps * direction.sign())
    adv2 = fgsm(model, x, y, eps, norm="l2")
    unit = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(adv2 - x, eps * unit, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fgsm(model, x, y, 0.0), x)


def test_random_start_is_seeded():
    model = tiny_net()
    x, y = _batch()
    for norm in ("linf", "l2"):
        a = pgd(model, x, y, 0.1, 0.02, 2, norm=norm, random_start=True, gen=torch.Generator().manual_seed(5))
        b = pgd(model, x, y, 0.1, 0.02, 2, norm=norm, random_start=True, gen=torch.Generator().manual_seed(5))
        c = pgd(model, x, y, 0.1, 0.02, 2, norm=norm, random_start=True, gen=torch.Generator().manual_seed(6))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_params_get_no_grad_and_mode_is_restored():
    model = torch.nn.Sequential(tiny_net(), torch.nn.Dropout(0.5))
    x, y = _batch()
    model.train()
    pgd(model, x, y, 0.1, 0.02, 3, random_start=True, restarts=2)
    assert model.training and model[1].training
    model.eval()
    fgsm(model, x, y, 0.1)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    # the attack in eval mode is deterministic despite the dropout layer
    model.train()
    assert torch.equal(bim(model, x, y, 0.1, 0.02, 3), bim(model, x, y, 0.1, 0.02, 3))
    # works under no_grad too
    with torch.no_grad():
        adv = pgd(model, x, y, 0.1, 0.02, 2)
    assert not torch.equal(adv, x)


def test_restarts_keep_worst_case():
    model = tiny_net()
    x, y = _batch(32)

    def losses(adv: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return F.cross_entropy(model(adv), y, reduction="none")

    kw = dict(eps=0.2, step=0.01, steps=2, random_start=True)
    single = pgd(model, x, y, **kw, gen=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    runs = [pgd(model, x, y, **kw, gen=gen) for _ in range(4)]
    best = pgd(model, x, y, **kw, gen=torch.Generator().manual_seed(0), restarts=4)
    assert torch.equal(runs[0], single)
    per_run = torch.stack([losses(r) for r in runs])
    assert len(set(per_run.argmax(0).tolist())) > 1  # the worst case comes from different restarts
    torch.testing.assert_close(losses(best), per_run.max(0).values)
    # targeted keeps the lowest loss
    best_t = pgd(model, x, y, **kw, gen=torch.Generator().manual_seed(0), restarts=4, targeted=True)
    gen = torch.Generator().manual_seed(0)
    runs_t = torch.stack([losses(pgd(model, x, y, **kw, gen=gen, targeted=True)) for _ in range(4)])
    torch.testing.assert_close(losses(best_t), runs_t.min(0).values)


def test_madry_training_is_more_robust(margin, natural):
    train, test = margin
    robust = _linear(0)
    objective = madry_objective(EPS, STEP, STEPS, gen=0)
    hist = fit(robust, train, RECIPE, objective=objective, device="cpu", seed=0)
    assert len(hist) == RECIPE.epochs and "train_acc" in hist[-1]

    def attack(m):
        return functools.partial(pgd, m, eps=EPS, step=STEP, steps=STEPS, random_start=True, gen=1)

    acc_robust = robust_accuracy(robust, test, attack(robust))
    acc_natural = robust_accuracy(natural, test, attack(natural))
    assert accuracy(robust, test) > 0.95
    assert acc_robust > 0.95
    assert acc_robust > acc_natural + 0.1


def test_madry_objective_mix_and_train_mode():
    model = torch.nn.Sequential(tiny_net(), torch.nn.Dropout(0.1))
    x, y = _batch(8)
    model.train()
    loss, logits = madry_objective(0.1, 0.05, 2, mix=0.5)(model, x, y)
    assert model.training
    assert loss.requires_grad and logits.shape == (8, 3)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_madry_objective_with_conv_net_and_default_recipe(toy):
    model = tiny_net()
    hist = fit(
        model,
        toy,
        TrainRecipe(epochs=1, batch_size=64, lr=0.05),
        objective=madry_objective(eps_from_255(8), eps_from_255(2), 2, mix=0.2, gen=0),
        device="cpu",
    )
    assert len(hist) == 1 and 0.0 <= hist[0]["train_acc"] <= 1.0


def test_perturb_dataset(margin, natural):
    _, test = margin
    small = test.subset(torch.arange(40))
    u8 = small.with_images(ImageTensors.quantize(small.images))
    calls = []
    out = perturb_dataset(
        natural,
        u8,
        functools.partial(pgd, natural, eps=EPS, step=STEP, steps=3),
        batch_size=16,
        progress=lambda i, n, info: calls.append((i, n)),
    )
    assert out.images.dtype == torch.float32 and out.images.shape == u8.images.shape
    assert torch.equal(out.labels, u8.labels)
    assert (out.images - u8.float01()).abs().max() <= EPS + 1e-6
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_eps_from_255():
    assert eps_from_255(8) == pytest.approx(8 / 255)
    assert eps_from_255(600) == pytest.approx(600 / 255)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(eps=-0.1), "eps"),
        (dict(step=0.0), "step"),
        (dict(steps=0), "steps"),
        (dict(norm="l1"), "norm"),
        (dict(restarts=0), "restarts"),
    ],
)
def test_validation_names_parameter(kwargs, name):
    model = tiny_net()
    x, y = _batch(2)
    args = dict(eps=0.1, step=0.01, steps=2) | kwargs
    with pytest.raises(BackdoorLabError, match=rf"^{name} "):
        pgd(model, x, y, **args)
    if name in ("eps", "norm"):
        with pytest.raises(BackdoorLabError, match=rf"^{name} "):
            fgsm(model, x, y, args["eps"], norm=args.get("norm", "linf"))
    if name != "restarts":
        with pytest.raises(BackdoorLabError, match=rf"^{name} "):
            madry_objective(args["eps"], args["step"], args["steps"], norm=args.get("norm", "linf"))
    with pytest.raises(BackdoorLabError, match=r"^mix "):
        madry_objective(0.1, 0.01, 2, mix=1.5)


# -- step × steps < ε: allowed, warned once ------------------------------------------------------------------
def test_unreachable_ball_warns_in_pgd_bim_and_madry_objective():
    model = tiny_net()
    x, y = _batch(4)
    with pytest.warns(UserWarning, match=r"^pgd: step 0\.01 × steps 2 = 0\.02 < eps 0\.1: PGD cannot reach"):
        pgd(model, x, y, 0.1, 0.01, 2)
    with pytest.warns(UserWarning, match=r"^bim: step 0\.01 × steps 2"):
        bim(model, x, y, 0.1, 0.01, 2)
    with pytest.warns(UserWarning, match=r"^madry_objective: step 0\.01 × steps 2 = 0\.02 < eps 0\.1"):
        objective = madry_objective(0.1, 0.01, 2, gen=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        objective(model, x, y)  # warned once when built, not again on every batch
        objective(model, x, y)
        pgd(model, x, y, 0.1, 0.01, 2, warn=False)
        bim(model, x, y, 0.1, 0.01, 2, warn=False)


def test_reachable_ball_does_not_warn():
    model = tiny_net()
    x, y = _batch(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pgd(model, x, y, 0.1, 0.05, 2)  # step × steps = ε exactly
        pgd(model, x, y, EPS, STEP, STEPS, random_start=True)
        bim(model, x, y, 0.1, 0.02, 10)
        madry_objective(0.1, 0.05, 2)(model, x, y)
        fgsm(model, x, y, 0.1)
        pgd(model, x, y, 0.0, 0.01, 1)  # ε = 0: nothing to reach
        assert warn_unreachable(0.3, 0.03, 20, "Table 1") is False


def test_warn_unreachable_names_the_setting():
    with pytest.warns(UserWarning, match=r"^robust: step 0\.01 × steps 1 = 0\.01 < eps 0\.1: .*surface"):
        assert warn_unreachable(0.1, 0.01, 1, "robust") is True
