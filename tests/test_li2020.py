"""The li2020 reproduction runs end to end on a tiny config and reports every claim."""

from __future__ import annotations

from backdoorlab.experiments.config import DataConfig
from backdoorlab.papers.li2020 import Li2020Config, run_li2020
from backdoorlab.training import TrainRecipe


def test_li2020_tiny_end_to_end(tmp_path):
    cfg = Li2020Config(
        name="li2020-tiny",
        data=DataConfig(name="mnist5k", train_per_class=20, test_per_class=10),
        train=TrainRecipe(epochs=1, batch_size=50, lr=0.05),
        target=0,
        shrink_sizes=(1, 4),
        defense_shrinks=(0, 4, 6),
        ablation_max_shrinks=(0, 4),
        noise_stds=(5, 20),
        jitter_sizes=(0.4,),
        value_sweep=(0, 128, 255),
        heatmap_stride=8,
        heatmap_images=20,
        fp_fractions=(0.0, 0.5),
        nc_epochs=2,
        nc_images=40,
        unlearn_epochs=1,
        ae_epochs=1,
        ae_images=100,
        saliency_images=2,
        out_of_sample="shapes",
    )
    res = run_li2020(cfg, tmp_path)
    assert res["report"].endswith("report.html")
    assert [c["id"] for c in res["claims"]] == ["L1", "L2", "L3", "L4", "L5", "L6", "L7", "L7b", "L8", "L9"]
    assert {c["status"] for c in res["claims"]} <= {"PASS", "FAIL", "NOT MEASURED"}
    assert set(res["table1"]["BadNets"]) >= {
        "Standard",
        "Fine-Pruning",
        "Neural Cleanse",
        "Auto-Encoder",
        "Flip",
    }
    report = (tmp_path / "reproductions" / "li2020-tiny" / "report.html").read_text()
    for needle in ("Table 1", "Table 5", "Fig. 4", "Fig. 13", "saliency", "L9"):
        assert needle in report


def test_packaged_recipes_validate():
    from backdoorlab.experiments.config import load_config
    from backdoorlab.experiments.reproduce import recipe_path
    from backdoorlab.papers.li2020 import load_li2020_config

    for scale in ("small", "paper"):
        load_config(recipe_path("badnets", scale))
        cfg = load_li2020_config(recipe_path("li2020", scale))
        assert not cfg.augment_poisoned and cfg.train.flip
    load_li2020_config(recipe_path("li2020", "paper-resnet34"))


def test_reproduce_li2020_from_the_cli_with_a_recipe(tmp_path, capsys):
    import yaml

    from backdoorlab.cli import main

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "li2020-cli",
                "data": {"name": "mnist5k", "train_per_class": 10, "test_per_class": 6},
                "train": {"epochs": 1, "batch_size": 50},
                "target": 0,
                "shrink_sizes": [4],
                "defense_shrinks": [0, 6],
                "ablation_max_shrinks": [4],
                "noise_stds": [20],
                "jitter_sizes": [0.4],
                "value_sweep": [0, 128],
                "heatmap_stride": 12,
                "heatmap_images": 10,
                "fp_fractions": [0.0],
                "nc_epochs": 1,
                "nc_images": 20,
                "unlearn_epochs": 1,
                "ae_epochs": 1,
                "ae_images": 50,
                "saliency_images": 1,
                "out_of_sample": None,
            }
        )
    )
    assert main(["--home", str(tmp_path / "home"), "reproduce", "li2020", "--recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "reproductions/li2020-cli/report.html" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("nc_epochs: 0\n")
    assert main(["--home", str(tmp_path / "home"), "reproduce", "li2020", "--recipe", str(bad)]) == 2
    assert "nc_epochs" in capsys.readouterr().err
