"""Auto-encoder input purification (Liu, Xie & Srivastava 2017, "Neural Trojans"; Li et al. 2020, §5.1).

An auto-encoder trained to reconstruct *clean* images is placed in front of the classifier; its bottleneck
keeps the content of a natural image but smooths away out-of-distribution detail such as a trigger patch.
Li et al. train a convolutional auto-encoder for 100 epochs with learning rate 0.001 and batch size 16,
the defaults here (Adam on the pixel MSE).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError
from backdoorlab.models.autoencoder import ConvAutoEncoder
from backdoorlab.training import Progress, TrainRecipe, fit, resolve_device


def reconstruction_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training objective: mean squared error between the reconstruction and the input (labels unused)."""
    return F.mse_loss(model(x), x)


class Purified(nn.Module):
    """``model(autoencoder(x))``: a classifier behind an input-purifying auto-encoder, usable with metrics."""

    def __init__(self, autoencoder: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.autoencoder(x))


class AutoEncoderDefense:
    """Train a :class:`~backdoorlab.models.autoencoder.ConvAutoEncoder` on clean images; reconstruct inputs.

    ``fit(clean)`` trains it (MSE, Adam, ``lr`` and ``batch_size`` per Li et al.), ``transform(x)`` returns
    the reconstruction of a [0, 1] batch and ``wrap(model)`` puts the auto-encoder in front of a classifier.
    ``seconds`` is the training wall time and ``history`` the per-epoch losses.
    """

    def __init__(
        self,
        epochs: int = 100,
        lr: float = 1e-3,
        batch_size: int = 16,
        width: int = 32,
        latent: int = 16,
        seed: int = 0,
        device: str | torch.device | None = "auto",
    ) -> None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise BackdoorLabError(f"auto-encoder epochs must be an integer ≥ 0, got {epochs!r}")
        if not isinstance(lr, int | float) or not lr > 0:
            raise BackdoorLabError(f"auto-encoder lr must be > 0, got {lr!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BackdoorLabError(f"auto-encoder batch_size must be ≥ 1, got {batch_size!r}")
        self.epochs = epochs
        self.lr = float(lr)
        self.batch_size = batch_size
        self.width = width
        self.latent = latent
        self.seed = int(seed)
        self.device = device
        self.autoencoder: ConvAutoEncoder | None = None
        self.history: list[dict] = []
        self.seconds = 0.0

    def fit(self, clean: ImageTensors, progress: Progress | None = None) -> AutoEncoderDefense:
        """Train a fresh auto-encoder on ``clean`` (labels unused) and return ``self``."""
        if len(clean) == 0:
            raise BackdoorLabError("the auto-encoder needs at least one clean image to train on")
        c, h, w = clean.shape
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG left as it was
            torch.manual_seed(self.seed)
            ae = ConvAutoEncoder(c, (h, w), width=self.width, latent=self.latent)
        recipe = TrainRecipe(
            epochs=self.epochs,
            batch_size=self.batch_size,
            optimizer="adam",
            lr=self.lr,
            channels_last=False,
        )
        t0 = time.perf_counter()
        self.history = fit(
            ae,
            clean,
            recipe,
            objective=reconstruction_loss,
            seed=self.seed,
            device=resolve_device(self.device),
            progress=progress,
        )
        self.seconds = time.perf_counter() - t0
        ae.eval()
        self.autoencoder = ae
        return self

    def _fitted(self) -> ConvAutoEncoder:
        if self.autoencoder is None:
            raise BackdoorLabError("the auto-encoder defence is not fitted; call fit(clean) first")
        return self.autoencoder

    @torch.no_grad()
    def transform(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """The reconstruction of a [0, 1] batch (same shape, device and range), in eval mode without grad."""
        ae = self._fitted()
        was_training = ae.training
        ae.eval()
        dev = next(ae.parameters()).device
        try:
            out = [ae(x[i : i + batch_size].to(dev)).to(x.device) for i in range(0, len(x), batch_size)]
        finally:
            ae.train(was_training)
        return torch.cat(out) if out else x.clone()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x)

    def wrap(self, model: nn.Module) -> Purified:
        """A module computing ``model(autoencoder(x))`` (the auto-encoder in eval mode, on ``model``'s device)."""
        ae = self._fitted()
        dev = next(model.parameters()).device
        ae.to(dev).eval()
        return Purified(ae, model)
