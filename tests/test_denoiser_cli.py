"""``backdoorlab denoiser train``: a DnCNN file for ``audit --denoiser`` (Sun et al. App. A.2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backdoorlab.audit.denoiser import load_denoiser
from backdoorlab.cli import main
from backdoorlab.errors import BackdoorLabError
from backdoorlab.training import resolve_device

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_writes_a_denoiser_the_audit_can_load(tmp_path: Path, capsys) -> None:
    out = tmp_path / "den.safetensors"
    argv = ["denoiser", "train", "--data", "mnist5k", "--out", str(out), "--depth", "3", "--width", "8"]
    assert (
        main(["--home", str(tmp_path), *argv, "--max-images", "200", "--epochs", "1", "--sigma", "0.25"]) == 0
    )
    printed = capsys.readouterr().out
    assert f"wrote {out}: DnCNN 3×8, σ 0.25, 200 images × 1 epoch(s)" in printed
    assert f"--denoiser {out}" in printed
    den = load_denoiser(out)
    assert den.sigma == 0.25 and den.spec["depth"] == 3 and den.spec["width"] == 8
    extra = den.extra
    assert extra["images"] == 200 and extra["epochs"] == 1
    assert extra["test_mse_denoised"] < extra["test_mse_noisy"]  # training removed some of the noise


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--sigma", "0"], "--sigma: sigma must be a finite noise level > 0"),
        (["--depth", "2"], "--depth: a DnCNN needs at least 3 layers"),
        (["--width", "0"], "--width: width must be an integer ≥ 1"),
        (["--epochs", "0"], "--epochs: epochs must be an integer ≥ 1"),
        (["--max-images", "-1"], "--max-images: max_images must be an integer ≥ 1"),
        (["--out", "den.pt"], "--out: den.pt must end in .safetensors"),
        (["--data", "cifar10"], "give the folder with --data-root PATH"),
        (["--data-option", "size"], "--data-option 'size': write it as key=value"),
    ],
)
def test_bad_flags_are_one_line_errors_and_write_nothing(tmp_path: Path, flags, needle, capsys) -> None:
    argv = ["denoiser", "train", "--data", "mnist5k", "--out", str(tmp_path / "den.safetensors"), *flags]
    if "--out" in flags:
        argv = [a if a != "den.pt" else str(tmp_path / "den.pt") for a in argv]
    assert main(["--home", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err
    assert not list(tmp_path.glob("den*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_a_named_error() -> None:
    with pytest.raises(BackdoorLabError, match="'cuda' is not available on this machine"):
        resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"
