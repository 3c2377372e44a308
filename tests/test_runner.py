"""End-to-end experiments on tiny subsets: caching, determinism, nothing half-written on bad input."""

from __future__ import annotations

import pytest

from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.config import parse_config
from backdoorlab.experiments.runner import Workspace, rerender_report, run_experiment

TINY = {
    "name": "tiny",
    "data": {"name": "mnist5k", "train_per_class": 40, "test_per_class": 15},
    "attack": {"name": "badnets", "target": 0, "rate": 0.1},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.05},
    "report_samples": 8,
}


def _cfg(**over):
    raw = {**TINY, **over}
    return parse_config(raw)


def test_end_to_end_cache_and_report(tmp_path):
    first = run_experiment(_cfg(), tmp_path)
    m = first.metrics
    assert first.trained == ["train poisoned model", "train clean model"]
    assert m["n_train"] == 400 and m["n_test"] == 150 and m["n_poisoned"] == 40
    for key in ("victim", "clean"):
        assert 0.0 <= m[key]["clean_acc"] <= 1.0 and 0.0 <= m[key]["asr"] <= 1.0
    html = (tmp_path / "runs" / first.record.id / "report.html").read_text()
    for needle in (
        "Metrics",
        "Poisoned training samples",
        "Training curves",
        "target class",
        "data:image/png",
    ):
        assert needle in html
    # a second identical run trains nothing and gives the same numbers
    second = run_experiment(_cfg(name="again"), tmp_path)
    assert second.trained == [] and second.cache_misses == 0 and second.cache_hits == 3
    assert second.metrics["victim"] == m["victim"] and second.metrics["clean"] == m["clean"]
    ws = Workspace(tmp_path)
    assert {r.id for r in ws.store.list()} == {first.record.id, second.record.id}
    out = rerender_report(tmp_path, first.record.id[:5])
    assert out.is_file() and "Metrics" in out.read_text()


def test_same_seed_same_metrics_in_fresh_workspaces(tmp_path):
    a = run_experiment(_cfg(clean_reference=False), tmp_path / "a", report=False)
    b = run_experiment(_cfg(clean_reference=False), tmp_path / "b", report=False)
    assert a.metrics["victim"] == b.metrics["victim"]
    assert a.poisoned.poison_idx.tolist() == b.poisoned.poison_idx.tolist()
    c = run_experiment(_cfg(clean_reference=False, seed=1), tmp_path / "c", report=False)
    assert c.poisoned.poison_idx.tolist() != a.poisoned.poison_idx.tolist()


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"attack": {"trigger": {"kind": "square", "params": {"size": 40}}}}, "attack.trigger"),
        ({"attack": {"target": 12}}, "attack.target"),
        ({"data": {"name": "imagenet"}}, "unknown dataset"),
        ({"model": {"name": "resnet1000"}}, "unknown model"),
        ({"attack": {"name": "badnets", "rate": 4000}}, "attack"),
    ],
)
def test_bad_input_leaves_nothing_behind(tmp_path, over, field):
    with pytest.raises(BackdoorLabError, match=field):
        run_experiment(_cfg(**over), tmp_path)
    assert Workspace(tmp_path).store.list() == []
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(
        p for p in cache.rglob("*") if p.is_file() and ".locks" not in p.relative_to(cache).parts
    )
    assert not (tmp_path / "runs").exists()


def test_clean_only_experiment(tmp_path):
    r = run_experiment(_cfg(attack=None), tmp_path, report=True)
    assert r.poisoned is None and r.clean is None and "asr" not in r.metrics["victim"]


def test_interrupted_training_resumes_from_checkpoint(tmp_path, monkeypatch):
    import backdoorlab.experiments.runner as runner
    from backdoorlab.training import fit as real_fit

    class Killed(Exception):
        pass

    def stop_after_first_epoch(epoch, logs, model):
        if epoch == 1:
            raise Killed

    cfg = _cfg(clean_reference=False, train={"epochs": 2, "batch_size": 32, "lr": 0.05})
    with monkeypatch.context() as m:
        m.setattr(runner, "fit", lambda *a, **k: real_fit(*a, **k, callbacks=[stop_after_first_epoch]))
        with pytest.raises(Killed):
            run_experiment(cfg, tmp_path)
    assert Workspace(tmp_path).store.list() == []
    assert list((tmp_path / "checkpoints").iterdir())  # epoch 1 was saved
    resumed = run_experiment(cfg, tmp_path, report=False)
    fresh = run_experiment(cfg, tmp_path / "fresh", report=False)
    hist = resumed.metrics["history"]["victim"]
    assert [h["epoch"] for h in hist] == [1, 2]
    assert resumed.metrics["victim"] == fresh.metrics["victim"]
    assert not any((tmp_path / "checkpoints").iterdir())


def test_augment_poisoned_false_is_a_different_cached_model(tmp_path):
    train = {"epochs": 1, "batch_size": 32, "lr": 0.05, "crop_padding": 2, "flip": True}
    a = run_experiment(_cfg(clean_reference=False, train=train), tmp_path, report=False)
    b = run_experiment(
        _cfg(clean_reference=False, train=train, augment_poisoned=False), tmp_path, report=False
    )
    assert a.trained and b.trained and a.record.artifacts["victim"] != b.record.artifacts["victim"]


def test_clean_label_pgd_trains_one_cached_robust_model_for_every_rate(tmp_path):
    robust = {"eps": 76.5, "step": 25.5, "steps": 3, "train": {"epochs": 1, "batch_size": 64, "lr": 0.05}}
    attack = {
        "name": "clean-label",
        "target": 1,
        "rate": 0.25,
        "trigger": {"kind": "turner", "params": {}},
        "params": {"perturbation": "pgd", "norm": "linf", "eps": 16, "steps": 5, "robust_model": robust},
    }
    first = run_experiment(_cfg(attack=attack, clean_reference=False), tmp_path, report=False)
    assert first.trained == ["adversarially train robust model", "train poisoned model"]
    p = first.poisoned
    assert (p.data.labels == first.train.labels).all()  # clean-label: no label changes
    assert (first.train.labels[p.poison_idx] == 1).all() and len(p.poison_idx) == 10
    delta = p.data.float01(p.poison_idx) - first.train.float01(p.poison_idx)
    delta[..., -3:, -3:] = 0  # the trigger pixels
    assert 0 < delta.abs().amax() <= 16 / 255 + 1 / 255
    # another rate reuses the robust model; the poison and the victim are new
    second = run_experiment(
        _cfg(attack={**attack, "rate": 0.5}, clean_reference=False), tmp_path, report=False
    )
    assert second.trained == ["train poisoned model"] and len(second.poisoned.poison_idx) == 20


def test_bad_robust_model_spec_names_the_field(tmp_path):
    attack = {
        "name": "clean-label",
        "target": 1,
        "rate": 0.25,
        "params": {"perturbation": "pgd", "robust_model": {"eps": -1}},
    }
    with pytest.raises(BackdoorLabError, match=r"attack\.params\.robust_model\.eps"):
        run_experiment(_cfg(attack=attack, clean_reference=False), tmp_path, report=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_advtrojan_trains_through_its_objective_and_reports_table5_metrics(tmp_path):
    over = {
        "data": {"name": "mnist5k", "train_per_class": 10, "test_per_class": 4},
        "attack": {
            "name": "advtrojan",
            "target": None,
            "trigger": {"kind": "square", "params": {"size": 3, "placement": "bottom-right"}},
            "params": {"eps": 0.2, "step": 0.1, "steps": 2},
        },
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.05},
    }
    first = run_experiment(_cfg(**over), tmp_path)
    assert first.trained == ["train infected model (attack objective)", "train clean model"]
    assert first.poisoned is None and "n_poisoned" not in first.metrics
    v = first.metrics["victim"]
    assert "asr" not in v and {"pgd_acc", "trigger_acc", "advtrojan_acc"} <= set(v)
    assert all(0.0 <= v[k] <= 1.0 for k in ("pgd_acc", "trigger_acc", "advtrojan_acc"))
    assert "advtrojan_acc" in (tmp_path / "runs" / first.record.id / "report.html").read_text()
    again = run_experiment(_cfg(**over), tmp_path)
    assert again.trained == [] and again.metrics["victim"] == v
    # the objective is part of the victim's cache key: another ε is another model
    other = {**over, "attack": {**over["attack"], "params": {"eps": 0.1, "step": 0.05, "steps": 2}}}
    assert run_experiment(_cfg(**other), tmp_path).trained == ["train infected model (attack objective)"]
    with pytest.raises(BackdoorLabError, match=r"attack\.target: badnets needs a target class"):
        run_experiment(_cfg(attack={"name": "badnets", "target": None}), tmp_path)
