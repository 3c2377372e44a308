"""The audit pipeline of Sun et al. end to end on a tiny colour-trigger BadNets model, its verdict, its report,
the denoiser cache, the CLI entry point and the named errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from backdoorlab import BadNets, TrainRecipe, attack_success_rate, fit, make_generator, square
from backdoorlab.audit import pipeline
from backdoorlab.audit.pipeline import audit, run_audit_cli
from backdoorlab.audit.report import render_audit_report
from backdoorlab.audit.verdict import decide
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError, UnsafeFileError
from backdoorlab.models import create_model, save_model
from backdoorlab.models.dncnn import DnCNN

MAGENTA = torch.tensor([1.0, 0.0, 1.0])
FAST = {"sigma": 0.1, "eps": 2.0, "m": 4, "steps": 20, "n_images": 6, "n_eval": 60, "reps": 3, "n_null": 12}


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_rgb(n: int, seed: int, hw: int = 12) -> ImageTensors:
    """3 classes of randomly tinted 12×12 RGB textures (row stripes, column stripes, diagonal stripes): the
    class is a property of the whole image, so no small patch can imitate it."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    i = torch.arange(hw)
    textures = torch.stack(
        [
            (i[:, None] // 2 % 2).expand(hw, hw),
            (i[None, :] // 2 % 2).expand(hw, hw),
            (i[:, None] + i[None, :]) // 2 % 2,
        ]
    ).float()
    low = torch.rand(n, 3, 1, 1, generator=g) * 0.35
    amp = torch.rand(n, 3, 1, 1, generator=g) * 0.35 + 0.05
    x = (low + amp * textures[labels][:, None] + 0.04 * torch.randn(n, 3, hw, hw, generator=g)).clamp(0, 1)
    return ImageTensors(
        (x * 255).round().to(torch.uint8), labels, ("rows", "cols", "diagonal"), name="toy-rgb"
    )


def small_net() -> nn.Module:
    """A LeNet-like toy: two strided convs and a linear layer on the flattened map."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 9, 3),
    )


RECIPE = TrainRecipe(epochs=8, batch_size=32, optimizer="adam", lr=1e-2, channels_last=False)


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(1)
    train, test = toy_rgb(300, 0), toy_rgb(150, 1)
    attack = BadNets(square(size=3, value=(1.0, 0.0, 1.0), placement="random"), target=0, rate=0.2)
    poisoned = attack.poison(train, make_generator(0))
    model = small_net()
    fit(model, poisoned.data, RECIPE, seed=0, device="cpu")
    return model.eval(), attack, train, test


def test_a_planted_colour_trigger_is_recovered(toy):
    model, attack, _, test = toy
    real_asr = attack_success_rate(model, test, attack)
    assert real_asr > 0.5
    r = audit(model, test, denoiser=DnCNN(3, depth=2, width=4), patch_size=3, seed=0, **FAST)
    # the check: a candidate whose colour is close to the trigger's, and it works
    colours = [(i, c) for i, c in enumerate(r.candidates) if c.kind in ("color", "saturated")]
    dist = torch.stack([(c.colors[0] - MAGENTA).abs().amax() for _, c in colours])
    closest = colours[int(dist.argmin())][0]
    assert float(dist.min()) < 0.3 and r.success[closest, 0] > 0.5
    v = r.verdict
    assert v.poisoned and v.target == 0 and v.flagged == (0,)
    assert v.best_rate > real_asr and v.score > 5  # as Table 1: an alternative trigger beats the original
    best = r.candidates[v.evidence[0]]
    assert r.success[v.evidence[0], 0] == pytest.approx(v.best_rate)
    # the evidence images: the best candidate pasted on held-out images of other classes flips them to 0
    assert (r.evidence["labels"] != 0).all() and (r.evidence["pred_patched"] == 0).float().mean() >= 0.75
    assert best.trigger().size == (3, 3)
    # the probe images come from every class, and the adversarial examples stay in the ε-ball
    assert sorted(set(r.labels.tolist())) == [0, 1, 2]
    assert r.adv_labels.tolist().count(0) >= 3  # most adversarial examples move to the target
    methods = [c.info["method"] for c in r.candidates]
    assert methods.count("basic-adv") == methods.count("smoothadv") > 0  # the Basic Adv baseline's candidates
    assert ((r.basic_adversarial - r.images).flatten(1).norm(dim=1) <= 2.0 * (1 + 1e-5)).all()
    assert ((r.adversarial - r.images).flatten(1).norm(dim=1) <= 2.0 * (1 + 1e-5)).all()
    for stage in ("prepare", "denoiser", "smoothadv", "candidates", "measure", "verdict", "total"):
        assert stage in r.timings
    assert r.to_verdict().flagged == (0,) and r.to_verdict().scores.shape == (3,)
    summary = json.loads(json.dumps(r.summary()))  # JSON-able
    assert summary["verdict"]["target"] == 0 and len(summary["candidates"]) == len(r.candidates)
    page = render_audit_report(r)
    assert "POISONED" in page and "Time per stage" in page and page.count("data:image/png;base64") >= 5


def test_a_clean_model_is_not_flagged(toy):
    _, attack, train, test = toy
    model = small_net()
    fit(model, train, RECIPE, seed=0, device="cpu")
    assert attack_success_rate(model, test, attack) < 0.1
    r = audit(model, test, denoiser=DnCNN(3, depth=2, width=4), patch_size=3, seed=0, **FAST)
    assert not r.poisoned and r.verdict.score < 2 and r.verdict.best_rate < 0.5


def test_verdict_statistics():
    null = torch.full((20, 3), 0.01) + 0.01 * torch.rand(20, 3, generator=torch.Generator().manual_seed(0))
    works = torch.tensor([[0.02, 0.95, 0.03], [0.01, 0.3, 0.02]])
    v = decide(works, null, trials=torch.full((3,), 300.0))
    assert v.poisoned and v.target == 1 and v.evidence[0] == 0
    weak = torch.tensor([[0.02, 0.35, 0.03]])  # far above random patches, but not a working trigger
    v = decide(weak, null, trials=torch.full((3,), 300.0))
    assert not v.poisoned and v.target == 1 and v.per_class[1].z > 5
    # a backdoor that random colours also fire: the null's median, not its tail, is the reference
    hot = null.clone()
    hot[:3, 1] = 1.0
    assert decide(works, hot, trials=torch.full((3,), 300.0)).poisoned
    # clean reference models that reach the same rate veto the flag
    assert not decide(
        works, null, trials=torch.full((3,), 300.0), reference=[torch.tensor([0.1, 0.97, 0.1])]
    ).poisoned
    with pytest.raises(BackdoorLabError, match="classes"):
        decide(works, null[:, :2])
    with pytest.raises(BackdoorLabError, match="min_success"):
        decide(works, null, min_success=1.5)


def test_the_denoiser_is_trained_once_and_cached(toy, tmp_path):
    model, _, train, test = toy
    settings = {"depth": 2, "width": 4, "min_samples": 64, "batch_size": 32}
    kw = {**FAST, "steps": 2, "n_null": 4, "reps": 1}
    first = audit(model, test, denoiser_data=train, denoiser_settings=settings, workspace=tmp_path, **kw)
    second = audit(model, test, denoiser_data=train, denoiser_settings=settings, workspace=tmp_path, **kw)
    assert first.settings["denoiser"]["source"] == "trained (cached)"
    assert second.settings["denoiser"]["source"] == "cache"
    assert len(list((tmp_path / "cache" / "denoiser").iterdir())) == 1
    torch.testing.assert_close(first.adversarial, second.adversarial)
    with pytest.raises(BackdoorLabError, match="denoiser_settings"):
        audit(model, test, denoiser_settings={"layers": 3}, **kw)


def test_bad_inputs_are_named(toy):
    model, _, _, test = toy
    lenet = create_model("lenet", in_channels=1, num_classes=3, input_size=28)
    with pytest.raises(BackdoorLabError, match=r"expects 1×28×28 inputs but the clean images are 3×12×12"):
        audit(lenet, test, **FAST)
    with pytest.raises(BackdoorLabError, match="sigma"):
        audit(model, test, **{**FAST, "sigma": 0.0})
    with pytest.raises(BackdoorLabError, match="eps"):
        audit(model, test, **{**FAST, "eps": -1.0})
    with pytest.raises(BackdoorLabError, match=r"at least 160 clean images .* got 150"):
        audit(model, test, **{**FAST, "n_images": 10, "n_eval": 150})
    with pytest.raises(BackdoorLabError, match="outputs"):
        audit(nn.Sequential(nn.Flatten(), nn.Linear(432, 5)), test, **FAST)
    with pytest.raises(BackdoorLabError, match="unknown class"):
        audit(model, test, classes=["left"], **FAST)


def test_run_audit_cli_writes_the_report_and_refuses_pickles(toy, tmp_path, monkeypatch):
    _, _, train, test = toy
    net = create_model("lenet", in_channels=3, num_classes=3, input_size=12)
    path = save_model(net, tmp_path / "m.safetensors", classes=test.classes)
    monkeypatch.setattr("backdoorlab.data.registry.load_dataset", lambda name: (train, test))
    monkeypatch.setattr(pipeline, "QUICK", {**FAST, "steps": 2, "n_null": 4, "reps": 1})
    monkeypatch.setitem(pipeline.DENOISER_DEFAULTS, "depth", 2)
    monkeypatch.setitem(pipeline.DENOISER_DEFAULTS, "width", 4)
    monkeypatch.setitem(pipeline.DENOISER_DEFAULTS, "min_samples", 32)
    stages = []
    out = run_audit_cli(
        path,
        "toy",
        None,
        tmp_path / "out",
        tmp_path / "ws",
        quick=True,
        progress=lambda s, d, t: stages.append(s),
    )
    assert out.suffix == ".html" and out.is_file() and "Verdict" in out.read_text()
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["settings"]["denoiser"]["source"] == "trained (cached)"
    assert {"denoiser", "smoothadv", "measure"} <= set(stages)
    pickled = tmp_path / "evil.pt"
    torch.save(net.state_dict(), pickled)
    with pytest.raises(UnsafeFileError):
        run_audit_cli(pickled, "toy", None, tmp_path / "out", tmp_path / "ws", quick=True)


def test_audit_with_deep_dream_and_tikhonov(toy):
    model, _, _, test = toy
    kw = {**FAST, "steps": 3, "n_null": 4, "reps": 1, "basic": False}
    r = audit(model, test, denoiser=False, method="deep-dream", regularizer="tikhonov", **kw)
    assert r.settings["method"] == "deep-dream" and "deep-dream" in r.timings and "basic-adv" not in r.timings
    assert r.basic_adversarial is None and {c.info["method"] for c in r.candidates} == {"deep-dream"}
    assert ((r.adversarial - r.images).flatten(1).norm(dim=1) <= FAST["eps"] * (1 + 1e-5)).all()
    with pytest.raises(BackdoorLabError, match="visualisation method"):
        audit(model, test, method="dream", **kw)
