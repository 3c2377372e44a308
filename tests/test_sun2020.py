"""The sun2020 reproduction: tiny end to end (with the cache), the measurements behind S1–S4, the claim
criteria, the packaged recipes and the named errors."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from backdoorlab.audit.alt_triggers import Candidate, measure, paste, random_locations
from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.config import DataConfig, ModelConfig, TriggerConfig, parse_config_model
from backdoorlab.experiments.reproduce import list_reproductions
from backdoorlab.papers.sun2020 import (
    AuditSettings,
    Backdoor,
    SuiteData,
    SuiteModel,
    Sun2020Config,
    VisualSettings,
    backdoor_asr,
    candidate_errors,
    detection_summary,
    evaluate_claims,
    load_sun2020_config,
    relative_tv,
    run_sun2020,
    trigger_color_share,
    trigger_colors,
)
from backdoorlab.training import TrainRecipe
from backdoorlab.triggers import blended, random_color_patch, square

TRIG = TriggerConfig(kind="random-color", params={"size": 3, "seed": 0, "placement": "random"})


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**over) -> Sun2020Config:
    recipe = TrainRecipe(epochs=1, batch_size=32, optimizer="adam", lr=1e-2, channels_last=False)
    base = dict(
        name="sun-tiny",
        device="cpu",
        threads=1,
        datasets={
            "shapes": SuiteData(
                data=DataConfig(name="shapes", options={"n_train": 160, "n_test": 60, "size": 12}),
                model=ModelConfig(name="lenet"),
                train=recipe,
                patch_size=3,
                extractor="clean",
                finetune=TrainRecipe(epochs=1, batch_size=16, lr=0.01, channels_last=False),
                denoiser={"depth": 2, "width": 4, "min_samples": 160},
            )
        },
        models=(
            SuiteModel(name="clean", dataset="shapes"),
            SuiteModel(name="badnets", dataset="shapes", attack="badnets", target=1, rate=0.2, trigger=TRIG),
            SuiteModel(
                name="camo",
                dataset="shapes",
                attack="badnets",
                target=2,
                rate=0.2,
                eps_paper=100,
                trigger=TriggerConfig(
                    kind="checkerboard", params={"size": 3, "channels": 3, "placement": "top-left"}
                ),
                note="top-left",
            ),
            SuiteModel(name="blended", dataset="shapes", attack="blended", target=3, params={"alpha": 0.2}),
            SuiteModel(name="bin-clean", dataset="shapes", victim="transfer", classes=(2, 7)),
            SuiteModel(
                name="ht",
                dataset="shapes",
                victim="transfer",
                attack="hidden-trigger",
                classes=(2, 7),
                source=2,
                target=7,
                rate=3,
                trigger=TRIG,
                params={"iterations": 2, "step": "sign", "lr": 0.03, "batch_size": 3},
            ),
            SuiteModel(
                name="cl",
                dataset="shapes",
                victim="transfer",
                attack="clean-label",
                classes=(2, 7),
                target=7,
                rate=3,
                trigger=TRIG,
                params={"eps": 16, "norm": "linf", "steps": 2},
                audit={"n_eval": 6},
            ),
        ),
        audit=AuditSettings(m=1, steps=2, n_images=2, n_eval=8, reps=1, n_null=4),
        main_model="badnets",
        clean_model="clean",
        camouflaged_model="camo",
        position_models=("camo",),
        visual=VisualSettings(n_images=2, octaves=2),
        audit_reports=False,
    )
    base.update(over)
    return Sun2020Config(**base)


def test_tiny_end_to_end_and_cache(tmp_path: Path) -> None:
    cfg = tiny()
    res = run_sun2020(cfg, tmp_path)
    out = tmp_path / "reproductions" / "sun-tiny"
    assert Path(res["report"]) == out / "report.html"
    page = (out / "report.html").read_text()
    for title in (
        "Table 1",
        "Table 2",
        "Fig. 6",
        "Fig. 7",
        "Fig. 8",
        "Fig. 9",
        "Figs. 18–19",
        "Appendix E",
        "S5",
    ):
        assert title in page
    assert "report.html" in (out / "index.html").read_text()
    for key in ("fig6", "fig7", "fig8", "fig9a", "fig9b", "fig18", "fig22"):
        assert (out / "plots" / f"{key}.png").stat().st_size > 1000
    assert [c["id"] for c in res["claims"]] == ["S1", "S2", "S3", "S4", "S5"]
    assert all(c["status"] in ("PASS", "FAIL", "not measured") for c in res["claims"])
    assert "| S2 |" in (out / "claims.md").read_text()
    saved = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in saved["models"]}
    assert set(rows) == {m.name for m in cfg.models}
    # transfer victims: binary tasks in their own label space (target 7 → output 1), HT counts only its source
    assert rows["ht"]["classes"] == ["triangle", "diamond"] and rows["ht"]["target"] == 1
    assert rows["ht"]["train"]["poisons"] == 3 and rows["cl"]["train"]["poisons"] == 3
    assert rows["cl"]["audit"]["n_eval"] == 6 and rows["ht"]["audit"]["n_eval"] == 8  # per-model override
    # the camouflaged model is audited at ε = 100 on the paper's scale, the others at 60
    assert rows["camo"]["eps"] == pytest.approx(rows["badnets"]["eps"] * 100 / 60, rel=1e-3)
    # Table 1 fields and the colour statistics exist exactly where they make sense
    for name in ("badnets", "camo", "ht", "cl", "blended"):
        assert {"asr_heldout", "best_color", "best_crop", "best_alt"} <= set(rows[name])
    assert "color_share" in rows["badnets"] and "color_share" not in rows["blended"]
    assert "target" not in rows["clean"] and rows["clean"]["candidate_error"]["median"] >= 0
    # the detection summary counts the rows
    d = saved["detection"]
    assert d["n"] == 7 and d["correct"] == sum(r["correct"] for r in saved["models"])
    assert d["poisoned"] == 5 and d["clean"] == 2
    # every audit's stages are timed; the denoiser was trained once, outside the audits
    assert {"smoothadv", "basic-adv", "measure", "total"} <= set(rows["badnets"]["timings"])
    assert saved["denoisers"]["shapes"]["trained"]
    assert set(saved["s4"]["variants"]) == {
        "Denoised Smoothing",
        "Deep Dream",
        "Deep Dream + Tikhonov",
        "Denoised Smoothing + TV",
        "Denoised Smoothing + Tikhonov",
    }
    assert set(saved["s1"]["methods"]) == {"Basic Adv", "Smoothing", "Denoised Smoothing"}
    # a second run finds every victim and the denoiser in the workspace's cache and repeats the verdicts
    again = run_sun2020(cfg, tmp_path)
    assert not any(r["train"]["trained"] for r in again["models"])
    assert not again["denoisers"]["shapes"]["trained"]
    assert [r["verdict"] for r in again["models"]] == [r["verdict"] for r in res["models"]]
    assert [r["best_rate"] for r in again["models"]] == [r["best_rate"] for r in res["models"]]


def test_trigger_color_share_counts_energy_on_trigger_colours() -> None:
    clean = torch.full((2, 3, 8, 8), 0.5)
    adv = clean.clone()
    adv[0, :, :2, :2] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]  # painted in the trigger's red
    adv[1, :, :2, :2] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    adv[1, :, 4:6, 4:6] = torch.tensor([0.0, 0.0, 1.0])[
        :, None, None
    ]  # and in a blue that is not the trigger's
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    share = trigger_color_share(clean, adv, colors, tolerance=0.25)
    assert share[0] == pytest.approx(1.0)
    assert share[1] == pytest.approx(0.5)  # both regions carry the same energy
    assert float(trigger_color_share(clean, adv, colors[1:], 0.25).max()) == 0.0
    with pytest.raises(BackdoorLabError, match="colors must be"):
        trigger_color_share(clean, adv, torch.zeros(2, 1), 0.25)


def test_trigger_colors_and_relative_tv() -> None:
    cols = trigger_colors(random_color_patch(size=4, seed=0, channels=3))
    assert cols is not None and cols.shape[1] == 3 and len(cols) >= 2
    assert len(trigger_colors(square(size=3, value=(1.0, 0.0, 1.0)))) == 1
    assert trigger_colors(blended(None, 0.2, (3, 8, 8), 0)) is None  # a semi-transparent full-image key
    clean = torch.zeros(2, 1, 8, 8)
    adv = clean.clone()
    adv[0, :, 2:6, 2:6] = 0.5  # one smooth blob
    adv[1] = (torch.arange(64).view(8, 8) % 2).float() * 0.5  # stripes of the same size
    tv = relative_tv(clean, adv)
    assert tv[0] < tv[1]


class _Corner(nn.Module):
    """Predicts class 1 when the top-left pixel is white, else 0 (a perfect backdoor on a 2-pixel trigger)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        on = (x[:, 0, 0, 0] > 0.99).float()
        return torch.stack([1 - on, on], 1) + self.w


def test_backdoor_asr_and_candidate_errors() -> None:
    model = _Corner()
    x = torch.rand(12, 1, 6, 6) * 0.9
    y = torch.tensor([0, 1, 2] * 4)

    def corner(imgs: torch.Tensor, _g: torch.Generator) -> torch.Tensor:
        imgs = imgs.clone()
        imgs[:, :, 0, 0] = 1.0
        return imgs

    assert backdoor_asr(model, Backdoor(corner, 1, None, None), x, y, reps=3) == 1.0
    assert backdoor_asr(model, Backdoor(lambda a, _g: a, 1, None, None), x, y, reps=2) == 0.0
    # a source-specific backdoor counts only its sources
    bd = Backdoor(corner, 1, (2,), None)
    assert bd.mask(y).tolist() == [False, False, True] * 4
    # candidate errors equal the share of patched images (random places) that the model gets wrong
    white, grey = torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.5)
    cands = [Candidate("color", white, region=(0, 0)), Candidate("color", grey, region=(0, 0))]
    meas = measure(model, cands, x, y, num_classes=3, reps=3, placement="random")
    errs = candidate_errors(SimpleNamespace(measurement=meas))
    locs = random_locations(len(x), (6, 6), 2, 3)
    for k, c in enumerate(cands):
        wrong = [
            (model(paste(x, c.pattern[None].expand(len(x), -1, -1, -1), locs[r])).argmax(1) != y)
            .float()
            .mean()
            for r in range(3)
        ]
        assert float(errs[k]) == pytest.approx(float(torch.stack(wrong).mean()))


def _fake_res(rows: list[dict], enrich: tuple[float, float, float], tv_ok: bool = True) -> dict:
    methods = {
        name: {"share_poisoned": 0.3, "share_clean": 0.3 / e, "enrichment": e, "moved_to_target": 0.5,
               "best_alt": 0.9, "relative_tv": 1.0}
        for name, e in zip(("Denoised Smoothing", "Basic Adv", "Smoothing"), enrich)
    }  # fmt: skip
    tv = 0.5 if tv_ok else 2.0
    variants = {
        "Denoised Smoothing": {"relative_tv": 1.0, "color_share": 0.2, "moved_to_target": 0.5},
        "Deep Dream": {"relative_tv": 0.9, "color_share": 0.3, "moved_to_target": 0.5},
        "Deep Dream + Tikhonov": {"relative_tv": tv, "color_share": 0.25, "moved_to_target": 0.5},
        "Denoised Smoothing + TV": {"relative_tv": tv, "color_share": 0.2, "moved_to_target": 0.5},
    }
    return {"models": rows, "s1": {"methods": methods}, "s4": {"variants": variants},
            "detection": detection_summary(rows)}  # fmt: skip


def _row(name: str, poisoned: bool, verdict: bool, asr: float = 0.9, alt: float = 0.9) -> dict:
    r = {"name": name, "attack": "badnets" if poisoned else "none", "poisoned": poisoned, "verdict": verdict,
         "correct": poisoned == verdict, "heldout_error": 0.1,
         "candidate_error": {"median": 0.12, "max": 0.3, "best_any_class": 0.2}}  # fmt: skip
    if poisoned:
        r.update({"asr_heldout": asr, "best_alt": alt, "target_found": verdict})
    return r


def test_claim_criteria() -> None:
    cfg = tiny()
    rows = [_row(f"p{i}", True, True) for i in range(6)] + [_row(f"c{i}", False, False) for i in range(4)]
    claims = {c["id"]: c["status"] for c in evaluate_claims(_fake_res(rows, (1.6, 1.2, 1.0)), cfg)}
    assert claims == {"S1": "PASS", "S2": "PASS", "S3": "PASS", "S4": "PASS", "S5": "PASS"}
    # S1: Basic Adv above Denoised Smoothing, or too little enrichment, fails
    for enrich in ((1.6, 1.7, 1.0), (1.2, 1.1, 1.0)):
        assert evaluate_claims(_fake_res(rows, enrich), cfg)[0]["status"] == "FAIL"
    # S2: one working backdoor whose best alternative is 11 points short fails; a failed backdoor is not judged
    short = [*rows[:5], _row("p5", True, True, asr=0.9, alt=0.79), *rows[6:]]
    assert evaluate_claims(_fake_res(short, (1.6, 1.2, 1.0)), cfg)[1]["status"] == "FAIL"
    # a blended model (outside the claim's attacks) is reported, not judged
    blend = {**_row("b", True, False, asr=1.0, alt=0.2), "attack": "blended"}
    out = evaluate_claims(_fake_res([*rows, blend], (1.6, 1.2, 1.0)), cfg)
    assert out[1]["status"] == "PASS" and "Not judged" in out[1]["measured"]
    unlearned = [*rows[:5], _row("p5", True, False, asr=0.2, alt=0.1), *rows[6:]]
    out = evaluate_claims(_fake_res(unlearned, (1.6, 1.2, 1.0)), cfg)
    assert out[1]["status"] == "PASS" and "not learned" in out[1]["measured"]
    # S3: a clean model with a working alternative trigger fails
    bad_clean = [
        *rows[:9],
        {**rows[9], "candidate_error": {"median": 0.1, "max": 0.9, "best_any_class": 0.7}},
    ]
    assert evaluate_claims(_fake_res(bad_clean, (1.6, 1.2, 1.0)), cfg)[2]["status"] == "FAIL"
    # S4: a regulariser that is not smoother fails
    assert evaluate_claims(_fake_res(rows, (1.6, 1.2, 1.0), tv_ok=False), cfg)[3]["status"] == "FAIL"
    # S5: 9 of 10 passes, 8 of 10 fails, fewer than ten models fails
    nine = [*rows[:9], _row("c3", False, True)]
    eight = [_row("p0", True, False), *rows[1:9], _row("c3", False, True)]
    assert evaluate_claims(_fake_res(nine, (1.6, 1.2, 1.0)), cfg)[4]["status"] == "PASS"
    assert evaluate_claims(_fake_res(eight, (1.6, 1.2, 1.0)), cfg)[4]["status"] == "FAIL"
    assert evaluate_claims(_fake_res(rows[:9], (1.6, 1.2, 1.0)), cfg)[4]["status"] == "FAIL"


def test_packaged_recipes_validate_and_paper_fails_without_data(tmp_path: Path) -> None:
    root = Path(str(resources.files("backdoorlab") / "recipes" / "sun2020"))
    small = load_sun2020_config(root / "small.yaml")
    attacks = {m.attack for m in small.models}
    assert {"none", "badnets", "blended", "hidden-trigger", "clean-label"} <= attacks
    assert len(small.models) >= 10 and {m.dataset for m in small.models} == {"shapes", "fashion"}
    assert small.threads == 1 and small.datasets["shapes"].data.name == "shapes"
    paper = load_sun2020_config(root / "paper.yaml")
    assert {d.data.name for d in paper.datasets.values()} == {"folder"}
    assert all(d.patch_size == 30 and d.pretrained for d in paper.datasets.values())
    a = paper.audit
    assert (a.sigma, a.m, a.steps, a.reps) == (1.0, 16, 100, 10)  # §4, App. A.2
    assert len(paper.position_models) == 5  # App. E: centre and the four corners
    with pytest.raises(BackdoorLabError, match=r"datasets\.binary: .*does not exist"):
        run_sun2020(paper, tmp_path)
    ready = {r.name: r.status for r in list_reproductions()}
    assert ready.get("sun2020") == "ready" and "sun2021" not in ready


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda raw: raw["models"][1].update(dataset="cifar"), "unknown dataset 'cifar'"),
        (lambda raw: raw["models"].append(dict(raw["models"][0])), "duplicate name 'clean'"),
        (lambda raw: raw["models"][1].update(victim="transfer", attack="hidden-trigger"), "needs source"),
        (lambda raw: raw["models"][5].update(source=7), "source and target must differ"),
        (lambda raw: raw["models"][5].update(rate=0.5), "number of poisons"),
        (lambda raw: raw["models"][5].update(params={"epz": 1}), "has no 'epz'"),
        (lambda raw: raw["models"][0].update(classes=[0, 1]), "classes is for transfer victims"),
        (lambda raw: raw["models"][5].update(classes=[2, 3]), r"must be among classes"),
        (lambda raw: raw["models"][1].update(audit={"stepz": 3}), "unknown audit setting 'stepz'"),
        (lambda raw: raw["models"][1].update(audit={"steps": 0}), "audit: steps"),
        (lambda raw: raw.update(main_model="nope"), "main_model: no model named 'nope'"),
        (lambda raw: raw.update(main_model="blended"), "patch-trigger poisoned model"),
        (lambda raw: raw.update(clean_model="bin-clean"), "clean_model must be a clean model"),
        (lambda raw: raw["datasets"]["shapes"].update(extractor="badnets"), "clean scratch model"),
        (lambda raw: raw["datasets"]["shapes"].update(extractor=None), "need extractor or pretrained"),
        (lambda raw: raw["datasets"]["shapes"].update(denoiser={"deep": 3}), "unknown denoiser setting"),
    ],
)
def test_config_errors_are_named(change, match: str) -> None:
    raw = tiny().model_dump(mode="json")
    change(raw)
    with pytest.raises(BackdoorLabError, match=match):
        parse_config_model(raw, Sun2020Config)


def test_run_time_errors_are_named(tmp_path: Path) -> None:
    with pytest.raises(BackdoorLabError, match="out of range"):
        run_sun2020(tiny(models=(*tiny().models[:4], SuiteModel(name="x", dataset="shapes", attack="badnets",
                                                               target=12, trigger=TRIG))), tmp_path)  # fmt: skip
    big = tiny().datasets["shapes"].model_copy(update={"patch_size": 13})
    with pytest.raises(BackdoorLabError, match="larger than the 12×12 images"):
        run_sun2020(tiny(datasets={"shapes": big}), tmp_path)


def test_audit_leaves_batchnorm_statistics_alone(tmp_path: Path) -> None:
    """Regression: the denoised wrapper of audit.denoiser was born in train mode, and restoring its mode after
    SmoothAdv put the classifier in train mode, so later forward passes of the audit rewrote BatchNorm running
    statistics (a ResNet's clean accuracy fell from 83 % to 51 %). The reproduction's guard catches it too."""
    from backdoorlab.audit.pipeline import audit
    from backdoorlab.data.registry import load_dataset
    from backdoorlab.models.dncnn import DnCNN
    from backdoorlab.models.io import model_hash

    _, test = load_dataset("shapes", n_train=10, n_test=30, size=12)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(576, 10)
    )
    net[1].running_mean.uniform_(-1, 1)
    net.eval()
    before = model_hash(net)
    audit(net, test, sigma=0.25, eps=1.0, m=1, steps=2, n_images=2, n_eval=8, reps=1, n_null=4, patch_size=3,
          denoiser=DnCNN(3, 2, 4))  # fmt: skip
    assert model_hash(net) == before and not net.training
