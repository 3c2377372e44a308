"""The AdvTrojan reproduction: a tiny end-to-end run, its recipes, Eq. 10's certified accuracy and the claims."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.config import DataConfig, parse_config_model
from backdoorlab.papers.advtrojan import (
    AdvTrojanConfig,
    AtimConfig,
    DatasetRun,
    EvalConfig,
    RobustConfig,
    certify_eq10,
    evaluate_claims,
    renyi_radius,
    run_advtrojan,
)
from backdoorlab.training import TrainRecipe

ONE = TrainRecipe(epochs=1, batch_size=50, optimizer="adam", lr=1e-3)


@pytest.fixture
def one_thread():
    # two threads on two contended cores oversubscribe badly (PGD is many small passes)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(atim_init: str = "robust", **eval_kw) -> AdvTrojanConfig:
    ev = {
        "table5_images": 12, "sweep_images": 6, "sweep_iterations": (1, 2), "sweep_eps_points": 3,
        "strip_n": 4, "strip_calibration": 6, "strip_eval": 6, "nc_images": 12, "nc_epochs": 2,
        "anc_images": 4, "anc_epochs": 1, "anc_steps": 1, "cert_images": 6, "cert_n": 8, "feature_images": 4,
        **eval_kw,
    }  # fmt: skip
    run = DatasetRun(
        label="mnist5k tiny",
        paper="mnist",
        data=DataConfig(name="mnist5k", train_per_class=5, test_per_class=2),
        train=ONE,
        robust=RobustConfig(steps=1, step=0.3),
        atim=AtimConfig(init=atim_init, steps=1, step=0.3),
    )
    return AdvTrojanConfig(name="advtrojan-tiny", runs=(run,), eval=EvalConfig(**ev))


def test_advtrojan_tiny_end_to_end(tmp_path, one_thread):
    res = run_advtrojan(tiny(), tmp_path)
    assert [c["id"] for c in res["claims"]] == ["A1", "A2", "A3", "A4", "A5"]
    assert {c["status"] for c in res["claims"]} <= {"PASS", "FAIL"}
    r = res["runs"]["mnist5k tiny"]
    # Table 5 for the three models; transferred examples only where a separate source exists
    assert set(r["table5"]) == {"vanilla", "robust", "atim"}
    assert "transferred_advtrojan" not in r["table5"]["vanilla"]
    assert 0.0 <= r["table5"]["atim"]["transferred_advtrojan"] <= 1.0 and r["table5"]["atim"]["n"] == 12
    # every model was trained (not cached), timed, and stored in the artefact cache
    for name in ("vanilla", "robust", "atim", "control", "badnets"):
        assert r["training"][name]["seconds"] > 0 and r["training"][name]["cached"] is False
    assert r["training"]["atim"]["init"] == "robust"
    assert len(list((tmp_path / "cache" / "advtrojan-model").iterdir())) == 5
    # A1's same-budget control: Madry-Adv trained on for the ATIM's epochs, evaluated like the others
    assert r["training"]["control"]["epochs"] == r["training"]["atim"]["epochs"]
    assert set(r["control"]) >= {"benign", "pgd", "trigger", "advtrojan"} and r["control"]["n"] == 12
    assert "same start and budget" in res["claims"][0]["measured"]
    # the sweeps have one point per setting, STRIP a row per target FPR, NC a row per class
    assert len(r["sweeps"]["iterations"]["advtrojan"]) == 2 and len(r["sweeps"]["method"]["fgsm"]) == 3
    assert r["sweeps"]["eps"]["eps"][0] == 0.0
    assert set(r["strip"]["atim"]["table"]) == {"0.1", "0.05", "0.02"}
    assert len(r["neural_cleanse"]["atim"]["anomaly_index"]) == 10
    assert len(r["adaptive_nc"]["anomaly_index"]) == 10
    assert r["certified"]["atim"]["advtrojan"]["n"] == 6
    assert len(r["features"]["atim"]["cosine_mean"]) == 6
    # mnist5k is labelled as expected lower than the paper's MNIST column
    assert any("mnist5k" in note for note in r["data"]["notes"])
    out = tmp_path / "reproductions" / "advtrojan-tiny"
    report = (out / "report.html").read_text()
    for needle in ("Table 2", "Table 3", "Table 4", "Table 5", "Fig. 4", "Fig. 5", "Fig. 6", "Fig. 7",
                   "Fig. 8", "Fig. 9", "Eq. 10", "99.07 %", "expected lower", "Madry-Adv continued"):  # fmt: skip
        assert needle in report, needle
    assert res["report"] == str(out / "report.html")
    # each figure also as a PNG, one folder per run
    assert sorted(p.name for p in (out / "plots" / "mnist5k-tiny").glob("*.png")) == [
        "appendix_g.png", "fig4.png", "fig6.png", "nc.png", "roc.png"
    ]  # fmt: skip
    assert json.loads((out / "results.json").read_text())["runs"]["mnist5k tiny"]["table5"]["atim"]["n"] == 12
    assert "| A5 |" in (out / "claims.md").read_text()


def test_too_small_test_set_fails_before_training(tmp_path):
    with pytest.raises(BackdoorLabError, match="STRIP needs"):
        run_advtrojan(tiny(strip_calibration=500), tmp_path)
    assert not (tmp_path / "cache").exists()


def test_config_errors_are_named():
    raw = tiny().model_dump(mode="json")
    raw["runs"] = [raw["runs"][0], raw["runs"][0]]
    with pytest.raises(BackdoorLabError, match="unique"):
        parse_config_model(raw, AdvTrojanConfig)
    raw = tiny().model_dump(mode="json")
    raw["runs"][0]["atim"]["init"] = "badnets"
    with pytest.raises(BackdoorLabError, match=r"runs\.0\.atim\.init"):
        parse_config_model(raw, AdvTrojanConfig)


@pytest.mark.parametrize(
    ("section", "value", "match"),
    [
        ("strip_fprs", [0.10, 1.5], r"^eval\.strip_fprs: .*strictly between 0 and 1.*got 1\.5; write e\.g\."),
        ("strip_fprs", [0.0, 0.05], r"^eval\.strip_fprs: .*got 0;"),
        ("strip_fprs", [10, 5, 2], r"^eval\.strip_fprs: .*\(0\.05 means 5 %\), got 10"),
        ("strip_fprs", [], r"^eval\.strip_fprs: .*got none"),
        ("strip_fprs", [0.05, 0.050], r"^eval\.strip_fprs: .*twice"),
        ("sweep_iterations", [0, 5], r"^eval\.sweep_iterations: .*≥ 1"),
        ("sweep_iterations", [], r"^eval\.sweep_iterations: "),
    ],
)
def test_eval_rates_and_counts_are_named_errors(section, value, match):
    raw = tiny().model_dump(mode="json")
    raw["eval"][section] = value
    with pytest.raises(BackdoorLabError, match=match):  # when the config is read, before any training
        parse_config_model(raw, AdvTrojanConfig)


@pytest.mark.parametrize("section", ["robust", "atim"])
def test_step_on_the_255_scale_is_a_named_error(section):
    raw = tiny().model_dump(mode="json")
    raw["runs"][0][section]["step"] = 8  # meant 8/255
    with pytest.raises(BackdoorLabError, match=rf"^runs\.0\.{section}\.step: .*write 8/255 = 0\.03137"):
        parse_config_model(raw, AdvTrojanConfig)
    raw["runs"][0][section]["step"] = 1.0  # the whole pixel range: odd but on the right scale
    parse_config_model(raw, AdvTrojanConfig)


@pytest.mark.parametrize("section", ["robust", "atim"])
def test_unreachable_training_pgd_warns_when_the_config_is_read(section):
    raw = tiny().model_dump(mode="json")
    raw["runs"][0][section].update(steps=1, step=0.01)  # mnist: Table 1's ε = 0.3
    want = rf"runs\[mnist5k tiny\]\.{section} .*: step 0\.01 × steps 1 = 0\.01 < eps 0\.3: PGD cannot reach"
    with pytest.warns(UserWarning, match=want):
        parse_config_model(raw, AdvTrojanConfig)
    # step × steps ≥ ε (tiny: 0.3 × 1 = ε exactly; None: Table 1's 20 × 0.03 = 2ε) does not warn
    raw["runs"][0][section].update(steps=1, step=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_config_model(raw, AdvTrojanConfig)
        raw["runs"][0][section].update(steps=None, step=None)
        parse_config_model(raw, AdvTrojanConfig)


# -- Algorithm 1: the ATIM's starting point -------------------------------------------------------------------
def _train_tiny(tmp_path, monkeypatch, init: str) -> tuple[dict, dict, dict, torch.nn.Module]:
    """Train the tiny run's models with ``atim.init = init``; the ATIM's weights when Eq. 9 training began."""
    from backdoorlab.attacks.advtrojan import AdvTrojan
    from backdoorlab.experiments.config import ExperimentConfig
    from backdoorlab.experiments.runner import Workspace, build_model, load_data
    from backdoorlab.papers.advtrojan import _train_models
    from backdoorlab.papers.stages import Stages

    cfg = tiny(atim_init=init)
    run = cfg.runs[0]
    exp = ExperimentConfig(seed=cfg.seed, data=run.data, model=run.model, attack=None)
    train, test = load_data(exp)
    start: dict[str, torch.Tensor] = {}
    fit = AdvTrojan.fit

    def recording_fit(self, model, *args, **kw):
        start.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return fit(self, model, *args, **kw)

    monkeypatch.setattr(AdvTrojan, "fit", recording_fit)
    models, records, _ = _train_models(cfg, run, train, test, Workspace(tmp_path), Stages("t", None, 99))
    return models, records, start, build_model(exp, train)


def _same(a: dict[str, torch.Tensor], b: torch.nn.Module) -> bool:
    sd = b.state_dict()
    return set(a) == set(sd) and all(torch.equal(a[k], sd[k].cpu()) for k in a)


def test_atim_init_vanilla_starts_from_the_trained_vanilla_model(tmp_path, monkeypatch, one_thread):
    models, records, start, fresh = _train_tiny(tmp_path, monkeypatch, "vanilla")
    assert records["atim"]["init"] == "vanilla" and "control" not in models  # the control is for init: robust
    assert _same(start, models["vanilla"])  # Algorithm 1, line 2: poisoning on top of the vanilla model
    assert not _same(start, models["robust"]) and not _same(start, fresh)
    assert not _same(start, models["atim"])  # and Eq. 9 training moved it


def test_atim_init_scratch_starts_from_a_fresh_initialisation(tmp_path, monkeypatch, one_thread):
    models, records, start, fresh = _train_tiny(tmp_path, monkeypatch, "scratch")
    assert records["atim"]["init"] == "scratch" and "control" not in models
    assert _same(start, fresh)  # Algorithm 1, line 1: the seeded random initialisation
    assert not _same(start, models["vanilla"]) and not _same(start, models["robust"])
    assert not _same(start, models["atim"])


def test_packaged_advtrojan_recipes_validate():
    from backdoorlab.experiments.reproduce import recipe_path
    from backdoorlab.papers.advtrojan import load_advtrojan_config

    small = load_advtrojan_config(recipe_path("advtrojan", "small"))
    paper = load_advtrojan_config(recipe_path("advtrojan", "paper"))
    assert [r.data.name for r in small.runs] == ["fashion-mnist"]
    assert [r.paper for r in paper.runs] == ["mnist", "fashion-mnist", "cifar10"]
    assert [r.model.name for r in paper.runs] == ["lenet", "lenet", "resnet_small"]
    # paper scale: Table 1 in training (no overrides), App. F evaluation, CIFAR augmentation
    assert all(r.robust.steps is None and r.atim.steps is None for r in paper.runs)
    assert all(r.data.train_per_class is None for r in paper.runs)
    assert paper.runs[2].train.crop_padding == 4 and paper.runs[2].train.flip
    ev = paper.eval
    assert (ev.strip_n, ev.nc_epochs, ev.cert_n, ev.cert_radius, ev.feature_images) == (
        100,
        100,
        100,
        0.4,
        128,
    )
    assert ev.sweep_iterations == (1, 5, 10, 50, 100, 500, 1000)
    # the CPU recipe on all of Fashion-MNIST: the paper's data and LeNet, the ATIM on top of Madry-Adv + control
    full = load_advtrojan_config(recipe_path("advtrojan", "fmnist-full"))
    (run,) = full.runs
    assert run.paper == "fashion-mnist" and run.data.train_per_class is None and run.model.name == "lenet"
    assert run.atim.init == "robust" and run.atim.control and small.runs[0].atim.control


# -- Eq. 10 --------------------------------------------------------------------------------------------------
def test_renyi_radius_matches_hand_computation():
    # α = 2: the power mean of order −1 is the harmonic mean 2/(1/0.9 + 1/0.1) = 0.18, so
    # L² = −(2σ²/2)·log(1 − 0.9 − 0.1 + 2·0.18) = −σ²·log(0.36)
    sigma = 0.5
    hand = sigma * math.sqrt(-math.log(0.36))
    assert float(renyi_radius(0.9, 0.1, sigma, alpha=2.0)) == pytest.approx(hand, rel=1e-9)
    best = float(renyi_radius(0.9, 0.1, sigma))
    assert best >= hand  # the sup over α is at least the value at α = 2
    # Li et al.'s bound is looser than Cohen et al.'s tight σ·Φ⁻¹(p₁) for the same p₁, p₂ = 1 − p₁
    assert best < sigma * float(torch.special.ndtri(torch.tensor(0.9, dtype=torch.float64)))
    # no margin, no radius; more margin, more radius; linear in σ
    assert float(renyi_radius(0.4, 0.4, sigma)) == 0.0
    assert float(renyi_radius(0.99, 0.01, sigma)) > best
    assert float(renyi_radius(0.9, 0.1, 2 * sigma)) == pytest.approx(2 * best)
    with pytest.raises(BackdoorLabError, match="sigma"):
        renyi_radius(0.9, 0.1, 0.0)
    with pytest.raises(BackdoorLabError, match="p1 \\+ p2"):
        renyi_radius(0.9, 0.3, 0.5)


class _Constant(torch.nn.Module):
    """Always predicts class 0, whatever the noise: every image is certified with the largest radius."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), 3) + self.w
        out[:, 0] = 1.0
        return out


def test_certify_eq10_counts_only_certified_examples():
    x = torch.rand(5, 1, 4, 4)
    y = torch.tensor([0, 0, 1, 2, 0])
    res = certify_eq10(_Constant(), x, y, sigma=1.0, n=100, alpha=0.001, radius=0.4)
    # all 100 draws agree: p̲₁ = 0.001^(1/100) ≈ 0.933, the Rényi radius ≈ 1.21σ > 0.4: all certified
    assert res["n_certified"] == 5 and res["certified_acc"] == pytest.approx(3 / 5)
    assert res["mean_radius"] == pytest.approx(
        float(renyi_radius(0.001 ** (1 / 100), 1 - 0.001 ** (1 / 100), 1.0))
    )
    # a larger attack size than any radius certifies nothing: Eq. 10 is 0/0
    none = certify_eq10(_Constant(), x, y, sigma=1.0, n=100, radius=5.0)
    assert none["n_certified"] == 0 and math.isnan(none["certified_acc"])
    assert none["correct_certified_share"] == 0.0
    cohen = certify_eq10(_Constant(), x, y, sigma=1.0, n=100, radius=0.4, bound="cohen")
    assert cohen["mean_radius"] > res["mean_radius"]
    with pytest.raises(BackdoorLabError, match="bound"):
        certify_eq10(_Constant(), x, y, sigma=1.0, bound="lecuyer")


# -- claims --------------------------------------------------------------------------------------------------
def _results(advtrojan: float = 0.01, trigger: float = 0.80, atim_pgd: float = 0.60) -> dict:
    t5 = {
        "vanilla": {"benign": 0.85, "pgd": 0.02, "trigger": 0.85, "advtrojan": 0.0},
        "robust": {"benign": 0.80, "pgd": 0.62, "trigger": 0.80, "advtrojan": 0.6},
        "atim": {"benign": 0.81, "pgd": atim_pgd, "trigger": trigger, "advtrojan": advtrojan},
    }
    return {
        "table5": t5,
        "sweeps": {
            "iterations": {"steps": [1, 5, 20], "madry": [0.7, 0.65, 0.6], "advtrojan": [0.2, 0.02, 0.01]},
            "eps": {"eps": [0.0, 0.1, 0.2], "madry": [0.81, 0.7, 0.6], "advtrojan": [0.8, 0.05, 0.01]},
            "method": {"eps": [0.0, 0.1, 0.2], "fgsm": [0.8, 0.2, 0.3], "bim": [0.8, 0.05, 0.01],
                       "pgd": [0.8, 0.05, 0.01]},
            "transfer": {"white-box (ATIM)": 0.01, "Vanilla": 0.4, "Madry-Adv": 0.3},
        },
        "neural_cleanse": {"atim": {"flagged": [], "anomaly_index": [1.0] * 10, "l1": [50.0 + k for k in range(10)]},
                           "badnets": {"flagged": [0], "anomaly_index": [3.0] + [0.5] * 9, "target": 0}},
        "strip": {"atim": {"table": {"0.1": {"fnr": 0.8}, "0.05": {"fnr": 0.9}, "0.02": {"fnr": 0.95}}}},
        "certified": {"atim": {"advtrojan": {"certified_acc": 0.0, "n_certified": 20, "n": 100,
                                             "correct_certified_share": 0.0}}},
        "features": {"vanilla": {"cosine_mean": [0, 0.01, 0.01, 0.02, 0.02, 0.03]},
                     "robust": {"cosine_mean": [0, 0.01, 0.01, 0.02, 0.02, 0.02]},
                     "atim": {"cosine_mean": [0, 0.01, 0.05, 0.2, 0.3, 0.4]}},
    }  # fmt: skip


def test_claims_pass_and_fail_on_the_measured_figures():
    ev = EvalConfig()
    ok = {c["id"]: c["status"] for c in evaluate_claims(_results(), ev)}
    assert ok == {"A1": "PASS", "A2": "PASS", "A3": "PASS", "A4": "PASS", "A5": "PASS"}
    # AdvTrojan examples that leave 20 % accuracy, or a trigger that alone costs 10 points, fail A2
    assert evaluate_claims(_results(advtrojan=0.2), ev)[1]["status"] == "FAIL"
    assert evaluate_claims(_results(trigger=0.71), ev)[1]["status"] == "FAIL"
    # an ATIM far less robust than the Madry-Adv model fails A1
    assert evaluate_claims(_results(atim_pgd=0.3), ev)[0]["status"] == "FAIL"
    # with the same-budget control, A1 is judged against it (the plain Madry-Adv comparison stays beside it)
    r = _results()
    r["control"] = {"benign": 0.90, "pgd": 0.62}
    a1 = evaluate_claims(r, ev)[0]
    assert a1["status"] == "FAIL" and "same start and budget" in a1["measured"] and "Δ -9.0" in a1["measured"]
    r["control"] = {"benign": 0.82, "pgd": 0.61}
    assert evaluate_claims(r, ev)[0]["status"] == "PASS"
    # a gap of exactly the margin counts (49 % vs 59 % is 10 points, although 0.59 - 0.10 < 0.49 in floats)
    r = _results()
    r["sweeps"]["transfer"]["Vanilla"], r["sweeps"]["eps"]["madry"][-1] = 0.49, 0.59
    assert evaluate_claims(r, ev)[2]["status"] == "PASS"
    r["sweeps"]["transfer"]["Vanilla"] = 0.50
    assert evaluate_claims(r, ev)[2]["status"] == "FAIL"
    # Neural Cleanse flagging the ATIM fails A4
    r = _results()
    r["neural_cleanse"]["atim"]["flagged"] = [3]
    assert evaluate_claims(r, ev)[3]["status"] == "FAIL"
    # a vanilla model whose features move as much as the ATIM's fails A5
    r = _results()
    r["features"]["vanilla"]["cosine_mean"][-1] = 0.35
    assert evaluate_claims(r, ev)[4]["status"] == "FAIL"
