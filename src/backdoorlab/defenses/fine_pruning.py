"""Fine-Pruning (Liu, Dolan-Gavitt & Garg, RAID 2018), as Li et al. (2020, §5.1) run it.

Backdoor neurons tend to lie *dormant* on clean inputs and fire on the trigger. Fine-Pruning therefore

1. measures the mean activation of every channel of the last convolutional layer (VGG) or the last
   convolutional block (ResNet stage) on clean data (:func:`channel_activations`),
2. prunes channels in *ascending* order of that mean activation (:func:`pruning_order`, :func:`prune`), and
3. optionally fine-tunes the pruned network on clean data.

Pruning here is *masking*: a forward hook on the layer multiplies its output by a 0/1 per-channel mask, so
any layer (a ReLU after a conv, a BatchNorm, a whole residual stage) can be pruned and the weights are left
untouched. The mask is a non-persistent buffer on the hooked module, so it follows ``.to(device)`` and
``copy.deepcopy`` but is not part of ``state_dict`` (a saved pruned model loads as the unpruned
architecture; keep :attr:`FinePruningResult.order` and :attr:`FinePruningResult.pruned` and re-apply
:func:`prune`).

Li et al.'s protocol (:class:`FinePruning`): the test set is split into two disjoint halves, a validation
half on which the pruning fraction is chosen by grid search and a test half on which results are reported.
They dropped the fine-tuning step because even one epoch re-activated the backdoor; ``finetune`` is off by
default here for the same reason.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from backdoorlab.data.loader import Batches
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics import accuracy, attack_success_rate
from backdoorlab.training import fit

if TYPE_CHECKING:
    from backdoorlab.attacks.base import Attack
    from backdoorlab.training import TrainRecipe

MASK_BUFFER = "prune_mask"
DEFAULT_FRACTIONS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(20))  # 0.0 .. 0.95
DEFAULT_MAX_ACC_DROP = 0.10

_HINT_TYPES = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.LeakyReLU, nn.Sequential, nn.MaxPool2d)


# -- layers --------------------------------------------------------------------------------------------------
def _layer_hints(model: nn.Module, limit: int = 8) -> list[str]:
    """Some module names worth pruning (conv-like layers, activations, blocks), the deepest last."""
    names = [name for name, m in model.named_modules() if name and isinstance(m, _HINT_TYPES)]
    return names[-limit:] if len(names) > limit else names


def resolve_layer(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module]:
    """``(name, module)`` of ``layer`` in ``model``; ``None`` means the model's ``last_conv_layer``."""
    if layer is None:
        layer = getattr(model, "last_conv_layer", None)
        if not isinstance(layer, str):
            hints = ", ".join(_layer_hints(model)) or "none found"
            raise BackdoorLabError(
                f"{type(model).__name__} has no last_conv_layer attribute; pass layer=, e.g. one of: {hints}"
            )
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        module = None
    if module is None or layer == "":
        hints = ", ".join(_layer_hints(model)) or "none found"
        raise BackdoorLabError(
            f"layer {layer!r} is not a module of this {type(model).__name__}; e.g. {hints}"
        )
    return layer, module


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _check_output(layer: str, out: object) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.ndim < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BackdoorLabError(
            f"layer {layer!r} outputs {shape}, not an N×C(×H×W) tensor; choose a conv layer or block"
        )
    return out


# -- activations ---------------------------------------------------------------------------------------------
@torch.no_grad()
def channel_activations(
    model: nn.Module, layer: str | None, data: ImageTensors, batch_size: int = 256
) -> torch.Tensor:
    """Mean activation of each channel of ``layer``'s output over ``data`` (Liu et al. §3.2), a CPU ``[C]``.

    For an ``N×C×H×W`` output the mean is over images and positions; for ``N×C`` over images. ``layer``
    ``None`` is the model's ``last_conv_layer`` (the post-activation last feature map, or a ResNet's last
    stage). The model runs in eval mode; an installed pruning mask is applied first (pruned channels read 0).
    """
    name, module = resolve_layer(model, layer)
    if len(data) == 0:
        raise BackdoorLabError("channel activations need at least one clean image")
    total: list[torch.Tensor] = []
    count = [0]

    def hook(_module: nn.Module, _args: object, out: object) -> None:
        out = _check_output(name, out)
        dims = [d for d in range(out.ndim) if d != 1]
        s = out.detach().double().sum(dim=dims)
        if total:
            total[0] += s
        else:
            total.append(s)
        count[0] += out.numel() // out.shape[1]

    handle = module.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        for x, _ in Batches(data, batch_size, device=_device(model)):
            model(x)
    finally:
        handle.remove()
        model.train(was_training)
    if not total:
        raise BackdoorLabError(f"layer {name!r} was never called in the model's forward pass; choose another")
    return (total[0] / count[0]).float().cpu()


def pruning_order(activations: torch.Tensor) -> torch.Tensor:
    """Channel indices in ascending order of mean clean activation (most dormant first), ties by index."""
    return torch.sort(activations.detach().cpu(), stable=True).indices


# -- masking -------------------------------------------------------------------------------------------------
def _apply_mask(module: nn.Module, _args: object, out: torch.Tensor) -> torch.Tensor:
    """Forward hook: multiply channel ``c`` of the output by ``module.prune_mask[c]``."""
    mask = getattr(module, MASK_BUFFER)
    shape = (1, -1) + (1,) * (out.ndim - 2)
    return out * mask.to(out.dtype).view(shape)


def set_pruned(model: nn.Module, layer: str | None, order: Sequence[int] | torch.Tensor, n: int) -> nn.Module:
    """Mask the first ``n`` channels of ``order`` at ``layer`` of ``model`` *in place* and return it.

    Installs the masking hook on first use; later calls only rewrite the mask (so a grid search reuses one
    copy). ``n = 0`` keeps every channel.
    """
    name, module = resolve_layer(model, layer)
    order_t = torch.as_tensor(order, dtype=torch.long).flatten().cpu()
    channels = len(order_t)
    if channels == 0 or sorted(order_t.tolist()) != list(range(channels)):
        raise BackdoorLabError(
            f"pruning order must be a permutation of the layer's channels 0..C-1, got {len(order_t)} indices"
        )
    if isinstance(n, bool) or not 0 <= int(n) <= channels:
        raise BackdoorLabError(f"number of pruned channels must lie in 0..{channels}, got {n}")
    mask = torch.ones(channels)
    mask[order_t[: int(n)]] = 0.0
    existing = getattr(module, MASK_BUFFER, None)
    if isinstance(existing, torch.Tensor):
        if existing.numel() != channels:
            raise BackdoorLabError(
                f"layer {name!r} already has a {existing.numel()}-channel pruning mask; order has {channels}"
            )
        existing.copy_(mask.to(existing.device))
        return model
    module.register_buffer(MASK_BUFFER, mask.to(_device(model)), persistent=False)
    module.register_forward_hook(_apply_mask)
    return model


def prune(model: nn.Module, layer: str | None, order: Sequence[int] | torch.Tensor, n: int) -> nn.Module:
    """A deep copy of ``model`` whose ``layer`` output has the first ``n`` channels of ``order`` zeroed.

    The weights are unchanged; the mask is applied by a forward hook and stored as the non-persistent
    buffer ``prune_mask`` of the hooked module (it survives ``deepcopy`` and ``.to``).
    """
    return set_pruned(copy.deepcopy(model), layer, order, n)


def pruning_mask(model: nn.Module, layer: str | None = None) -> torch.Tensor | None:
    """The 0/1 channel mask installed at ``layer`` (``None`` if that layer is not pruned)."""
    _, module = resolve_layer(model, layer)
    mask = getattr(module, MASK_BUFFER, None)
    return mask.detach().clone().cpu() if isinstance(mask, torch.Tensor) else None


# -- grid search ---------------------------------------------------------------------------------------------
def check_fractions(fractions: Sequence[float] | None) -> tuple[float, ...]:
    """Validate a grid of pruning fractions (each in [0, 1)); ``None`` is 0.0, 0.05, …, 0.95."""
    if fractions is None:
        return DEFAULT_FRACTIONS
    out = []
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0.0 <= float(f) < 1.0:
            raise BackdoorLabError(f"pruning fractions must lie in [0, 1), got {f!r}")
        out.append(float(f))
    if not out:
        raise BackdoorLabError("pruning fractions must not be empty, e.g. [0.0, 0.05, …, 0.95]")
    return tuple(sorted(set(out)))


def _n_pruned(fraction: float, channels: int) -> int:
    return min(int(fraction * channels + 1e-9), channels - 1)


def evaluate_pruning_curve(
    model: nn.Module,
    data: ImageTensors,
    layer: str | None = None,
    fractions: Sequence[float] | None = None,
    attack: Attack | None = None,
    order: Sequence[int] | torch.Tensor | None = None,
    batch_size: int = 512,
    seed: int = 0,
) -> list[dict]:
    """Clean accuracy (and ASR of ``attack``) on ``data`` after pruning each fraction of ``layer``'s channels.

    ``order`` defaults to the ascending mean activation on ``data``. Each row is ``{"fraction", "pruned",
    "accuracy"}`` plus ``"asr"`` when an attack is given; fractions that prune the same number of channels
    are evaluated once.
    """
    grid = check_fractions(fractions)
    name, _ = resolve_layer(model, layer)
    if order is None:
        order = pruning_order(channel_activations(model, name, data, batch_size))
    order_t = torch.as_tensor(order, dtype=torch.long).flatten()
    work = prune(model, name, order_t, 0)
    cache: dict[int, dict] = {}
    curve = []
    for f in grid:
        n = _n_pruned(f, len(order_t))
        if n not in cache:
            set_pruned(work, name, order_t, n)
            row = {"accuracy": accuracy(work, data, batch_size)}
            if attack is not None:
                row["asr"] = attack_success_rate(work, data, attack, batch_size, seed=seed)
            cache[n] = row
        curve.append({"fraction": f, "pruned": n, **cache[n]})
    return curve


@dataclass(eq=False)
class FinePruningResult:
    """What :meth:`FinePruning.repair` found: the repaired model, the choice and the evidence for it."""

    model: nn.Module  # the pruned (and possibly fine-tuned) copy
    layer: str
    fraction: float  # the chosen pruning fraction
    pruned: int  # channels masked
    channels: int  # channels in the layer
    order: torch.Tensor  # channel indices, most dormant first
    activations: torch.Tensor  # mean clean activation per channel (validation half)
    curve: list[dict]  # per fraction: fraction, pruned, accuracy (validation), asr (validation, with attack)
    baseline_accuracy: float  # unpruned validation accuracy
    rule: str  # "min-asr" (Li's grid search with an attack) or "max-prune" (Liu's defender rule)
    validation: ImageTensors = field(repr=False)  # the half used to choose
    test: ImageTensors = field(repr=False)  # the disjoint half to report on
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)  # fine-tuning history, if any

    @property
    def chosen(self) -> dict | None:
        """The curve row of the chosen fraction (``None`` if no grid fraction qualified and nothing was pruned)."""
        return next((row for row in self.curve if row["fraction"] == self.fraction), None)

    def to_dict(self) -> dict:
        """The JSON-able summary (no model, no data)."""
        return {
            "layer": self.layer,
            "fraction": self.fraction,
            "pruned": self.pruned,
            "channels": self.channels,
            "order": self.order.tolist(),
            "baseline_accuracy": self.baseline_accuracy,
            "rule": self.rule,
            "curve": self.curve,
            "validation_size": len(self.validation),
            "test_size": len(self.test),
            "seconds": self.seconds,
        }


class FinePruning:
    """Fine-Pruning as a model-repair defence (Liu et al. 2018; protocol of Li et al. 2020, §5.1).

    ``layer`` is the module to prune (default: the model's ``last_conv_layer``, i.e. the last conv feature
    map of VGG or the last residual stage of ResNet). ``fractions`` is the grid (default 0.0 to 0.95 in
    steps of 0.05). The fraction is chosen on the validation half by one of two rules:

    * **with an attack** (Li et al.'s grid search, which knows the trigger): the fraction with the lowest
      validation ASR among those whose validation accuracy is at most ``max_acc_drop`` (absolute, default
      0.10) below the unpruned model's; ties go to higher accuracy, then fewer pruned channels.
    * **without an attack** (the realistic defender, Liu et al.'s rule): prune in increasing fractions and
      stop before the first one whose validation accuracy drops more than ``max_acc_drop``.

    ``finetune`` (a :class:`~backdoorlab.training.TrainRecipe`) fine-tunes the pruned model on the
    validation half afterwards; Li et al. removed this step because it re-activated the backdoor, so the
    default is ``None``. ``seed`` fixes the split, the ASR triggers and the fine-tuning order.
    """

    def __init__(
        self,
        layer: str | None = None,
        fractions: Sequence[float] | None = None,
        max_acc_drop: float | None = None,
        finetune: TrainRecipe | None = None,
        seed: int = 0,
        batch_size: int = 512,
    ) -> None:
        self.layer = layer
        self.fractions = check_fractions(fractions)
        drop = DEFAULT_MAX_ACC_DROP if max_acc_drop is None else max_acc_drop
        if isinstance(drop, bool) or not isinstance(drop, int | float) or not 0.0 <= float(drop) <= 1.0:
            raise BackdoorLabError(
                f"max_acc_drop must lie in [0, 1] (absolute accuracy), got {max_acc_drop!r}"
            )
        self.max_acc_drop = float(drop)
        self.finetune = finetune
        self.seed = int(seed)
        if batch_size < 1:
            raise BackdoorLabError(f"batch_size must be ≥ 1, got {batch_size}")
        self.batch_size = batch_size

    def split(self, clean: ImageTensors) -> tuple[ImageTensors, ImageTensors]:
        """Li et al.'s two disjoint halves of the test set: ``(validation, test)``, seeded and stratified."""
        if len(clean) < 2:
            raise BackdoorLabError(f"fine-pruning needs at least 2 clean images to split, got {len(clean)}")
        test, validation = clean.split(0.5, seed=self.seed, stratified=True)
        return validation, test

    def repair(
        self,
        model: nn.Module,
        clean: ImageTensors,
        validation: ImageTensors | None = None,
        attack: Attack | None = None,
    ) -> FinePruningResult:
        """Prune ``model`` (a copy; the original is untouched) and return the result.

        With ``validation`` ``None``, ``clean`` (the test set) is split into a validation half, used for the
        activations and the grid search, and a disjoint test half (``result.test``) to report on. With a
        ``validation`` set, that is used and ``clean`` is the test half.
        """
        t0 = time.perf_counter()
        if validation is None:
            validation, test = self.split(clean)
        else:
            test = clean
        if len(validation) == 0:
            raise BackdoorLabError("fine-pruning needs a non-empty validation set")
        name, _ = resolve_layer(model, self.layer)
        activations = channel_activations(model, name, validation, self.batch_size)
        order = pruning_order(activations)
        channels = len(order)
        curve = evaluate_pruning_curve(
            model, validation, name, self.fractions, attack, order, self.batch_size, self.seed
        )
        baseline = next((row["accuracy"] for row in curve if row["pruned"] == 0), None)
        if baseline is None:
            baseline = accuracy(model, validation, self.batch_size)
        floor = baseline - self.max_acc_drop - 1e-9
        if attack is not None:
            rule = "min-asr"
            eligible = [row for row in curve if row["accuracy"] >= floor]
            best = min(eligible, key=lambda r: (r["asr"], -r["accuracy"], r["pruned"]), default=None)
        else:
            rule = "max-prune"
            best = None
            for row in curve:
                if row["accuracy"] < floor:
                    break
                best = row
        fraction, n = (best["fraction"], best["pruned"]) if best is not None else (0.0, 0)
        repaired = prune(model, name, order, n)
        history: list[dict] = []
        if self.finetune is not None:
            history = fit(repaired, validation, self.finetune, seed=self.seed, device=_device(repaired))
        return FinePruningResult(
            model=repaired,
            layer=name,
            fraction=fraction,
            pruned=n,
            channels=channels,
            order=order,
            activations=activations,
            curve=curve,
            baseline_accuracy=baseline,
            rule=rule,
            validation=validation,
            test=test,
            seconds=time.perf_counter() - t0,
            history=history,
        )
