"""Evaluation metrics: clean accuracy, attack success rate, per-class accuracy, confusion matrix.

ASR follows Li et al. Eq. 3: the fraction of *triggered* test images classified as the attack's target,
over the test images whose true label is not the target (an all-to-all or source-specific attack says
which images count through its ``victim_mask``). Peers differ here (some count target-class images, which
inflates ASR by about 1/K); reports state the convention.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from backdoorlab.data.loader import Batches
from backdoorlab.data.tensors import ImageTensors, make_generator
from backdoorlab.errors import BackdoorLabError

if TYPE_CHECKING:  # metrics sit below attacks in the layering; only the protocol's type is needed
    from backdoorlab.attacks.base import Attack

ASR_CONVENTION = (
    "ASR = share of triggered test images classified as the target, over test images whose true label "
    "is not the target class (Li et al. Eq. 3); target-class images are excluded."
)


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    x: torch.Tensor | ImageTensors,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Logits of ``model`` on a [0, 1] batch tensor or on a whole dataset, in eval mode, batched."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device if device is None else torch.device(device)
    out = []
    try:
        if isinstance(x, ImageTensors):
            for xb, _ in Batches(x, batch_size, device=dev):
                out.append(model(xb).float())
        else:
            for start in range(0, len(x), batch_size):
                out.append(model(x[start : start + batch_size].to(dev)).float())
    finally:
        model.train(was_training)
    if not out:
        return torch.empty(0)
    return torch.cat(out)


def predictions(model: torch.nn.Module, data: ImageTensors, batch_size: int = 512) -> torch.Tensor:
    """Predicted labels for every image of ``data`` (CPU int64)."""
    return predict_logits(model, data, batch_size).argmax(1).cpu()


def accuracy(model: torch.nn.Module, data: ImageTensors, batch_size: int = 512) -> float:
    """Top-1 accuracy on clean ``data``."""
    if len(data) == 0:
        return float("nan")
    return float((predictions(model, data, batch_size) == data.labels.cpu()).float().mean())


@torch.no_grad()
def attack_success_rate(
    model: torch.nn.Module,
    data: ImageTensors,
    attack: Attack,
    batch_size: int = 512,
    seed: int | torch.Generator | None = 0,
) -> float:
    """ASR of ``attack`` on ``data`` as Li et al. Eq. 3 (target-class images excluded)."""
    keep = attack.victim_mask(data.labels.cpu())
    victims = data.subset(keep.nonzero().squeeze(1))
    if len(victims) == 0:
        return float("nan")
    gen = make_generator(seed)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits = 0
    try:
        for x, y in Batches(victims, batch_size, device=dev):
            pred = model(attack.apply_trigger(x, gen)).argmax(1)
            hits += int((pred == attack.target_labels(y)).sum())
    finally:
        model.train(was_training)
    return hits / len(victims)


def per_class_accuracy(model: torch.nn.Module, data: ImageTensors, batch_size: int = 512) -> list[float]:
    """Accuracy on each class (NaN for a class with no images)."""
    return per_class_from_confusion(confusion_matrix(model, data, batch_size))


def per_class_from_confusion(cm: torch.Tensor) -> list[float]:
    """Per-class accuracy from a ``K×K`` confusion matrix (NaN for a class with no images)."""
    totals = cm.sum(1)
    return [float(cm[c, c] / totals[c]) if totals[c] else float("nan") for c in range(len(cm))]


def confusion_matrix(model: torch.nn.Module, data: ImageTensors, batch_size: int = 512) -> torch.Tensor:
    """``K×K`` counts: row = true class, column = predicted class."""
    k = data.num_classes
    pred = predictions(model, data, batch_size)
    return torch.bincount(data.labels.cpu() * k + pred, minlength=k * k).reshape(k, k)


# -- detection ------------------------------------------------------------------------------------------
def roc_curve(clean_scores: torch.Tensor, trojan_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ROC of a detector whose score is higher for trojaned inputs (positives): ``(fpr, tpr)`` from (0, 0)
    to (1, 1), one point per distinct score (ties move both rates at once, so the area counts them ½)."""
    neg = clean_scores.detach().double().flatten().cpu()
    pos = trojan_scores.detach().double().flatten().cpu()
    if len(neg) == 0 or len(pos) == 0:
        raise BackdoorLabError("an ROC curve needs at least one clean and one trojaned score")
    s = torch.cat([neg, pos])
    lab = torch.cat([torch.zeros(len(neg)), torch.ones(len(pos))]).double()
    order = torch.argsort(s, descending=True, stable=True)
    s, lab = s[order], lab[order]
    last = torch.cat([(s[1:] != s[:-1]).nonzero().flatten(), torch.tensor([len(s) - 1])])
    tps = lab.cumsum(0)[last]
    fps = (last + 1).double() - tps
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([zero, fps / len(neg)]), torch.cat([zero, tps / len(pos)])


def auroc(fpr: torch.Tensor, tpr: torch.Tensor) -> float:
    """Area under an ROC curve (trapezoids; equals the Mann–Whitney probability with ties counted ½)."""
    return float(torch.trapezoid(tpr, fpr))
