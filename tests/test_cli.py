"""The CLI: every command runs, bad input is one line on stderr with exit 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from backdoorlab.cli import main
from backdoorlab.experiments.reproduce import _plan

_plan("future-paper", "a reproduction planned for a later issue", "a later issue")

TINY = {
    "name": "cli-tiny",
    "data": {"name": "mnist5k", "train_per_class": 20, "test_per_class": 5},
    "train": {"epochs": 1, "batch_size": 50},
    "clean_reference": False,
}


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_run_list_show_report(tmp_path, cfg, capsys):
    home = str(tmp_path / "home")
    assert main(["--home", home, "run", str(cfg), "--set", "seed=3"]) == 0
    out = capsys.readouterr().out
    assert "poisoned model" in out and "report:" in out
    run_id = out.split()[1]
    assert main(["runs", "list", "--home", home]) == 0
    assert run_id in capsys.readouterr().out
    assert main(["--home", home, "runs", "show", run_id[:4]]) == 0
    shown = capsys.readouterr().out
    assert "clean accuracy" in shown and "seed: 3" in shown
    assert main(["--home", home, "report", run_id]) == 0
    assert "report.html" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "missing.yaml"], "config file not found"),
        (["runs", "show", "beef"], "no run with id"),
        (["reproduce", "future-paper"], "not built yet"),
        (["reproduce", "nope"], "unknown reproduction"),
        (["audit", "missing.safetensors", "--data", "mnist5k"], "model file not found"),
    ],
)
def test_user_errors_are_one_line(tmp_path, argv, needle, capsys):
    assert main(["--home", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("attack.rate=1.5", "attack.rate: must be a fraction in (0, 1] or a count ≥ 1, got 1.5"),
        ("train.epochs=-2", "train.epochs"),
        ("data.name=cifar100", "unknown dataset 'cifar100'; choose one of:"),
        ("attack.trigger.params.size=99", "attack.trigger"),
    ],
)
def test_bad_fields_name_the_field(tmp_path, cfg, override, needle, capsys):
    home = tmp_path / "home"
    assert main(["--home", str(home), "run", str(cfg), "--set", override]) == 2
    assert needle in capsys.readouterr().err
    assert not (home / "runs").exists()


def test_lists(capsys):
    assert main(["data", "list"]) == 0
    assert "mnist5k" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    assert "lenet" in capsys.readouterr().out
    assert main(["attacks", "list"]) == 0
    listed = capsys.readouterr().out
    assert "badnets" in listed and "in Python only: hidden-trigger" in listed
    assert main(["reproduce", "list"]) == 0
    assert "badnets" in capsys.readouterr().out


def test_entry_point_help_and_no_traceback(tmp_path):
    exe = [sys.executable, "-m", "backdoorlab.cli"]
    out = subprocess.run([*exe, "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("run", "runs", "report", "data", "models", "reproduce", "demo"):
        assert cmd in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("attack: {rate: 1.5}\n")
    proc = subprocess.run([*exe, "--home", str(tmp_path), "run", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_models_inspect_refuses_pickles_and_names_shapes(tmp_path, capsys):
    import torch

    from backdoorlab.models import create_model, save_model

    model = create_model("lenet", in_channels=1, num_classes=10, input_size=28)
    path = save_model(model, tmp_path / "m.safetensors", classes=[str(i) for i in range(10)])
    assert main(["models", "inspect", str(path)]) == 0
    assert "lenet, input 1×28×28, 10 classes" in capsys.readouterr().out
    assert main(["models", "inspect", str(path), "--data", "shapes"]) == 2
    assert "1×28×28" in (err := capsys.readouterr().err) and "3×32×32" in err
    pickled = tmp_path / "evil.pt"
    torch.save(model.state_dict(), pickled)
    assert main(["models", "inspect", str(pickled)]) == 2
    assert "pickle" in capsys.readouterr().err


# -- audit: data options, settings, named errors -------------------------------------------------------------
def _image_folder(root, per_class: int = 6, hw: int = 12):
    """A tiny `folder` data set: root/{train,test}/<class>/*.png, 3 classes of tinted 12×12 RGB noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, tint in enumerate(((200, 40, 40), (40, 200, 40), (40, 40, 200))):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(rng.normal(tint, 30, (hw, hw, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def audit_files(tmp_path):
    """A 3-class LeNet for 3×12×12 images, a tiny denoiser file (trained for σ = 0.25) and a folder of images."""
    import torch

    from backdoorlab.audit.denoiser import save_denoiser
    from backdoorlab.models import create_model, save_model
    from backdoorlab.models.dncnn import DnCNN

    torch.manual_seed(0)
    net = create_model("lenet", in_channels=3, num_classes=3, input_size=12)
    model = save_model(net, tmp_path / "m.safetensors", classes=["class0", "class1", "class2"])
    den = DnCNN(3, depth=2, width=4)
    den.sigma = 0.25
    denoiser = save_denoiser(den, tmp_path / "den.safetensors")
    return model, denoiser, _image_folder(tmp_path / "images")


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--sigma", "0"], "--sigma: sigma must be a finite noise level > 0"),
        (["--sigma", "-0.5"], "--sigma: sigma must be"),
        (["--sigma", "nan"], "--sigma: sigma must be"),
        (["--eps", "0"], "--eps: eps must be a finite L2 radius > 0"),
        (["--eps", "-3"], "--eps: eps must be"),
        (["--n-images", "0"], "--n-images: n_images must be an integer ≥ 1"),
        (["--n-eval", "-1"], "--n-eval: n_eval must be an integer ≥ 1"),
        (["--seed", "-1"], "--seed: seed must be an integer ≥ 0"),
        (["--steps", "0"], "--steps: steps must be an integer ≥ 1"),
        (["--m", "0"], "--m: m must be an integer ≥ 1"),
        (["--data-option", "size"], "--data-option 'size': write it as key=value"),
    ],
)
def test_audit_bad_settings_name_the_flag(tmp_path, flags, needle, capsys):
    # checked before anything is loaded: the model file does not even exist
    argv = ["--home", str(tmp_path), "audit", str(tmp_path / "missing.safetensors"), "--data", "mnist5k"]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("backdoorlab: error: ") and needle in err
    assert "\n" not in err and "Traceback" not in err


def test_audit_of_a_folder_with_every_flag(tmp_path, audit_files, capsys, monkeypatch):
    import torch

    from backdoorlab.audit import pipeline, report

    model, denoiser, images = audit_files
    # seconds on a shared CPU: a quicker --quick (the flags below still override its image counts), and
    # only the success table of the report (the figures take seconds to draw and have their own tests)
    torch.set_num_threads(1)
    monkeypatch.setattr(pipeline, "QUICK", {**pipeline.QUICK, "steps": 4, "m": 2, "reps": 2, "n_null": 6})
    monkeypatch.setattr(report, "render_audit_report", lambda result, title: report.success_table(result))
    out = tmp_path / "out"
    argv = ["--home", str(tmp_path / "home"), "audit", str(model), "--data", "folder"]
    flags = ["--data-root", str(images), "--out", str(out), "--quick", "--denoiser", str(denoiser)]
    flags += ["--sigma", "0.3", "--eps", "1.5", "--n-images", "3", "--n-eval", "12", "--seed", "4"]
    assert main([*argv, *flags]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "report: " in printed and (out / "audit-m-folder.html").is_file()
    summary = json.loads((out / "audit-m-folder.json").read_text())
    s = summary["settings"]
    assert (s["sigma"], s["eps"], s["n_images"], s["n_eval"], s["seed"]) == (0.3, 1.5, 3, 12, 4)
    assert (s["steps"], s["m"], s["reps"], s["n_null"]) == (4, 2, 2, 6)  # --quick applied
    assert s["data"] == "folder:images" and summary["data_options"] == {"root": str(images)}
    assert s["denoiser"]["source"] == str(denoiser) and s["denoiser"]["sigma"] == 0.25
    assert not (tmp_path / "home" / "cache").exists()  # the given denoiser: nothing trained or cached
    matrix = summary["success_percent"]
    assert len(matrix) == len(summary["candidates"]) > 0
    assert all(len(row) == 3 for row in matrix) and all(0 <= v <= 100 for row in matrix for v in row)
    for cand, row in zip(summary["candidates"], matrix):  # the matrix agrees with each candidate's best
        assert max(row) == pytest.approx(100 * cand["best_rate"], abs=0.06)
    assert (out / "audit-m-folder.html").read_text().count("<tr><td>#") == len(matrix)


def test_audit_sigma_defaults_to_the_denoiser_files(tmp_path, audit_files, monkeypatch):
    import functools

    from backdoorlab.audit import pipeline

    class Stop(Exception):
        """Raised in place of the audit: only its arguments matter here."""

    model, denoiser, images = audit_files
    seen: dict = {}

    @functools.wraps(pipeline.audit)
    def fake_audit(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(pipeline, "audit", fake_audit)
    argv = ["--debug", "--home", str(tmp_path), "audit", str(model), "--data", "folder"]
    flags = ["--data-root", str(images), "--denoiser", str(denoiser), "--n-images", "3", "--n-eval", "12"]
    with pytest.raises(Stop):
        main([*argv, *flags])
    assert seen["sigma"] == 0.25 and seen["n_images"] == 3 and seen["n_eval"] == 12 and seen["seed"] == 0
    assert "eps" not in seen  # the pipeline's scaled paper ε
    # the file, loaded and checked once, is what the audit gets (it names its source)
    assert seen["denoiser"].source == str(denoiser) and seen["denoiser_data"].name == "folder:images"

    seen.clear()
    with pytest.warns(UserWarning, match="differs from the σ = 0.25"), pytest.raises(Stop):
        main([*argv, *flags, "--sigma", "0.5"])
    assert seen["sigma"] == 0.5  # the user's σ wins, with a warning

    # --reference: each earlier clean-model audit gives its best rate toward each class
    ref = tmp_path / "clean.json"
    ref.write_text(json.dumps({"success_percent": [[10.0, 60.0, 5.0], [20.0, 0.0, 0.0]]}))
    seen.clear()
    with pytest.raises(Stop):
        main([*argv, *flags, "--reference", str(ref), "--reference", str(ref), "--steps", "7", "--m", "3"])
    assert len(seen["reference"]) == 2
    assert (seen["steps"], seen["m"]) == (7, 3)
    assert seen["reference"][0].tolist() == pytest.approx([0.2, 0.6, 0.05])


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ([], "dataset 'folder' needs root=FOLDER"),  # … and which flag gives it
        (["--data-root", "ROOT", "--data-option", "root=/elsewhere"], "not both"),
        (["--data-root", "ROOT", "--data-option", "colour=1"], "takes no option 'colour'"),
        (["--data-root", "ROOT", "--n-eval", "20"], "the audit needs at least 30 clean images"),
        (["--data-root", "ROOT", "--denoiser", "nope.safetensors"], "--denoiser: denoiser file not found"),
        (["--data-root", "ROOT", "--denoiser", "EVIL"], "refused"),
        (["--data-root", "ROOT", "--data-option", "channels=1"], "model expects 3×12×12"),
        (["--data-root", "ROOT", "--reference", "nope.json"], "--reference: audit summary not found"),
        (["--data-root", "ROOT", "--reference", "BADREF"], "is not an audit summary with a success_percent"),
        (["--data-root", "ROOT", "--reference", "REF2"], "holds success rates toward 2 classes"),
    ],
)
def test_audit_data_errors_are_one_line(tmp_path, audit_files, flags, needle, capsys):
    import torch

    model, _, images = audit_files
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1)}, evil)
    bad_ref, ref2 = tmp_path / "bad.json", tmp_path / "two.json"
    bad_ref.write_text("{not json")
    ref2.write_text(json.dumps({"success_percent": [[50.0, 20.0]]}))
    files = {"ROOT": str(images), "EVIL": str(evil), "BADREF": str(bad_ref), "REF2": str(ref2)}
    flags = [files.get(f, f) for f in flags]
    argv = ["--home", str(tmp_path), "audit", str(model), "--data", "folder", "--n-images", "10"]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err
    if not flags:
        assert "--data-root PATH" in err
    if "20" in flags:
        assert "--n-images 10, --n-eval 20" in err
