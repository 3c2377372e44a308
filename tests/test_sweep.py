"""Sweeps: grid expansion and validation, local and Ray backends, retries, resuming after SIGKILL, reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.runner import Workspace
from backdoorlab.experiments.sweep import load_sweep, run_sweep
from backdoorlab.experiments.sweep_report import write_sweep_report
from backdoorlab.models import load_model

BASE = {
    "name": "tiny",
    "data": {"name": "mnist5k", "train_per_class": 12, "test_per_class": 6},
    "attack": {"name": "badnets", "target": 0, "rate": 0.1},
    "train": {"epochs": 1, "batch_size": 32, "lr": 0.05},
    "clean_reference": False,
    "report_samples": 4,
}


def _spec(**over):
    return {"name": "t", "base": BASE, **over}


# -- expansion and validation --------------------------------------------------------------------------------
GRID = {
    "product": {"attack.target": [0, 1], "seed": [0, 1, 2]},
    "zip": [
        {
            "attack.trigger.params.size": [2, 4],
            "attack.trigger.params.placement": ["top-left", "bottom-right"],
        }
    ],
}


def test_product_zip_and_nested_fields_expand_in_order():
    sweep = load_sweep(_spec(grid=GRID))
    assert len(sweep.items) == 2 * 3 * 2
    first, last = sweep.items[0], sweep.items[-1]
    assert first.overrides == {
        "attack.target": 0,
        "seed": 0,
        "attack.trigger.params.size": 2,
        "attack.trigger.params.placement": "top-left",
    }
    assert last.overrides["attack.target"] == 1 and last.overrides["seed"] == 2
    assert last.config["attack"]["trigger"]["params"] == {"size": 4, "placement": "bottom-right"}
    # the rest of the base config is kept, and every expanded config is distinct
    assert all(it.config["data"]["train_per_class"] == 12 for it in sweep.items)
    assert len({it.digest for it in sweep.items}) == len(sweep.items)
    assert sweep.axes == [
        "attack.target",
        "seed",
        "attack.trigger.params.size",
        "attack.trigger.params.placement",
    ]
    # the same spec is the same sweep (same id: what makes resuming work); another grid is another sweep
    assert load_sweep(_spec(grid=GRID)).id == sweep.id
    assert load_sweep(_spec(grid={"product": {"seed": [0, 1]}})).id != sweep.id


def test_a_null_value_replaces_a_group_whole():
    sweep = load_sweep(
        _spec(grid={"zip": [{"attack": [None, BASE["attack"]], "name": ["clean", "poisoned"]}]})
    )
    assert sweep.items[0].config["attack"] is None and sweep.items[1].config["attack"]["name"] == "badnets"
    assert [it.config["name"] for it in sweep.items] == ["clean", "poisoned"]


@pytest.mark.parametrize(
    ("grid", "needle"),
    [
        ({"product": {"attack.rate": [0.1, 2.0]}}, "sweep experiment 1 (rate=2): attack.rate"),
        ({"product": {"attack.colour": [1]}}, "attack.colour: unknown field"),
        ({"product": {"attack.rate.x": [1]}}, "attack.rate is a value"),
        ({"product": {"seed": []}}, "grid.product.seed: give at least one value"),
        ({"zip": [{"seed": [0, 1], "attack.target": [0]}]}, "grid.zip[0]: the lists must have the same"),
        ({"product": {"seed": [0, 0]}}, "are the same experiment"),
        ({"product": {"seed": [0]}, "zip": [{"seed": [1]}]}, "swept twice"),
        (
            {"product": {"attack.trigger.params.size": [3, 40]}},
            "sweep experiment 1 (size=40): attack.trigger",
        ),
        ({"product": {"model.name": ["lenet", "nosuchnet"]}}, "nosuchnet"),
    ],
)
def test_every_expanded_config_is_validated_before_anything_runs(tmp_path, grid, needle):
    with pytest.raises(BackdoorLabError) as err:
        run_sweep(_spec(grid=grid), tmp_path)
    assert needle in str(err.value)
    assert not (tmp_path / "store.sqlite").exists() or not Workspace(tmp_path).store.sweeps()


def test_spec_errors_name_the_field(tmp_path):
    with pytest.raises(BackdoorLabError, match="retries"):
        load_sweep(_spec(retries=-1))
    with pytest.raises(BackdoorLabError, match="workers"):
        load_sweep(_spec(workers=0))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "base": "nope.yaml"}))
    with pytest.raises(BackdoorLabError, match=r"base: config file .*nope\.yaml not found"):
        load_sweep(path)


# -- running ---------------------------------------------------------------------------------------------
def _metrics_by_idx(outcome, root):
    store = Workspace(root).store
    return {it.idx: store.get(it.run_id).metrics["victim"] for it in outcome.items}


def test_local_sweep_runs_shares_steps_and_resumes_without_rerunning(tmp_path):
    spec = _spec(
        base={**BASE, "clean_reference": True}, grid={"product": {"attack.target": [0, 1, 2]}}, retries=0
    )
    out = run_sweep(spec, tmp_path, workers=2)
    assert [it.status for it in out.items] == ["done"] * 3
    # the clean reference depends only on the data and seed: trained once for the three experiments
    trained = [t for ts in out.trained.values() for t in ts]
    assert trained.count("train clean model") == 1 and trained.count("train poisoned model") == 3
    store = Workspace(tmp_path).store
    assert store.count() == 3 and {it.run_id for it in out.items} == {r.id for r in store.list()}
    # the same command again finds the sweep finished and runs nothing
    again = run_sweep(spec, tmp_path, workers=2)
    assert again.trained == {} and store.count() == 3
    report = write_sweep_report(tmp_path, out.sweep.id[:6])
    html = report.read_text()
    assert "Matrices" not in html and "victim.asr" in html and "attack.target" in html
    import pandas as pd

    frame = pd.read_parquet(report.parent / "results.parquet")
    assert len(frame) == 3 and set(frame["status"]) == {"done"}
    assert (report.parent / "summary.csv").is_file()


def test_failed_experiments_are_retried_then_recorded_and_the_rest_go_on(tmp_path):
    spec = _spec(grid={"product": {"seed": [0, 1, 2]}}, retries=1)
    out = run_sweep(spec, tmp_path, workers=2, runner="tests.sweep_runners:flaky")
    by = {it.idx: it for it in out.items}
    assert by[0].status == "done" and by[0].attempts == 0
    assert by[1].status == "done" and by[1].attempts == 1  # failed once, then passed on the retry
    assert by[2].status == "failed" and by[2].attempts == 2 and "never heals" in by[2].error
    assert Workspace(tmp_path).store.count() == 2
    # resuming leaves the failed one alone unless asked
    again = run_sweep(spec, tmp_path, workers=1, runner="tests.sweep_runners:flaky")
    assert again.trained == {} and [it.status for it in again.items] == ["done", "done", "failed"]
    retried = run_sweep(spec, tmp_path, workers=1, runner="tests.sweep_runners:flaky", retry_failed=True)
    assert {it.idx: it.attempts for it in retried.items}[2] == 4
    report = write_sweep_report(tmp_path, out.sweep.id).read_text()
    assert "Failed experiments" in report and "never heals" in report


def test_a_killed_worker_is_replaced_and_its_experiment_retried(tmp_path):
    spec = _spec(grid={"product": {"seed": [0, 1]}}, retries=2)
    out = run_sweep(spec, tmp_path, workers=2, runner="tests.sweep_runners:dies_once")
    assert [it.status for it in out.items] == ["done", "done"]
    assert Workspace(tmp_path).store.count() == 2


def test_local_and_ray_backends_give_identical_results(tmp_path):
    pytest.importorskip("ray")
    spec = _spec(grid={"product": {"attack.target": [0, 1]}, "zip": [{"seed": [0, 1]}]})
    local = run_sweep(spec, tmp_path / "local", workers=2)
    ray_out = run_sweep(spec, tmp_path / "ray", workers=2, backend="ray")
    assert [it.status for it in ray_out.items] == ["done"] * 4
    assert _metrics_by_idx(local, tmp_path / "local") == _metrics_by_idx(ray_out, tmp_path / "ray")


def test_a_sweep_killed_midway_resumes_with_no_duplicate_or_missing_rows(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(_spec(grid={"product": {"seed": [0, 1, 2, 3, 4, 5]}}, workers=2)))
    home = tmp_path / "home"
    cmd = [sys.executable, "-m", "backdoorlab.cli", "--home", str(home), "sweep", str(grid)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    store_path = home / "store.sqlite"
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if store_path.exists() and Workspace(home).store.count() >= 2:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-sweep
            killed_at = Workspace(home).store.count()
            break
        time.sleep(0.2)
    proc.wait(timeout=30)
    assert killed_at is not None, f"the sweep ended before it could be killed: {proc.stderr.read()[-800:]!r}"
    store = Workspace(home).store
    (sweep,) = store.sweeps()
    items = store.sweep_items(sweep.id)
    # whatever was committed is consistent: a done item has its run row and every run row its done item
    done = {it.run_id for it in items if it.status == "done"}
    assert done == {r.id for r in store.list()} and 2 <= len(done) < 6
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    items = store.sweep_items(sweep.id)
    assert [it.status for it in items] == ["done"] * 6
    runs = store.list()
    assert len(runs) == 6 and {r.id for r in runs} == {it.run_id for it in items}
    assert done <= {r.id for r in runs}  # finished work was not redone
    for r in runs:  # every artefact loads, and nothing half-written is visible
        load_model(Path(r.artifacts["victim"]) / "model.safetensors")
        assert (home / "runs" / r.id / "run.json").is_file()
    for kind in ("model", "poison"):
        for folder in (home / "cache" / kind).iterdir():
            assert folder.name.startswith(".") or any(folder.glob("*.safetensors"))
    visible = {p.name for p in (home / "runs").iterdir() if not p.name.startswith(".")}
    assert {r.id for r in runs} <= visible


# -- tables and the CLI ----------------------------------------------------------------------------------------
def test_runs_export_filter_and_compare(tmp_path, capsys):
    from backdoorlab.cli import main
    from backdoorlab.experiments.tables import compare, run_rows

    run_sweep(_spec(grid={"product": {"attack.target": [0, 1]}}), tmp_path, workers=1)
    store = Workspace(tmp_path).store
    rows = run_rows(store, ["attack.target=1"])
    assert len(rows) == 1 and rows[0]["config.attack.target"] == 1 and "metrics.victim.asr" in rows[0]
    with pytest.raises(BackdoorLabError, match=r"no run has the field 'config\.attack\.colour'"):
        run_rows(store, ["attack.colour=1"])
    ids = [r.id for r in store.list()]
    text = compare(store, ids)
    assert "attack.target" in text and "seed" not in text.split("victim")[0]
    assert main(["--home", str(tmp_path), "runs", "export", "--out", str(tmp_path / "r.parquet")]) == 0
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "r.parquet")
    assert len(frame) == 2 and sorted(frame["config.attack.target"]) == [0, 1]
    assert main(["--home", str(tmp_path), "runs", "export", "--out", str(tmp_path / "r.txt")]) == 2
    assert "must end in .parquet or .csv" in capsys.readouterr().err
    assert main(["--home", str(tmp_path), "runs", "list", "--where", "attack.target=0"]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # the header and one run


def test_cli_dry_run_lists_and_validates(tmp_path, capsys):
    from backdoorlab.cli import main

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(_spec(grid={"product": {"seed": [0, 1]}})))
    assert main(["--home", str(tmp_path), "sweep", str(grid), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 experiments over seed" in out and json.dumps({"seed": 1}) in out
    assert not (tmp_path / "runs").exists()
    assert main(["--home", str(tmp_path), "sweep", "report", "zz"]) == 2
    assert "not valid" in capsys.readouterr().err


def test_recipe_base_and_aggregation_over_seeds_with_rate_plots_and_matrices():
    import pandas as pd

    from backdoorlab.experiments.store import SweepRow
    from backdoorlab.experiments.sweep_report import aggregate, render_sweep_report

    sweep = load_sweep(
        {"name": "r", "base": "recipe:badnets/small", "grid": {"product": {"seed": [0, 1]}}}, check=False
    )
    assert sweep.items[0].config["data"]["name"] == "mnist5k" and sweep.items[1].config["seed"] == 1
    rows = []
    for target in (0, 1):
        for rate in (0.01, 0.1):
            for seed, asr in ((0, 0.2), (1, 0.4)):
                rows.append(
                    {
                        "idx": len(rows),
                        "attack.target": target,
                        "attack.rate": rate,
                        "seed": seed,
                        "status": "done",
                        "attempts": 0,
                        "run_id": "ab",
                        "victim.asr": asr + rate + target,
                        "victim.clean_acc": 0.9,
                    }
                )
    rows.append(
        {
            "idx": 8,
            "attack.target": 1,
            "attack.rate": 0.1,
            "seed": 2,
            "status": "failed",
            "attempts": 2,
            "run_id": None,
            "error": "boom",
        }
    )
    frame = pd.DataFrame(rows)
    axes = ["attack.target", "attack.rate", "seed"]
    summary = aggregate(frame, axes)
    assert len(summary) == 4 and set(summary["n"]) == {2}  # the failed one is not averaged in
    r = summary[(summary["attack.target"] == 1) & (summary["attack.rate"] == 0.1)].iloc[0]
    assert r["victim.asr.mean"] == pytest.approx(1.4) and r["victim.asr.std"] == pytest.approx(
        0.1414, abs=1e-3
    )
    html = render_sweep_report(frame, summary, SweepRow("ab12", "r", 0.0, {}, {"done": 8, "failed": 1}), axes)
    for needle in (
        "Attack success against the poisoning rate",
        "Matrices",
        "Failed experiments",
        "boom",
        "± 14.14%",
    ):
        assert needle in html


def test_ctrl_c_stops_the_sweep_promptly_and_it_resumes(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(_spec(grid={"product": {"seed": [0, 1, 2, 3]}}, workers=1)))
    home = tmp_path / "home"
    cmd = [sys.executable, "-m", "backdoorlab.cli", "--home", str(home), "sweep", str(grid)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (home / "store.sqlite").exists() and Workspace(home).store.count() >= 1:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    t0 = time.time()
    rc = proc.wait(timeout=60)
    err = proc.stderr.read().decode()
    assert rc == 130 and "interrupted" in err and "Traceback" not in err
    assert time.time() - t0 < 30
    store = Workspace(home).store
    (sweep,) = store.sweeps()
    n_done = store.count()
    assert 1 <= n_done < 4 and sum(it.status == "done" for it in store.sweep_items(sweep.id)) == n_done
    out = run_sweep(grid, home, workers=1)
    assert [it.status for it in out.items] == ["done"] * 4 and store.count() == 4


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "examples").glob("sweep_*.yaml")))
def test_example_sweeps_expand_into_valid_configs(path):
    sweep = load_sweep(path, check=False)  # names and shapes need the data, which CI may not have
    assert len(sweep.items) >= 8 and len({it.digest for it in sweep.items}) == len(sweep.items)
