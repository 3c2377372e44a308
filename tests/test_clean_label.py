"""Turner et al.'s clean-label attack (attacks/clean_label.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backdoorlab.attacks.base import Attack
from backdoorlab.attacks.clean_label import CleanLabel
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError
from backdoorlab.triggers import four_corner, stamp, turner_amplitude, turner_pattern

TURNER = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)


def _data(
    n: int = 400, k: int = 4, c: int = 3, size: int = 8, dtype: torch.dtype = torch.uint8
) -> ImageTensors:
    """Mid-grey random images (64..191, so ±noise rarely clips), labels in a shuffled order."""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(64, 192, (n, c, size, size), generator=g, dtype=torch.uint8)
    if dtype == torch.float32:
        images = images.float() / 255
    labels = torch.randint(0, k, (n,), generator=g)
    return ImageTensors(images, labels, tuple(str(i) for i in range(k)), name="toy")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_selection(labels: torch.Tensor, target: int, rate: float | int, seed: int) -> torch.Tensor:
    """REFERENCE_NOTES 002, written out independently: permute all, keep target indices, take the first."""
    perm = torch.randperm(len(labels), generator=_gen(seed)).tolist()
    in_target = [i for i in perm if int(labels[i]) == target]
    k = rate if isinstance(rate, int) else round(len(in_target) * rate)
    return torch.tensor(sorted(in_target[:k]), dtype=torch.long)


def _tiny_model(c: int = 3, k: int = 4, size: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(c, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * size * size, k),
    )


@pytest.mark.parametrize("rate", [0.06, 0.25, 1.0, 0.5])
def test_selection_follows_the_reference_rule(rate: float) -> None:
    train = _data()
    target = 2
    ps = CleanLabel(target=target, rate=rate).poison(train, _gen(7))
    expected = _reference_selection(train.labels, target, rate, seed=7)
    n_target = int((train.labels == target).sum())
    assert len(ps.poison_idx) == round(n_target * rate)
    assert torch.equal(ps.poison_idx, expected)
    assert bool((train.labels[ps.poison_idx] == target).all())
    # labels never change (clean label), and original_labels are the (unchanged) labels
    assert torch.equal(ps.data.labels, train.labels)
    assert torch.equal(ps.original_labels, train.labels[ps.poison_idx])
    assert ps.data.images.dtype == torch.uint8


def test_untouched_images_are_bit_identical_and_poisons_carry_the_trigger() -> None:
    train = _data()
    ps = CleanLabel(target=1, rate=0.5).poison(train, _gen(0))
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[ps.poison_idx] = False
    assert torch.equal(ps.data.images[keep], train.images[keep])
    poisoned = ps.data.images[ps.poison_idx]
    assert bool((poisoned[:, :, -3:, -3:] == TURNER).all())  # bottom-right, on every channel
    # "none" = trigger only: everything outside the patch is the original image
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[-3:, -3:] = False
    assert torch.equal(poisoned[:, :, outside], train.images[ps.poison_idx][:, :, outside])


def test_count_rate_and_seed_reproducibility() -> None:
    train = _data()
    a = CleanLabel(target=0, rate=5).poison(train, _gen(3))
    b = CleanLabel(target=0, rate=5).poison(train, _gen(3))
    assert len(a.poison_idx) == 5
    assert torch.equal(a.poison_idx, b.poison_idx) and torch.equal(a.data.images, b.data.images)
    assert torch.equal(a.poison_idx, _reference_selection(train.labels, 0, 5, 3))


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, 0, -3, True, "0.1", None])
def test_rate_validation(rate: object) -> None:
    with pytest.raises(BackdoorLabError, match="rate"):
        CleanLabel(rate=rate)  # type: ignore[arg-type]


def test_rate_too_large_or_too_small_for_the_target_class() -> None:
    train = _data()
    n_target = int((train.labels == 0).sum())
    with pytest.raises(BackdoorLabError, match=f"only {n_target}"):
        CleanLabel(target=0, rate=n_target + 1).poison(train, _gen())
    with pytest.raises(BackdoorLabError, match="poisons no image"):
        CleanLabel(target=0, rate=0.001).poison(train, _gen())
    with pytest.raises(BackdoorLabError, match="out of range"):
        CleanLabel(target=9).poison(train, _gen())


def test_bad_options() -> None:
    with pytest.raises(BackdoorLabError, match="perturbation"):
        CleanLabel(perturbation="diffusion")
    with pytest.raises(BackdoorLabError, match="norm"):
        CleanLabel(norm="l1")
    with pytest.raises(BackdoorLabError, match="eps"):
        CleanLabel(perturbation="pgd", eps=-1)
    with pytest.raises(BackdoorLabError, match="steps"):
        CleanLabel(perturbation="pgd", steps=0)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan"), 0, -1.0, 10**400, True, "600"])
@pytest.mark.parametrize(
    ("kwargs", "field", "fix"),
    [
        ({"perturbation": "pgd"}, "eps", "used by perturbation 'pgd'"),
        (
            {"perturbation": "pgd", "norm": "linf"},
            "eps",
            "leave it out for the default (600 for L2, 8 for L∞)",
        ),
        ({"perturbation": "pgd"}, "step", "used by perturbation 'pgd'"),
        ({"perturbation": "noise"}, "noise_std", "used by perturbation 'noise'"),
        ({"perturbation": "gan"}, "inversion_lr", "used by perturbation 'gan'"),
    ],
)
def test_non_finite_or_non_positive_options_fail_at_construction(
    kwargs: dict, field: str, fix: str, bad: object
) -> None:
    """eps=inf used to fail only when poisoning and noise_std=inf was accepted: now a named error (NaN too)."""
    with pytest.raises(BackdoorLabError, match=f"clean-label {field} must be a finite number > 0") as err:
        CleanLabel(target=1, **kwargs, **{field: bad})
    assert fix in str(err.value) and f"give a finite {field} > 0" in str(err.value)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ("{perturbation: pgd, eps: .inf}", "eps"),
        ("{perturbation: pgd, norm: linf, eps: .nan}", "eps"),
        ("{perturbation: noise, noise_std: .inf}", "noise_std"),
        ("{perturbation: noise, noise_std: .nan}", "noise_std"),
    ],
)
def test_non_finite_eps_and_noise_std_fail_from_a_yaml_config(tmp_path, params: str, field: str) -> None:
    """The same named errors reach an experiment YAML's attack.params (``.inf`` / ``.nan``)."""
    from backdoorlab.experiments.config import load_config
    from backdoorlab.experiments.runner import build_attack

    path = tmp_path / "exp.yaml"
    path.write_text(f"attack: {{name: clean-label, target: 1, rate: 0.5, params: {params}}}\n")
    cfg = load_config(path)
    with pytest.raises(BackdoorLabError, match=f"^attack: clean-label {field} must be a finite number > 0"):
        build_attack(cfg, 4)


def test_finite_options_still_build() -> None:
    pgd = CleanLabel(perturbation="pgd", eps=600, step=15.0)
    assert (pgd.eps, pgd.step) == (600.0, 15.0)
    assert CleanLabel(perturbation="noise", noise_std=1e-3).noise_std == 1e-3


def test_noise_perturbation_has_the_requested_std() -> None:
    train = _data(n=800)
    attack = CleanLabel(target=0, rate=1.0, perturbation="noise", noise_std=16)
    ps = attack.poison(train, _gen())
    diff = ps.data.images[ps.poison_idx].float() - train.images[ps.poison_idx].float()
    diff = diff[:, :, :5, :5]  # away from the trigger
    assert 13.0 < float(diff.std()) < 19.0
    assert abs(float(diff.mean())) < 2.0
    # perturb() itself, before stamping: seeded by `seed`, within [0, 1]
    x = train.float01(ps.poison_idx[:16])
    y = train.labels[ps.poison_idx[:16]]
    p1, p2 = attack.perturb(x, y), attack.perturb(x, y)
    assert torch.equal(p1, p2) and float(p1.min()) >= 0 and float(p1.max()) <= 1
    assert describe_has(attack, noise_std=16.0)


def describe_has(attack: CleanLabel, **fields: object) -> bool:
    d = attack.describe()
    return all(d.get(k) == v for k, v in fields.items())


def test_pgd_needs_a_robust_model() -> None:
    train = _data()
    attack = CleanLabel(perturbation="pgd")
    msg = "perturbation 'pgd' needs robust_model"
    with pytest.raises(BackdoorLabError, match=msg):
        attack.poison(train, _gen())
    with pytest.raises(BackdoorLabError, match="madry_objective"):
        attack.perturb(train.float01(slice(0, 4)), train.labels[:4])


@pytest.mark.parametrize(("norm", "eps"), [("l2", 300.0), ("linf", 8.0)])
def test_pgd_stays_in_the_ball_and_raises_the_loss(norm: str, eps: float) -> None:
    train = _data()
    model = _tiny_model()
    attack = CleanLabel(
        target=0, rate=0.5, perturbation="pgd", norm=norm, eps=eps, steps=10, robust_model=model
    )
    assert attack.steps == 10 and attack.step == pytest.approx(2.5 * eps / 10)
    idx = (train.labels == 0).nonzero().squeeze(1)[:32]
    x, y = train.float01(idx), train.labels[idx]
    adv = attack.perturb(x, y)
    delta = (adv - x).flatten(1)
    bound = eps / 255
    if norm == "l2":
        assert bool((delta.norm(dim=1) <= bound + 1e-4).all())
    else:
        assert float(delta.abs().max()) <= bound + 1e-6
    assert float(delta.abs().max()) > 0
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    # poison = perturb, stamp, quantise; the describe() carries the robust model's weights hash
    ps = attack.poison(train, _gen())
    assert torch.equal(ps.data.labels, train.labels)
    assert bool((ps.data.images[ps.poison_idx][:, :, -3:, -3:] == TURNER).all())
    d = attack.describe()
    assert d["perturbation"] == "pgd" and d["norm"] == norm and d["eps"] == eps
    assert isinstance(d["robust_model"], str) and len(d["robust_model"]) == 64


def test_default_pgd_settings() -> None:
    a = CleanLabel(perturbation="pgd")
    assert (a.eps, a.steps, a.step) == (600.0, 100, pytest.approx(15.0))
    b = CleanLabel(perturbation="pgd", norm="linf")
    assert (b.eps, b.steps, b.step) == (8.0, 100, pytest.approx(0.2))


def test_float_data_stays_float() -> None:
    train = _data(dtype=torch.float32)
    ps = CleanLabel(target=3, rate=0.25, perturbation="noise", noise_std=4).poison(train, _gen())
    assert ps.data.images.dtype == torch.float32
    assert bool((ps.data.images[ps.poison_idx][:, :, -3:, -3:] == TURNER.float() / 255).all())


@pytest.mark.parametrize("trigger", [turner_amplitude(32), four_corner(), {"kind": "turner"}])
def test_any_trigger_is_stamped_after_the_perturbation(trigger: object) -> None:
    train = _data()
    attack = CleanLabel(trigger=trigger, target=1, rate=0.5)  # type: ignore[arg-type]
    ps = attack.poison(train, _gen())
    x = train.float01(ps.poison_idx)
    expected = ImageTensors.quantize(stamp(x, attack.trigger))
    assert torch.equal(ps.data.images[ps.poison_idx], expected)


def test_attack_protocol() -> None:
    attack = CleanLabel(target=2)
    assert isinstance(attack, Attack)
    assert attack.name == "clean-label"
    y = torch.tensor([0, 1, 2, 3, 2])
    assert torch.equal(attack.target_labels(y), torch.full_like(y, 2))
    assert torch.equal(attack.victim_mask(y), torch.tensor([True, True, False, True, False]))
    x = torch.full((2, 3, 8, 8), 0.5)
    out = attack.apply_trigger(x)
    assert torch.equal(out, stamp(x, turner_pattern()))  # trigger only at test time, no perturbation
    assert torch.equal(x, torch.full((2, 3, 8, 8), 0.5))
    d = attack.describe()
    assert d["name"] == "clean-label" and d["rate"] == 0.06 and d["trigger"]["kind"] == "turner"


# -- GAN interpolation (Turner §4.1, §5.2) ------------------------------------------------------------------
def _tiny_generator(c: int = 3, size: int = 8):
    from backdoorlab.models.wgan import WGANGenerator

    torch.manual_seed(0)
    return WGANGenerator(latent_dim=4, channels=c, size=size, width=4).eval()


def test_gan_poisons_keep_labels_and_come_from_the_generator() -> None:
    data = _data()
    g = _tiny_generator()
    attack = CleanLabel(target=1, rate=0.25, perturbation="gan", generator=g, tau=0.2, inversion_steps=3)
    p = attack.poison(data, _gen())
    assert (p.data.labels == data.labels).all()
    assert (data.labels[p.poison_idx] == 1).all()
    others = torch.ones(len(data), dtype=torch.bool)
    others[p.poison_idx] = False
    assert torch.equal(p.data.images[others], data.images[others])
    assert (p.data.images[p.poison_idx] != data.images[p.poison_idx]).any()
    # the trigger is stamped on top of the generated image
    assert (p.data.images[p.poison_idx][..., -3:, -3:] == TURNER).all()
    d = attack.describe()
    assert d["perturbation"] == "gan" and d["tau"] == 0.2 and len(d["generator"]) == 64


def test_gan_codes_do_not_depend_on_the_rate() -> None:
    """A poisoned image gets the same code, hence the same poison, at every rate (one inversion per image)."""
    data = _data()
    g = _tiny_generator()
    small = CleanLabel(target=1, rate=0.1, perturbation="gan", generator=g, inversion_steps=3).poison(
        data, _gen()
    )
    large = CleanLabel(target=1, rate=0.5, perturbation="gan", generator=g, inversion_steps=3).poison(
        data, _gen()
    )
    shared = small.poison_idx[torch.isin(small.poison_idx, large.poison_idx)]
    assert len(shared) > 0
    assert torch.equal(small.data.images[shared], large.data.images[shared])


def test_gan_codes_saved_elsewhere_replace_the_inversion(monkeypatch: pytest.MonkeyPatch) -> None:
    """Codes from gan_codes, put back with add_gan_codes (another process, from the artefact cache), give the
    same poisons at any rate and τ without inverting again."""
    from backdoorlab.attacks import clean_label

    data = _data()
    g = _tiny_generator()
    first = CleanLabel(target=1, rate=0.25, perturbation="gan", generator=g, inversion_steps=3)
    idx, codes = first.gan_codes(data)
    assert set(idx.tolist()) >= set((data.labels == 1).nonzero().squeeze(1).tolist())
    expected = first.poison(data, _gen())
    clean_label._CODE_CACHE.clear()
    second = CleanLabel(target=1, rate=0.25, perturbation="gan", generator=g, inversion_steps=3)
    second.add_gan_codes(data, idx, codes)
    monkeypatch.setattr(CleanLabel, "encode", lambda *a, **k: pytest.fail("inverted again"))
    assert torch.equal(second.poison(data, _gen()).data.images, expected.data.images)
    with pytest.raises(BackdoorLabError, match="3 indices but 2 codes"):
        second.add_gan_codes(data, idx[:3], codes[:2])


def test_gan_tau_moves_toward_the_other_class() -> None:
    """τ = 0 is the image's own reconstruction; a larger τ lands closer to G(code of the partner)."""
    data = _data()
    g = _tiny_generator()
    x, other = data.float01(slice(0, 6)), data.float01(slice(6, 12))
    near = CleanLabel(target=1, perturbation="gan", generator=g, tau=0.0, inversion_steps=3)
    far = CleanLabel(target=1, perturbation="gan", generator=g, tau=1.0, inversion_steps=3)
    z = near.encode(torch.cat([x, other]))
    assert torch.allclose(near.generate(z[:6], z[6:]), g(z[:6]).clamp(0, 1), atol=1e-6)
    assert torch.allclose(far.generate(z[:6], z[6:]), g(z[6:]).clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tau": 1.5}, "tau"),
        ({"tau": -0.1}, "tau"),
        ({"toward": 1}, "toward"),
        ({"inversion_steps": 0}, "inversion_steps"),
        ({"inversion_lr": 0}, "inversion_lr"),
    ],
)
def test_gan_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(BackdoorLabError, match=match):
        CleanLabel(target=1, perturbation="gan", **kwargs)


def test_gan_needs_a_generator_and_an_existing_class() -> None:
    with pytest.raises(BackdoorLabError, match="needs generator"):
        CleanLabel(target=1, rate=0.25, perturbation="gan").poison(_data(), _gen())
    with pytest.raises(BackdoorLabError, match="toward 9 is out of range"):
        CleanLabel(target=1, rate=0.25, perturbation="gan", toward=9, generator=_tiny_generator()).poison(
            _data(), _gen()
        )
