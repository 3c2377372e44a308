"""Training: ``fit(model, data, recipe)`` with a pluggable objective, callbacks, checkpoint and resume.

The loop iterates in-memory tensor batches (:class:`~backdoorlab.data.loader.Batches`), so a step is one
gather, one forward, one backward. An *objective* maps ``(model, x, y)`` to a loss (or ``(loss, logits)``);
plain cross-entropy is the default, and later attacks (adversarial training, AdvTrojan's Eq. 9) plug in
their own. Progress goes to a callback, never to stdout.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_file, save_file

from backdoorlab.data.loader import Augment, Batches
from backdoorlab.data.tensors import ImageTensors, make_generator
from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics import predict_logits

Objective = Callable[
    [torch.nn.Module, torch.Tensor, torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"
]
Progress = Callable[[int, int, dict], None]


class TrainRecipe(BaseModel):
    """Optimiser, schedule, batch size and augmentation of one training run (validated)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(10, ge=0, description="passes over the training set")
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "step", "multistep", "cosine"] = "constant"
    step_size: int = Field(30, ge=1, description="epochs between decays for schedule=step")
    milestones: tuple[int, ...] = Field((), description="epochs at which to decay for schedule=multistep")
    gamma: float = Field(0.1, gt=0, le=1)
    crop_padding: int = Field(0, ge=0, description="pad-and-crop augmentation (pixels)")
    flip: bool = Field(False, description="random horizontal flip augmentation")
    channels_last: bool = Field(True, description="channels-last memory format for conv nets")
    bf16: bool = Field(False, description="bfloat16 autocast (CPU with AVX512-BF16 or CUDA)")
    grad_clip: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> TrainRecipe:
        if self.schedule == "multistep" and not self.milestones:
            raise ValueError("schedule 'multistep' needs milestones, e.g. [40, 60]")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError("milestones must be increasing")
        return self


class Callback(Protocol):
    def __call__(self, epoch: int, logs: dict, model: torch.nn.Module) -> bool | None:
        """Called after each epoch; return True to stop training early."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU; anything else is passed to ``torch.device`` and must
    be present (asking for ``cuda`` on a machine without one is a named error, not a crash mid-run)."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise BackdoorLabError(
            f"device {device!r} is not valid ({exc}); use auto, cpu, cuda or mps"
        ) from None
    mps = getattr(torch.backends, "mps", None)
    if (dev.type == "cuda" and not torch.cuda.is_available()) or (
        dev.type == "mps" and (mps is None or not mps.is_available())
    ):
        raise BackdoorLabError(
            f"device {device!r} is not available on this machine (this PyTorch sees no such GPU); use auto or cpu"
        )
    return dev


def cross_entropy(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The default objective: mean cross-entropy of the model's logits."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits


def make_optimizer(model: torch.nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    """SGD or Adam as the recipe says; the fused kernel where PyTorch has one (CPU, CUDA): one pass per step."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise BackdoorLabError("the model has no trainable parameters (all have requires_grad=False)")
    fused = params[0].device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay, fused=fused
        )
    return torch.optim.SGD(
        params,
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
        fused=fused,
    )


def lr_at(recipe: TrainRecipe, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based) under the recipe's schedule, stepped per epoch."""
    if recipe.schedule == "step":
        return recipe.lr * recipe.gamma ** (epoch // recipe.step_size)
    if recipe.schedule == "multistep":
        return recipe.lr * recipe.gamma ** sum(epoch >= m for m in recipe.milestones)
    if recipe.schedule == "cosine":
        return 0.5 * recipe.lr * (1 + math.cos(math.pi * epoch / max(recipe.epochs, 1)))
    return recipe.lr


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 autocast is fast here (CUDA with bf16, or a CPU with native BF16 instructions)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as fh:
                flags = fh.read()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def _save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Model weights as safetensors, optimiser/RNG state as a weights-only torch file, atomically."""
    path.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_s = path / "model.safetensors.tmp", path / "state.pt.tmp"
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp_w))
    torch.save({"optimizer": opt.state_dict(), **state}, tmp_s)
    os.replace(tmp_w, path / "model.safetensors")
    os.replace(tmp_s, path / "state.pt")


def _load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict | None:
    if not (path / "model.safetensors").is_file() or not (path / "state.pt").is_file():
        return None
    device = next(model.parameters()).device
    model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(device)))
    state = torch.load(path / "state.pt", map_location=device, weights_only=True)
    opt.load_state_dict(state.pop("optimizer"))
    return state


def fit(
    model: torch.nn.Module,
    train: ImageTensors,
    recipe: TrainRecipe | None = None,
    *,
    objective: Objective = cross_entropy,
    val: ImageTensors | None = None,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    callbacks: Sequence[Callback] = (),
    progress: Progress | None = None,
    checkpoint_dir: str | Path | None = None,
    augment_mask: torch.Tensor | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``train`` and return the per-epoch history.

    Each history row holds ``epoch``, ``loss``, ``train_acc`` (when the objective returns logits),
    ``val_acc`` (when ``val`` is given), ``lr``, ``seconds`` and ``images_per_s``. ``seed`` fixes the
    batch order and augmentation, so the same model init, data and seed give the same weights on CPU.
    With ``checkpoint_dir`` the state is saved after every epoch and a later call resumes from it.
    ``progress(step, total_steps, info)`` is called after every batch. ``augment_mask`` (one bool per
    training sample) limits the recipe's augmentation to the flagged samples.
    """
    recipe = recipe or TrainRecipe()
    dev = resolve_device(device)
    model.to(dev)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, recipe)
    gen = make_generator(seed)
    use_bf16 = recipe.bf16 and bf16_supported(dev)
    augment = Augment(recipe.crop_padding, recipe.flip)
    batches = Batches(
        train,
        recipe.batch_size,
        shuffle=True,
        augment=augment,
        device=dev,
        seed=gen,
        channels_last=recipe.channels_last,
        augment_mask=augment_mask,
    )
    history: list[dict] = []
    start_epoch = 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None:
        state = _load_checkpoint(ckpt, model, opt)
        if state is not None:
            start_epoch = int(state["epoch"]) + 1
            history = json.loads(state["history"])
            gen.set_state(state["gen_state"])
    total_steps = recipe.epochs * len(batches)
    step = start_epoch * len(batches)
    for epoch in range(start_epoch, recipe.epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(recipe, epoch)
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        seen = 0
        has_logits = False
        for x, y in batches:
            with _autocast(dev, use_bf16):
                out = objective(model, x, y)
            loss, logits = out if isinstance(out, tuple) else (out, None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            loss_sum += loss.detach().float() * len(y)
            if logits is not None:
                has_logits = True
                correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            step += 1
            if progress is not None:
                progress(step, total_steps, {"epoch": epoch + 1, "epochs": recipe.epochs})
        seconds = time.perf_counter() - t0
        loss_value = float(loss_sum) / max(seen, 1)
        if not math.isfinite(loss_value):
            raise BackdoorLabError(
                f"training diverged at epoch {epoch + 1} (loss {loss_value}); lower the learning rate (lr={recipe.lr})"
            )
        row = {
            "epoch": epoch + 1,
            "loss": loss_value,
            "lr": opt.param_groups[0]["lr"],
            "seconds": seconds,
            "images_per_s": seen / max(seconds, 1e-9),
        }
        if has_logits:
            row["train_acc"] = int(correct) / max(seen, 1)
        if val is not None:
            row["val_acc"] = float(
                (predict_logits(model, val, device=dev).argmax(1).cpu() == val.labels.cpu()).float().mean()
            )
        history.append(row)
        if ckpt is not None:
            _save_checkpoint(
                ckpt,
                model,
                opt,
                {"epoch": epoch, "history": json.dumps(history), "gen_state": gen.get_state()},
            )
        if any(cb(epoch + 1, row, model) for cb in callbacks):
            break
    model.eval()
    if recipe.channels_last:
        model.to(memory_format=torch.contiguous_format)
    return history
