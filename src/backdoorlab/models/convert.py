"""Import third-party weights into backdoorlab model files, reading safetensors only (never a pickle).

:func:`import_torchvision_alexnet` maps a state dict in torchvision's AlexNet key layout onto the registered
``alexnet`` (:class:`~backdoorlab.models.alexnet.AlexNet`) and writes a backdoorlab model file. torchvision's
AlexNet expects ImageNet-normalised input while backdoorlab models take [0, 1] pixels, so the model's
:class:`~backdoorlab.models.normalize.Normalize` gets the ImageNet mean and std: the imported model gives the
same logits on [0, 1] images that torchvision's gives on normalised ones.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from backdoorlab.errors import BackdoorLabError
from backdoorlab.models.io import save_model
from backdoorlab.models.registry import create_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TORCHVISION_ALEXNET_LAYERS = {
    "features.0": "conv1",
    "features.3": "conv2",
    "features.6": "conv3",
    "features.8": "conv4",
    "features.10": "conv5",
    "classifier.1": "fc6",
    "classifier.4": "fc7",
    "classifier.6": "fc8",
}
"""torchvision's AlexNet module names → ours (each has a ``weight`` and a ``bias``)."""

_LAYOUT = (
    "torchvision's AlexNet layout (features.{0,3,6,8,10} and classifier.{1,4,6}, each .weight and .bias)"
)
_CONVERT_HINT = (
    "convert it on a machine with torchvision: from safetensors.torch import save_file; "
    'save_file(torchvision.models.alexnet(weights="IMAGENET1K_V1").state_dict(), "alexnet.safetensors")'
)


def _names(keys: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def _read(src: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a pickle or zip checkpoint is named as such, never parsed."""
    if not src.exists():
        raise BackdoorLabError(
            f"AlexNet weights not found: {src}; give a .safetensors file ({_CONVERT_HINT})"
        )
    if not src.is_file():
        raise BackdoorLabError(f"AlexNet weights path is not a file: {src}")
    try:
        return load_file(str(src), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        with src.open("rb") as f:
            head = f.read(4)
        if head[:2] == b"PK" or head[:1] == b"\x80" or src.suffix.lower() in (".pt", ".pth"):
            raise BackdoorLabError(
                f"{src} is a pickle-based PyTorch checkpoint, which backdoorlab never loads; {_CONVERT_HINT}"
            ) from None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackdoorLabError(
            f"{src} is not a readable safetensors file ({reason}); give the AlexNet state dict saved with "
            "safetensors.torch.save_file"
        ) from None


def _check_keys(src: Path, tensors: dict[str, torch.Tensor]) -> None:
    expected = [f"{tv}.{p}" for tv in TORCHVISION_ALEXNET_LAYERS for p in ("weight", "bias")]
    missing = [k for k in expected if k not in tensors]
    if missing:
        found = sorted(tensors)
        if {"conv1.weight", "fc8.weight"} <= set(found):
            hint = "; it already has backdoorlab's layer names: load it with backdoorlab.models.load_model"
        else:
            hint = f"; the file has e.g. {_names(found)}" if found else "; the file holds no tensors"
        raise BackdoorLabError(f"{src}: missing keys {_names(missing)}; expected {_LAYOUT}{hint}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise BackdoorLabError(
            f"{src}: unexpected keys {_names(unexpected)}; expected only {_LAYOUT} (is this another architecture?)"
        )
    for key in expected:
        if not tensors[key].is_floating_point():
            raise BackdoorLabError(
                f"{src}: {key} holds {tensors[key].dtype} values; weights must be floating point"
            )


def import_torchvision_alexnet(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    input_size: int | tuple[int, int] = 224,
) -> Path:
    """Convert torchvision-layout AlexNet weights (a safetensors state dict) into a backdoorlab model file.

    ``src`` holds ``features.{0,3,6,8,10}.*`` and ``classifier.{1,4,6}.*`` (e.g. torchvision's
    ``alexnet(weights=...).state_dict()`` saved with ``safetensors.torch.save_file``); the class count comes from
    ``classifier.6.weight``. ``classes`` names the outputs (default ``"0"``, ``"1"``, …); ``input_size`` is the
    image size the model file declares (224 for the paper recipes). The model's ``Normalize`` is ImageNet's
    mean/std. Writes ``out`` atomically with :func:`~backdoorlab.models.save_model` (nothing is written on an
    error) and returns its path.
    """
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve():
        raise BackdoorLabError(f"output {out} is the input file; write the backdoorlab model to another path")
    tensors = _read(src)
    _check_keys(src, tensors)
    head = tensors["classifier.6.weight"]
    if head.ndim != 2 or head.shape[1] != 4096 or head.shape[0] < 1:
        raise BackdoorLabError(
            f"{src}: classifier.6.weight has shape {tuple(head.shape)}, expected (num_classes, 4096)"
        )
    num_classes = int(head.shape[0])
    names = [str(i) for i in range(num_classes)] if classes is None else [str(c) for c in classes]
    if len(names) != num_classes:
        raise BackdoorLabError(
            f"{len(names)} class names given but {src.name} has {num_classes} outputs "
            f"(classifier.6.weight is {num_classes}×4096); give one name per output"
        )
    model = create_model(
        "alexnet",
        in_channels=3,
        num_classes=num_classes,
        input_size=input_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    state = model.state_dict()
    for tv, ours in TORCHVISION_ALEXNET_LAYERS.items():
        for part in ("weight", "bias"):
            key, target = f"{tv}.{part}", f"{ours}.{part}"
            found = tuple(tensors[key].shape)
            if found != tuple(state[target].shape):
                raise BackdoorLabError(
                    f"{src}: {key} has shape {found}, expected {tuple(state[target].shape)} "
                    f"(torchvision's AlexNet; it becomes {target})"
                )
            state[target] = tensors[key].to(torch.float32)
    model.load_state_dict(state, strict=True)
    extra = {
        "imported": {
            "from": "torchvision AlexNet state dict",
            "file": src.name,
            "normalization": "ImageNet mean/std, so the model takes [0, 1] pixels",
        }
    }
    return save_model(model.eval(), out, classes=names, extra=extra)
