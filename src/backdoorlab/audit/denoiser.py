"""Train, save and load the DnCNN denoiser of Denoised Smoothing, and compose it with a classifier.

Sun et al. (§3.1, Eq. 4) robustify a poisoned classifier ``f`` by prepending a denoiser ``D`` and smoothing
``f ∘ D``. The denoiser is a DnCNN trained with the MSE objective of Salman et al. (2020):
``MSE(D(x + σ·N(0, I)), x)`` with fresh noise every batch, Adam (weight decay 1e-4) and the learning rate ×0.1
every 30 epochs (REFERENCE_NOTES "000"). The noisy input is not clipped to [0, 1], as in the authors' code. A
denoiser is trained once per data set and σ; :func:`save_denoiser` writes safetensors with the spec and σ in
the metadata, and :func:`load_denoiser` never unpickles.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save as st_save
from torch import nn

from backdoorlab.data.tensors import ImageTensors, make_generator
from backdoorlab.errors import BackdoorLabError, UnsafeFileError
from backdoorlab.fileio import write_atomic
from backdoorlab.models.dncnn import DnCNN
from backdoorlab.models.io import HEADER_KEY, read_safetensors, state_dict_hash
from backdoorlab.training import TrainRecipe, fit, resolve_device

Progress = Callable[[int, int, dict], None]

FORMAT = "backdoorlab-denoiser"
FORMAT_VERSION = 1
LR_STEP_EPOCHS = 30  # Salman et al.'s denoiser schedule: ×0.1 every 30 epochs
LR_GAMMA = 0.1


def _check_sigma(sigma: object) -> float:
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, (int, float))
        or not math.isfinite(sigma)
        or sigma <= 0
    ):
        raise BackdoorLabError(
            f"sigma must be a finite noise level > 0 on the [0, 1] pixel scale (e.g. 0.25, 0.5, 1.0), got {sigma!r}"
        )
    return float(sigma)


def _as_images(clean: ImageTensors | torch.Tensor) -> ImageTensors:
    """Clean images as an :class:`ImageTensors` (labels are irrelevant to the denoiser: all 0)."""
    if isinstance(clean, ImageTensors):
        return clean
    if not isinstance(clean, torch.Tensor):
        raise BackdoorLabError(
            f"clean must be an ImageTensors or an N×C×H×W tensor of [0, 1] images, got {type(clean).__name__}"
        )
    if clean.dtype != torch.uint8:
        clean = clean.float()
        if clean.numel() and (float(clean.min()) < 0 or float(clean.max()) > 1):
            raise BackdoorLabError("clean images must be float pixels in [0, 1] (or uint8 0–255)")
    return ImageTensors(clean.detach(), torch.zeros(len(clean), dtype=torch.long), ("image",), name="clean")


def denoising_objective(sigma: float, seed: int | None = 0) -> Callable:
    """The denoiser training objective for :func:`backdoorlab.training.fit`: ``MSE(D(x + σ·n), x)``, n ~ N(0, I).

    Fresh noise is drawn every batch from a generator seeded ``seed`` on the batch's device (created on the
    first batch), so training is deterministic for a seed on a given device. Labels are ignored.
    """
    sigma = _check_sigma(sigma)
    state: dict[str, torch.Generator] = {}

    def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = state.get("gen")
        if gen is None or gen.device != x.device:
            gen = state["gen"] = torch.Generator(device=x.device)
            gen.manual_seed(0 if seed is None else int(seed))
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return F.mse_loss(model(x + sigma * noise), x)

    return objective


def train_denoiser(
    clean: ImageTensors | torch.Tensor,
    sigma: float,
    *,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    depth: int = 17,
    width: int = 64,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
) -> DnCNN:
    """Train a DnCNN to remove N(0, σ²I) noise from ``clean`` images (Salman et al. 2020, as Sun et al. A.2).

    Objective ``MSE(D(x + σ·N(0, I)), x)`` with fresh noise every batch; Adam(``lr``, ``weight_decay``); lr ×0.1
    every 30 epochs. ``clean`` is an :class:`ImageTensors` (labels ignored) or an ``N×C×H×W`` tensor of [0, 1]
    floats or uint8. ``seed`` fixes the initialisation, batch order and noise. Returns the denoiser in eval
    mode with ``.sigma`` set and the per-epoch history (loss = training MSE, images/s) in ``.history``.
    ``progress(step, total, info)`` is called after every batch.
    """
    sigma = _check_sigma(sigma)
    data = _as_images(clean)
    if len(data) == 0:
        raise BackdoorLabError("clean has no images; the denoiser needs clean images of the data set")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise BackdoorLabError(f"epochs must be an integer ≥ 1, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BackdoorLabError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if (
            not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
            or (name == "lr" and value == 0)
        ):
            raise BackdoorLabError(
                f"{name} must be a finite number {'> 0' if name == 'lr' else '≥ 0'}, got {value!r}"
            )
    denoiser = DnCNN(channels=data.shape[0], depth=depth, width=width)
    denoiser.reset_parameters(make_generator(seed))
    recipe = TrainRecipe(
        epochs=epochs,
        batch_size=batch_size,
        optimizer="adam",
        lr=float(lr),
        weight_decay=float(weight_decay),
        schedule="step",
        step_size=LR_STEP_EPOCHS,
        gamma=LR_GAMMA,
    )
    history = fit(
        denoiser,
        data,
        recipe,
        objective=denoising_objective(sigma, seed + 1),
        seed=seed,
        device=resolve_device(device),
        progress=progress,
    )
    denoiser.sigma = sigma
    denoiser.history = history
    return denoiser.eval()


@torch.no_grad()
def denoising_mse(
    denoiser: nn.Module | None,
    clean: ImageTensors | torch.Tensor,
    sigma: float,
    *,
    seed: int = 0,
    batch_size: int = 256,
) -> float:
    """Mean squared error ``‖D(x + σ·n) − x‖²`` per pixel on ``clean`` (``denoiser=None``: the noisy input itself).

    The noise is drawn from ``seed``, so two denoisers are compared on the same noisy images. PSNR in dB on
    [0, 1] pixels is ``−10·log10(mse)``.
    """
    sigma = _check_sigma(sigma)
    data = _as_images(clean)
    dev = next(denoiser.parameters()).device if denoiser is not None else data.device
    gen = torch.Generator().manual_seed(int(seed))
    was_training = denoiser.training if denoiser is not None else False
    if denoiser is not None:
        denoiser.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(data), batch_size):
            x = data.float01(slice(start, start + batch_size)).to(dev)
            noisy = x + sigma * torch.randn(x.shape, generator=gen).to(dev)
            out = noisy if denoiser is None else denoiser(noisy)
            total += float(((out - x) ** 2).sum())
            count += x.numel()
    finally:
        if denoiser is not None:
            denoiser.train(was_training)
    return total / max(count, 1)


# -- files ---------------------------------------------------------------------------------------------------
def save_denoiser(model: DnCNN, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Save a :class:`DnCNN` as safetensors with its spec, σ, weights sha256 and ``extra`` in the metadata."""
    if not isinstance(model, DnCNN):
        raise BackdoorLabError(f"model must be a DnCNN denoiser, got {type(model).__name__}")
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": model.spec,
        "sigma": model.sigma,
        "sha256": state_dict_hash(state),
        "extra": dict(extra or {}),
    }
    try:
        text = json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BackdoorLabError(f"extra must be a JSON-able dict (str keys, plain values): {exc}") from exc
    write_atomic(path, st_save(state, metadata={HEADER_KEY: text}))
    return path


def load_denoiser(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> DnCNN:
    """Load a file written by :func:`save_denoiser` (eval mode, ``.sigma`` and ``.extra`` restored, ``.source``
    the path it came from).

    Pickle / ``torch.save`` checkpoints, corrupt files, a missing or foreign header (e.g. a classifier file)
    and weights whose sha256 differs from the header are refused with :class:`UnsafeFileError`.
    """
    path = Path(path)
    tensors, meta = read_safetensors(path)
    try:
        header = json.loads(meta[HEADER_KEY])
    except (KeyError, ValueError):
        raise UnsafeFileError(f"refused {path}: not a backdoorlab denoiser file (no valid header)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise UnsafeFileError(
            f"refused {path}: not a backdoorlab denoiser file (header format {header.get('format') if isinstance(header, dict) else None!r}); "
            "classifiers load with backdoorlab.models.load_model"
        )
    digest = state_dict_hash(tensors)
    if digest != header.get("sha256"):
        raise UnsafeFileError(
            f"refused {path}: weights sha256 {digest[:12]}… does not match the header (modified or corrupted)"
        )
    spec = header.get("spec")
    try:
        model = DnCNN(channels=spec["channels"], depth=spec["depth"], width=spec["width"])
        model.load_state_dict(tensors, strict=True)
    except (TypeError, KeyError, BackdoorLabError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeFileError(
            f"refused {path}: weights do not fit the DnCNN spec {spec!r}: {first}"
        ) from None
    sigma = header.get("sigma")
    model.sigma = None if sigma is None else float(sigma)
    model.extra = dict(header.get("extra") or {})
    model.source = str(path)
    return model.to(map_location).eval()


# -- composition ---------------------------------------------------------------------------------------------
class Denoised(nn.Module):
    """``f ∘ D``: the classifier applied to the denoiser's output, as one module (Sun et al. Eq. 4).

    The denoiser output is fed to the classifier unclipped, as in Salman et al.'s ``Sequential(denoiser, clf)``.
    Gradients flow through both (SmoothAdv differentiates ``f(D(x + δ + noise))`` w.r.t. δ). ``spec`` is the
    classifier's, so shape checks see the classifier's input shape.
    """

    def __init__(self, model: nn.Module, denoiser: nn.Module) -> None:
        super().__init__()
        for name, m in (("model", model), ("denoiser", denoiser)):
            if not isinstance(m, nn.Module):
                raise BackdoorLabError(f"{name} must be a torch nn.Module, got {type(m).__name__}")
        self.model = model
        self.denoiser = denoiser
        self.training = model.training  # a fresh Module says True; restoring that would put f in train mode

    @property
    def spec(self) -> dict | None:
        return getattr(self.model, "spec", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.denoiser(x))


def denoised(model: nn.Module, denoiser: nn.Module) -> nn.Module:
    """The denoised classifier ``f ∘ D`` of Sun et al. Eq. 4 (Salman et al. 2020) as one module."""
    return Denoised(model, denoiser)


__all__ = [
    "Denoised",
    "denoised",
    "denoising_mse",
    "denoising_objective",
    "load_denoiser",
    "save_denoiser",
    "train_denoiser",
]
