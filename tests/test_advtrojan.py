"""AdvTrojan (seed 004): reversed cross-entropy, the Eq. 9 objective, test-time examples and Table 5."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from backdoorlab.attacks.advtrojan import (
    AdvTrojan,
    advtrojan_accuracy,
    advtrojan_examples,
    reversed_cross_entropy,
    table5_accuracies,
    with_intensity,
)
from backdoorlab.attacks.base import Attack
from backdoorlab.errors import BackdoorLabError
from backdoorlab.training import TrainRecipe
from backdoorlab.triggers import square, stamp
from tests.conftest import tiny_net


class Recorder(torch.nn.Module):
    """Wraps a model and records the inputs of every forward call made in training mode."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.train_inputs: list[torch.Tensor] = []
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.training:
            self.train_inputs.append(x.detach().clone())
        return self.net(x)


def _attack(**kw) -> AdvTrojan:
    params = {"trigger": square(2), "eps": 0.1, "step": 0.05, "steps": 3, "seed": 0} | kw
    return AdvTrojan(**params)


# -- reversed cross-entropy -----------------------------------------------------------------------------------
def test_reversed_ce_is_zero_when_true_class_has_zero_probability():
    logits = torch.tensor([[float("-inf"), 1.0, 2.0], [-1e4, 0.0, 0.0]])
    y = torch.tensor([0, 0])
    assert torch.allclose(reversed_cross_entropy(logits, y), torch.zeros(2), atol=1e-6)


def test_reversed_ce_grows_with_true_class_probability_and_matches_definition():
    zy = torch.linspace(-6, 6, 13)
    logits = torch.stack([zy, torch.zeros(13), torch.full((13,), 0.5)], 1)
    y = torch.zeros(13, dtype=torch.long)
    got = reversed_cross_entropy(logits, y)
    p = logits.softmax(1)[:, 0]
    assert torch.allclose(got, -torch.log1p(-p), atol=1e-5)
    assert bool((got[1:] > got[:-1]).all())
    # p_y rounds to 1 in float32: still finite, ≈ z_y − log(Σ_{i≠y} e^{z_i})
    far = reversed_cross_entropy(torch.tensor([[100.0, 0.0, 0.0]]), torch.tensor([0]))
    assert math.isfinite(float(far)) and float(far) == pytest.approx(100 - math.log(2), rel=1e-5)


def test_reversed_ce_validates_its_inputs():
    with pytest.raises(BackdoorLabError, match="at least 2 classes"):
        reversed_cross_entropy(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(BackdoorLabError, match=r"labels must lie in 0\.\.2"):
        reversed_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]))


# -- the Eq. 9 objective --------------------------------------------------------------------------------------
def test_objective_terms_labels_ball_and_single_training_forward(toy):
    torch.manual_seed(0)
    model = Recorder(tiny_net())
    attack = _attack()
    x, y = toy.float01(slice(0, 16)), toy.labels[:16]
    model.train()
    loss, logits = attack.objective()(model, x, y)
    assert torch.isfinite(loss) and logits.shape == (16, 3)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(
        g.abs().sum() > 0 for g in grads
    )
    # one PGD run for both adversarial branches (3 eval forwards) + one training forward of all four branches
    assert model.calls == attack.steps + 1 and len(model.train_inputs) == 1
    ben, adv, trig, both = model.train_inputs[0].split(16)
    assert torch.equal(ben, x)
    assert torch.equal(trig, stamp(x, attack.trigger))
    for clean, pert in ((ben, adv), (trig, both)):
        assert (pert - clean).abs().max() <= attack.eps + 1e-6  # PGD stays in the L∞ ball
        assert pert.min() >= 0 and pert.max() <= 1 and (pert - clean).abs().max() > 0
    # every term uses the true label y (Eq. 9); term 4 is the reversed CE of the triggered PGD examples
    with torch.no_grad():
        net = model.net
        want = torch.stack(
            [
                F.cross_entropy(net(ben), y),
                F.cross_entropy(net(adv), y),
                F.cross_entropy(net(trig), y),
                reversed_cross_entropy(net(both), y).mean(),
            ]
        )
    assert torch.allclose(attack.last_terms, want, atol=1e-5)
    assert float(loss.detach()) == pytest.approx(float(want.sum()), rel=1e-5)


def test_weights_fraction_and_separate_forwards(toy):
    torch.manual_seed(0)
    model = Recorder(tiny_net())
    attack = _attack(weights=(1.0, 0.0, 0.0, 2.0), trigger_fraction=0.25, single_forward=False)
    x, y = toy.float01(slice(0, 16)), toy.labels[:16]
    model.train()
    loss, _ = attack.objective()(model, x, y)
    t = attack.last_terms
    assert float(loss.detach()) == pytest.approx(float(t[0] + 2 * t[3]), rel=1e-5)
    sizes = [len(v) for v in model.train_inputs]
    assert sizes == [16, 16, 4, 4]  # benign, PGD, then the triggered quarter of the batch


def test_batchnorm_models_get_one_forward_per_term(toy):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(256, 3),
    )
    model = Recorder(net)
    model.train()
    _attack().objective()(model, toy.float01(slice(0, 8)), toy.labels[:8])
    assert [len(v) for v in model.train_inputs] == [8, 8, 8, 8]  # BatchNorm statistics per branch


def test_targeted_variant_uses_the_target_label(toy):
    torch.manual_seed(0)
    model = Recorder(tiny_net())
    attack = _attack(target=2)
    x, y = toy.float01(slice(0, 8)), toy.labels[:8]
    model.train()
    attack.objective()(model, x, y)
    both = model.train_inputs[0].split(8)[3]
    with torch.no_grad():
        want = F.cross_entropy(model.net(both), torch.full_like(y, 2))
    assert float(attack.last_terms[3]) == pytest.approx(float(want), rel=1e-5)
    assert attack.target_labels(y).tolist() == [2] * 8
    assert attack.victim_mask(y).tolist() == (y != 2).tolist()


def test_fit_with_the_objective_on_toy(toy):
    data = toy.subset(torch.arange(120))
    recipe = TrainRecipe(epochs=2, batch_size=60, lr=0.05)
    torch.manual_seed(0)
    model = tiny_net()
    attack = _attack()
    hist = attack.fit(model, data, recipe, seed=0, device="cpu")
    assert len(hist) == 2 and all(math.isfinite(h["loss"]) for h in hist)
    assert 0.0 <= hist[-1]["train_acc"] <= 1.0
    assert attack.last_terms is not None and torch.isfinite(attack.last_terms).all()
    with pytest.raises(BackdoorLabError, match="sets the objective itself"):
        attack.fit(model, data, recipe, objective=None)


# -- protocol, intensity, validation --------------------------------------------------------------------------
def test_protocol_and_poison_refusal(toy):
    attack = _attack(intensity=1.0, test_intensity=0.5)
    assert isinstance(attack, Attack)
    with pytest.raises(BackdoorLabError, match="objective"):
        attack.poison(toy, torch.Generator().manual_seed(0))
    with pytest.raises(BackdoorLabError, match="untargeted"):
        attack.target_labels(toy.labels)
    assert bool(attack.victim_mask(toy.labels).all())
    x = torch.zeros(2, 1, 8, 8)
    out = attack.apply_trigger(x)
    assert out[:, :, -2:, -2:].unique().tolist() == [0.5] and out[:, :, :-2].abs().sum() == 0
    d = attack.describe()
    assert d["name"] == "advtrojan" and d["test_intensity"] == 0.5 and d["weights"] == [1.0] * 4


def test_paper_settings():
    a = AdvTrojan.paper("mnist5k")
    assert (a.eps, a.step, a.steps, a.intensity, a.test_intensity) == (0.3, 0.03, 20, 1.0, 0.75)
    f = AdvTrojan.paper("fashion-mnist")
    assert (f.eps, f.step, f.steps) == (0.2, 0.02, 20)
    with pytest.raises(BackdoorLabError, match="unknown AdvTrojan Table 1 dataset"):
        AdvTrojan.paper("svhn")


def test_with_intensity_scales_the_pattern():
    t = with_intensity(square(2, value=0.8), 0.5)
    assert torch.allclose(t.pattern, torch.full_like(t.pattern, 0.4)) and t.spec["intensity"] == 0.5
    with pytest.raises(BackdoorLabError, match=r"intensity must be a number in \[0, 1\]"):
        with_intensity(square(2), 1.5)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"eps": 0.0}, "eps must be"),
        ({"eps": -0.1}, "eps must be"),
        ({"step": 0.0}, "step must be"),
        ({"steps": 0}, "steps must be"),
        ({"intensity": 1.2}, "intensity must be"),
        ({"test_intensity": -0.1}, "test_intensity must be"),
        ({"weights": (1, 1, 1)}, "weights must be four"),
        ({"weights": (0, 0, 0, 0)}, "weights are all zero"),
        ({"trigger_fraction": 0.0}, "trigger_fraction"),
        ({"norm": "l1"}, "unknown AdvTrojan norm"),
        ({"target": -1}, "target must be"),
    ],
)
def test_bad_settings_are_named_errors(kw, match):
    with pytest.raises(BackdoorLabError, match=match):
        _attack(**kw)


def test_unreachable_ball_warns():
    with pytest.warns(UserWarning, match="cannot reach"):
        _attack(eps=0.3, step=0.01, steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _attack(eps=0.3, step=0.03, steps=20)  # Table 1: step·steps = 2ε, no warning


def test_unreachable_ball_warns_once_not_per_batch(toy):
    with pytest.warns(UserWarning, match=r"^AdvTrojan: step 0\.01 × steps 5 = 0\.05 < eps 0\.3"):
        attack = _attack(eps=0.3, step=0.01, steps=5)
    model = tiny_net()
    x, y = toy.float01(slice(0, 8)), toy.labels[:8]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        objective = attack.objective()
        objective(model, x, y)  # Eq. 9's PGD runs every batch: warned once, when the attack was built
        objective(model, x, y)
        advtrojan_examples(model, x, y, attack, method="bim")


# -- test-time examples and Table 5 ---------------------------------------------------------------------------
def test_advtrojan_examples_trigger_first_then_perturb(toy):
    torch.manual_seed(0)
    model = tiny_net()
    attack = _attack(test_intensity=0.75)
    x, y = toy.float01(slice(0, 12)), toy.labels[:12]
    triggered = attack.apply_trigger(x)
    assert torch.equal(advtrojan_examples(model, x, y, attack, eps=0.0), triggered)
    for method in ("pgd", "bim", "fgsm"):
        adv = advtrojan_examples(model, x, y, attack, method=method)
        assert (adv - triggered).abs().max() <= attack.eps + 1e-6  # the ball is around the triggered input
        assert (adv - triggered).abs().max() > 0
    with pytest.raises(BackdoorLabError, match="unknown perturbation method"):
        advtrojan_examples(model, x, y, attack, method="cw")


class Constant(torch.nn.Module):
    """Always predicts class 1, whatever the input (still differentiable for PGD)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.tensor([0.0, 5.0, 0.0], device=x.device).expand(len(x), 3)
        return z + self.w * x.flatten(1).sum(1, keepdim=True)


def test_table5_keys_and_constant_model(toy):
    attack = _attack()
    test = toy.subset(torch.arange(60))
    share = float((test.labels == 1).float().mean())
    got = table5_accuracies(Constant(), test, attack, source_model=tiny_net(), batch_size=25)
    assert set(got) == {"benign", "pgd", "trigger", "advtrojan", "transferred_advtrojan", "n"}
    assert got["n"] == 60
    assert all(got[k] == pytest.approx(share) for k in got if k != "n")
    torch.manual_seed(0)
    net = tiny_net()
    acc = advtrojan_accuracy(net, test, attack, trigger=False, eps=0.0)
    from backdoorlab.metrics import accuracy

    assert acc == pytest.approx(accuracy(net, test))  # ε = 0 and no trigger: the clean accuracy
