"""Saliency maps of backdoored models (Li et al. 2021, Sec. 5.4, Fig. 10).

Li use the plain input-gradient saliency of Simonyan et al. (2013) through flashtorch: the absolute
gradient of the class logit with respect to the input pixels, maximised over colour channels. On a
backdoored model the saliency of a triggered image concentrates on the trigger; after ShrinkPad it moves
to the object for a standard attack but stays on the trigger for an enhanced one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from matplotlib.figure import Figure

from backdoorlab.errors import BackdoorLabError


def saliency(
    model: torch.nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Input-gradient saliency ``max_c |∂ logit_y / ∂x_c|`` per image, normalised to [0, 1] (N×H×W, CPU).

    ``x`` is N×C×H×W in [0, 1]; ``labels`` are the classes ``y`` to explain (default: the model's own
    predictions). The model runs in eval mode (restored afterwards); its parameters and their ``.grad``
    are left untouched. An image whose gradient is zero everywhere gets an all-zero map.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise BackdoorLabError(f"saliency needs N×C×H×W float images in [0, 1], got {shape}")
    if labels is not None and len(labels) != len(x):
        raise BackdoorLabError(f"saliency got {len(labels)} labels for {len(x)} images")
    if batch_size < 1:
        raise BackdoorLabError(f"batch_size must be ≥ 1, got {batch_size}")
    p = next(model.parameters(), None)
    dev = x.device if p is None else p.device
    was_training = model.training
    model.eval()
    maps = []
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].detach().to(dev).float().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xb)
                y = logits.argmax(1) if labels is None else labels[start : start + batch_size].to(dev).long()
                chosen = logits.gather(1, y[:, None]).sum()
                (grad,) = torch.autograd.grad(chosen, xb)
            m = grad.abs().amax(1)  # B×H×W
            peak = m.flatten(1).amax(1).clamp_min(torch.finfo(m.dtype).tiny)[:, None, None]
            maps.append((m / peak).detach().cpu())
    finally:
        model.train(was_training)
    if not maps:
        return torch.empty(0, *x.shape[-2:])
    return torch.cat(maps)


def _as_image(img: torch.Tensor):
    """One C×H×W [0, 1] tensor as an array for ``imshow`` (grey for one channel)."""
    img = img.detach().cpu().float().clamp(0, 1)
    if img.shape[0] == 1:
        return img[0].numpy(), "gray"
    return img.permute(1, 2, 0).numpy(), None


def plot_saliency_grid(
    rows: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    max_images: int = 4,
    title: str | None = None,
    cmap: str = "hot",
) -> Figure:
    """Images and their saliency maps side by side, one row per entry of ``rows`` (Li Fig. 10).

    ``rows`` maps a row label (e.g. ``"standard: triggered + ShrinkPad-4"``) to ``(images, maps)``: images
    N×C×H×W in [0, 1] and maps N×H×W from :func:`saliency`. Each row shows up to ``max_images`` pairs.
    """
    if not rows:
        raise BackdoorLabError("plot_saliency_grid needs at least one row")
    if max_images < 1:
        raise BackdoorLabError(f"max_images must be ≥ 1, got {max_images}")
    for label, (images, maps) in rows.items():
        if images.ndim != 4 or maps.ndim != 3 or len(images) != len(maps):
            raise BackdoorLabError(
                f"row {label!r} needs N×C×H×W images and N×H×W maps, got {tuple(images.shape)} and "
                f"{tuple(maps.shape)}"
            )
    k = min(max_images, max(len(images) for images, _ in rows.values()))
    n_rows = len(rows)
    fig = Figure(figsize=(1.4 * 2 * k + 1.2, 1.5 * n_rows + (0.4 if title else 0)), layout="constrained")
    axes = fig.subplots(n_rows, 2 * k, squeeze=False)
    for r, (label, (images, maps)) in enumerate(rows.items()):
        for j in range(k):
            ax_img, ax_map = axes[r, 2 * j], axes[r, 2 * j + 1]
            if j < len(images):
                arr, gray = _as_image(images[j])
                ax_img.imshow(arr, cmap=gray, vmin=0, vmax=1, interpolation="nearest")
                ax_map.imshow(maps[j].detach().cpu().float().numpy(), cmap=cmap, vmin=0, vmax=1)
            for ax in (ax_img, ax_map):
                ax.set_xticks([])
                ax.set_yticks([])
                if j >= len(images):
                    ax.axis("off")
            if r == 0:
                ax_img.set_title("image", fontsize=8)
                ax_map.set_title("saliency", fontsize=8)
        axes[r, 0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def saliency_rows(
    model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    labels: torch.Tensor | Sequence[int] | None = None,
    prefix: str = "",
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{prefix + name: (images, saliency(model, images))}`` for each input batch, ready for
    :func:`plot_saliency_grid` (e.g. inputs "clean", "triggered", "triggered + ShrinkPad-4")."""
    y = None if labels is None else torch.as_tensor(labels)
    return {f"{prefix}{name}": (x, saliency(model, x, y)) for name, x in inputs.items()}
