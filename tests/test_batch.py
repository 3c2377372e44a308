"""experiments.batch.run_experiments: a list of experiments, in order or on worker processes."""

from __future__ import annotations

import pytest

from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.batch import run_experiments
from backdoorlab.experiments.config import AttackConfig, DataConfig, ExperimentConfig
from backdoorlab.experiments.runner import Workspace
from backdoorlab.training import TrainRecipe


def _config(name: str, target: int) -> ExperimentConfig:
    return ExperimentConfig(
        name=name,
        data=DataConfig(name="mnist5k", train_per_class=6, test_per_class=3),
        attack=AttackConfig(name="badnets", target=target, rate=0.2),
        train=TrainRecipe(epochs=1, batch_size=20, lr=0.05),
        clean_reference=False,
        report_samples=0,
    )


def test_records_come_back_in_config_order_and_are_stored(tmp_path):
    configs = [_config("a", 1), _config("b", 2)]
    records = run_experiments(configs, tmp_path, workers=2)
    assert [r.name for r in records] == ["a", "b"]
    assert {r.id for r in Workspace(tmp_path).store.list()} == {r.id for r in records}
    again = run_experiments(configs, tmp_path)  # one process, cached models: the same metrics
    assert [r.metrics["victim"] for r in again] == [r.metrics["victim"] for r in records]


def test_a_failing_experiment_is_named(tmp_path):
    with pytest.raises(BackdoorLabError, match=r"experiment 'bad' failed: .*attack.target"):
        run_experiments([_config("ok", 1), _config("bad", 42)], tmp_path, workers=2)
    with pytest.raises(BackdoorLabError, match="workers must be ≥ 1"):
        run_experiments([_config("ok", 1)], tmp_path, workers=0)
