"""The saha2020 reproduction: tiny end to end, the packaged recipes, and the cached-feature victims."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

import pytest
import torch

from backdoorlab.data.tensors import ImageTensors, make_generator
from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.config import DataConfig, ModelConfig
from backdoorlab.models import create_model
from backdoorlab.papers.saha2020 import (
    PoisonSettings,
    Saha2020Config,
    check_layer_fields,
    check_tail_chain,
    evaluate_claims,
    layer_outputs,
    load_saha2020_config,
    patched_scores,
    poisons_keep_target_label,
    run_saha2020,
    train_victim,
    trigger_distance,
    victim_tail,
)
from backdoorlab.training import TrainRecipe
from backdoorlab.transfer import finetune, patched_source_accuracy, replace_head
from backdoorlab.triggers import random_color_patch, stamp

RECIPE = TrainRecipe(epochs=2, batch_size=8, lr=0.01, momentum=0.9, channels_last=False)


def tiny(**over) -> Saha2020Config:
    base = dict(
        name="saha-tiny",
        device="cpu",
        threads=1,
        data=DataConfig(name="shapes", options={"n_train": 200, "n_test": 60, "size": 12}),
        model=ModelConfig(name="lenet"),
        pretrain_per_class=4,
        pretrain=TrainRecipe(epochs=1, batch_size=20, lr=0.01, channels_last=False),
        conv_layer="conv2_relu",
        more_layers=("fc1", "fc2"),
        pairs=((0, 1),),
        poison_per_class=4,
        finetune_per_class=6,
        val_per_class=3,
        trigger_size=4,
        ablation_patch=(3, 4),
        ablation_eps=(8.0, 16.0),
        locations=2,
        attack=PoisonSettings(iterations=2, lr=0.01, step="sign", batch_size=4, oversample=1.0),
        poisons=2,
        poison_counts=(1, 2, 4),
        finetune=TrainRecipe(epochs=2, batch_size=8, lr=0.01, channels_last=False),
        multiclass_classes=(0, 1, 2),
        ac_dims=2,
    )
    base.update(over)
    return Saha2020Config(**base)


def test_tiny_end_to_end_and_cache(tmp_path: Path) -> None:
    cfg = tiny(tran_reference=True, tran_poisons=4)
    res = run_saha2020(cfg, tmp_path)
    out = tmp_path / "reproductions" / "saha-tiny"
    assert Path(res["report"]) == out / "report.html"
    page = (out / "report.html").read_text()
    for title in ("Table 1", "Table 2", "Table 3", "Table 4", "Table 5", "Table 8", "Fig. 2", "H5"):
        assert title in page
    assert page.count("data:image/png;base64") == 3  # Fig. 2, Fig. 3 and the loss curve of the one pair
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == ["fig2_0.png", "fig3_0.png", "loss_0.png"]
    assert [c["id"] for c in res["claims"]] == ["H1", "H2", "H3", "H4", "H5"]
    assert all(c["status"] in ("PASS", "FAIL", "not measured") for c in res["claims"])
    assert "| H3 |" in (out / "claims.md").read_text()
    saved = json.loads((out / "results.json").read_text())
    pair = saved["pairs"][0]
    # H1 ingredients: every poison within its ε on the 8-bit grid, the trigger absent from the training set
    assert pair["h1"]["ablation_eps_ok"] and pair["h1"]["max_linf_255"] <= 16
    assert pair["h1"]["trigger_rms_training"] > 8 > pair["h1"]["trigger_rms_badnets"]
    assert pair["h1"]["labels_target"] is True  # measured: every kept poison carries the target label
    mislabelled = copy.deepcopy(saved)
    mislabelled["pairs"][0]["h1"]["labels_target"] = False
    h1 = evaluate_claims(mislabelled, cfg)[0]
    assert h1["status"] == "FAIL" and "training set): False" in h1["measured"]
    # random placement: `locations` draws per validation image, their spread reported
    assert len(pair["poisoned_model"]["per_location"]) == 2
    assert set(pair["counts"]) == {"1", "2", "4"} and set(pair["eps"]) == {"8", "16"}
    assert set(pair["table5"]) == {"head", "more"}
    assert pair["table8"]["ours"]["spectral"]["removed"] == 3  # 1.5 × 2 poisons
    assert saved["multiclass"]["classes"] == [0, 1, 2] and "multi_source" in saved["multiclass"]
    assert set(pair["generation"]) == {"reference", "ε 8", "patch 3", "layer conv2_relu"}
    # H5's BadNets half in Tran et al.'s setting: 4 poisons among the 4 clean target images of the pretraining split
    tran = saved["tran_reference"]
    assert (tran["poisons"], tran["clean_target"], tran["spectral"]["removed"]) == (4, 4, 6)
    assert 0 <= tran["spectral"]["found"] <= 4 and not tran["cached"]
    assert "Tran et al.'s setting" in next(c for c in res["claims"] if c["id"] == "H5")["measured"]
    assert not any(g["cached"] for g in pair["generation"].values())
    # a second run finds the feature extractor and every poison set in the artefact cache
    again = run_saha2020(cfg, tmp_path)
    assert again["feature_extractor"]["cached"]
    assert all(g["cached"] for g in again["pairs"][0]["generation"].values())
    assert again["tran_reference"]["cached"] and again["tran_reference"]["spectral"] == tran["spectral"]
    assert again["summary"]["table1"] == res["summary"]["table1"]


def test_packaged_recipes_validate() -> None:
    root = Path(str(resources.files("backdoorlab") / "recipes" / "saha2020"))
    small = load_saha2020_config(root / "small.yaml")
    paper = load_saha2020_config(root / "paper.yaml")
    assert small.model.name == "alexnet_small" and small.pretrained is None and small.pretrain_per_class > 0
    # the paper recipe: ImageNet/AlexNet, 200/800/100, 30×30, ε 16, K = 100, 5,000 its, lr 0.01 × 0.95 / 2,000
    assert paper.data.name == "folder" and paper.pretrained
    assert (paper.finetune_per_class, paper.val_per_class, paper.trigger_size) == (800, 100, 30)
    a = paper.attack
    assert (a.eps, a.batch_size, a.iterations, a.lr, a.decay, a.decay_every) == (
        16,
        100,
        5000,
        0.01,
        0.95,
        2000,
    )
    assert paper.placement == "random" and paper.locations == 10 and paper.poisons == 100


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"pairs": ((1, 1),)}, "source and target must differ"),
        ({"pairs": ()}, "at least one"),
        ({"finetune": TrainRecipe(flip=True)}, "may not augment"),
        ({"pretrain_per_class": 0}, "pretrained"),
        ({"ablation_eps": (8.0, 32.0)}, "reference attack.eps"),
        ({"ablation_patch": (3,)}, "reference trigger_size"),
        ({"poison_counts": (1, 4)}, "reference count"),
        ({"placement": "middle"}, "must be one of"),
        ({"data": DataConfig(name="shapes", train_per_class=5)}, "not used here"),
        ({"tran_reference": True, "tran_poisons": 5}, "tran_poisons"),
        ({"tran_reference": True, "pretrained": "x.safetensors", "pretrain_per_class": 0}, "tran_reference"),
    ],
)
def test_config_errors_are_named(over: dict, match: str) -> None:
    with pytest.raises(BackdoorLabError, match=match):
        from backdoorlab.experiments.config import parse_config_model

        raw = tiny().model_dump(mode="json")
        raw.update(
            {k: (v.model_dump(mode="json") if hasattr(v, "model_dump") else v) for k, v in over.items()}
        )
        parse_config_model(raw, Saha2020Config)


def _parse(**over) -> Saha2020Config:
    from backdoorlab.experiments.config import parse_config_model

    raw = tiny().model_dump(mode="json")
    raw.update({k: (v.model_dump(mode="json") if hasattr(v, "model_dump") else v) for k, v in over.items()})
    return parse_config_model(raw, Saha2020Config)


def test_too_few_attacker_images_fail_at_validation() -> None:
    """One attacker target image per generated poison: a pair generates max(max(poison_counts), poisons ×
    oversample), the multi-source run multisource_poisons × oversample; too many fail before any pretraining."""
    with pytest.raises(
        BackdoorLabError, match=r"poisons × attack\.oversample = 2 × 3 = 6.*poison_per_class = 4"
    ):
        _parse(attack=PoisonSettings(iterations=2, batch_size=4, oversample=3.0))
    with pytest.raises(BackdoorLabError, match=r"max\(poison_counts\) = 8.*raise poison_per_class to 8"):
        _parse(poison_counts=(1, 2, 8))
    with pytest.raises(BackdoorLabError, match=r"multisource_poisons × attack\.oversample = 3 × 2 = 6"):
        _parse(multisource_poisons=3, attack=PoisonSettings(iterations=2, batch_size=4, oversample=2.0))
    # oversample multiplies poisons only: the counts up to 4 are subsets of the 4 generated
    assert _parse(attack=PoisonSettings(iterations=2, batch_size=4, oversample=2.0)).poison_per_class == 4
    # no multi-source run with two classes: its count is not checked
    assert _parse(multiclass_classes=None, multisource_poisons=9).multisource_poisons == 9


def test_layer_errors_name_the_config_field(tmp_path: Path) -> None:
    with pytest.raises(
        BackdoorLabError, match=r"conv_layer 'conv9' is not a module.*valid names: .*conv2_relu"
    ):
        run_saha2020(tiny(conv_layer="conv9"), tmp_path)  # raised on the architecture, before pretraining
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    model = create_model("lenet", in_channels=3, num_classes=10, input_size=12)
    with pytest.raises(BackdoorLabError, match=r"feature_layer 'fc7' is not a module.*valid names"):
        check_layer_fields(model, tiny(feature_layer="fc7"))
    check_layer_fields(model, tiny(feature_layer="fc1_relu"))  # valid names pass


def test_poisons_keep_target_label_is_measured() -> None:
    assert poisons_keep_target_label(torch.tensor([7, 7, 7]), 7)
    assert not poisons_keep_target_label(torch.tensor([7, 2, 7]), 7)  # one poison relabelled
    assert not poisons_keep_target_label(torch.ones(3, dtype=torch.long), 0)
    assert not poisons_keep_target_label(torch.empty(0, dtype=torch.long), 1)  # nothing measured


def test_run_time_errors_are_named(tmp_path: Path) -> None:
    with pytest.raises(BackdoorLabError, match="out of range"):
        run_saha2020(tiny(pairs=((0, 12),)), tmp_path)
    with pytest.raises(BackdoorLabError, match="finetune_per_class"):
        run_saha2020(tiny(finetune_per_class=500), tmp_path)
    with pytest.raises(BackdoorLabError, match="larger than the 12×12 images"):
        run_saha2020(tiny(trigger_size=13, ablation_patch=(13,)), tmp_path)
    with pytest.raises(BackdoorLabError, match="valid names"):
        run_saha2020(tiny(feature_layer="fc7"), tmp_path)


# -- the cached-feature victims are the transfer-learning victims ---------------------------------------------
def _data(n: int = 24) -> ImageTensors:
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(n, 1, 8, 8, generator=g) * 255).to(torch.uint8)
    return ImageTensors(images, torch.arange(n) % 2, ("a", "b"), name="two")


def test_head_victim_on_cached_features_equals_finetune() -> None:
    torch.manual_seed(0)
    model = create_model("lenet", in_channels=1, num_classes=3, input_size=8)
    data = _data()
    whole = copy.deepcopy(model)
    replace_head(whole, 2, seed=3)
    finetune(whole, data, RECIPE, layers="head", seed=3, device="cpu")
    feats = layer_outputs(model, data.images, ["fc1_relu"])["fc1_relu"]
    tail = victim_tail(model, None, 2, (), seed=3)
    train_victim(tail, feats, data.labels, RECIPE, seed=3)
    assert torch.allclose(tail.fc2.weight, whole.fc2.weight, atol=1e-5)
    assert torch.allclose(tail.fc2.bias, whole.fc2.bias, atol=1e-5)
    assert not torch.equal(tail.fc2.weight, victim_tail(model, None, 2, (), seed=3).fc2.weight)  # it trained


def test_more_layers_victim_on_cached_features_equals_finetune() -> None:
    torch.manual_seed(0)
    model = create_model("lenet", in_channels=1, num_classes=3, input_size=8)
    data = _data()
    whole = copy.deepcopy(model)
    replace_head(whole, 2, seed=5)
    finetune(whole, data, RECIPE, layers=["fc1", "fc2"], seed=5, device="cpu")
    assert torch.equal(whole.conv2.weight, model.conv2.weight)  # frozen
    # cached at conv1_relu: the tail restores the 32×4×4 maps, runs the frozen conv2, trains fc1 and fc2
    shapes: dict = {}
    feats = layer_outputs(model, data.images, ["conv1_relu"], shapes=shapes)["conv1_relu"]
    assert shapes["conv1_relu"] == (32, 4, 4)
    tail = victim_tail(model, "conv1_relu", 2, ("fc1", "fc2"), seed=5, in_shape=shapes["conv1_relu"])
    assert not tail.conv2.weight.requires_grad and tail.fc1.weight.requires_grad
    train_victim(tail, feats, data.labels, RECIPE, seed=5)
    assert torch.equal(tail.conv2.weight, model.conv2.weight)
    assert torch.allclose(tail.fc1.weight, whole.fc1.weight, atol=1e-5)
    assert torch.allclose(tail.fc2.weight, whole.fc2.weight, atol=1e-5)
    with pytest.raises(BackdoorLabError, match="do not come after"):
        victim_tail(model, "conv2_relu", 2, ("conv1",), seed=0)
    with pytest.raises(BackdoorLabError, match="top-level module"):
        victim_tail(model, "nowhere", 2, (), seed=0)


def test_patched_scores_match_patched_source_accuracy() -> None:
    torch.manual_seed(0)
    model = create_model("lenet", in_channels=3, num_classes=2, input_size=10)
    g = torch.Generator().manual_seed(1)
    data = ImageTensors(
        (torch.rand(16, 3, 10, 10, generator=g) * 255).to(torch.uint8), torch.arange(16) % 2, ("s", "t")
    )
    trig = random_color_patch(size=3, seed=2, placement="random")
    ref = patched_source_accuracy(model, data, trig, sources=0, locations=4, gen=9, target=1)
    x = data.float01(torch.arange(0, 16, 2))
    g2 = make_generator(9)
    feats = [layer_outputs(model, stamp(x, trig, gen=g2), ["fc1_relu"])["fc1_relu"] for _ in range(4)]
    head = torch.nn.Sequential(torch.nn.Flatten(), copy.deepcopy(model.fc2))
    mine = patched_scores(head, feats, 0, 1)
    assert mine["per_location"] == pytest.approx(ref["per_location"])
    assert mine["asr_mean"] == pytest.approx(ref["asr_mean"]) and mine["std"] == pytest.approx(ref["std"])


def test_layer_outputs_and_tail_chain() -> None:
    torch.manual_seed(0)
    model = create_model("lenet", in_channels=1, num_classes=3, input_size=8)
    x = torch.rand(5, 1, 8, 8)
    out = layer_outputs(model, x, ["fc1_relu", "conv2_relu"], batch_size=2)
    assert torch.allclose(out["fc1_relu"], model.features(x), atol=1e-6)
    assert out["conv2_relu"].shape == (5, 64 * 2 * 2)
    with pytest.raises(BackdoorLabError, match="valid names"):
        layer_outputs(model, x, ["fc7"])
    check_tail_chain(model, "conv2_relu", x)  # LeNet's forward is the chain of its modules

    class Skip(torch.nn.Module):  # a residual forward is not a chain
        head_layer = "fc2"

        def __init__(self) -> None:
            super().__init__()
            self.fc1 = torch.nn.Linear(4, 4)
            self.fc2 = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x.flatten(1)
            return self.fc2(self.fc1(h) + h)

    with pytest.raises(BackdoorLabError, match="not the chain"):
        check_tail_chain(Skip(), "fc1", torch.rand(3, 1, 2, 2))


def test_trigger_distance_finds_a_pasted_trigger_only() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 12, 12, generator=g) * 0.2 + 0.4  # mid-grey noise: far from a 0/1 colour grid
    trig = random_color_patch(size=4, seed=1, placement=(5, 3))
    clean = ImageTensors.quantize(x)
    assert trigger_distance(clean, trig) > 60
    pasted = ImageTensors.quantize(stamp(x[:1], trig))
    assert trigger_distance(torch.cat([clean, pasted]), trig) < 1.0
