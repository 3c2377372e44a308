"""Named architectures: ``create_model(name, in_channels=…, num_classes=…, input_size=…)``, ``list_models()``.

Every created model carries a ``spec`` dict (name, in_channels, num_classes, input_size, mean, std, kwargs),
all plain JSON values, from which :func:`create_model` rebuilds the same architecture; :mod:`io` saves it
next to the weights.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

from backdoorlab.errors import BackdoorLabError, unknown_name
from backdoorlab.models.alexnet import AlexNet
from backdoorlab.models.alexnet_small import AlexNetSmall
from backdoorlab.models.lenet import LeNet
from backdoorlab.models.normalize import Stats, resolve_stats
from backdoorlab.models.resnet import SmallResNet, resnet18, resnet34
from backdoorlab.models.vgg import vgg11, vgg19

_STANDARD = ("in_channels", "num_classes", "input_size", "mean", "std")


@dataclass(frozen=True)
class ModelInfo:
    """One registered architecture: what it is, where it comes from, and its extra options."""

    name: str
    description: str
    reference: str
    builder: Callable[..., nn.Module] = field(repr=False, compare=False)

    @property
    def options(self) -> tuple[str, ...]:
        """The architecture-specific keyword options (beyond the standard ones)."""
        return tuple(p for p in inspect.signature(self.builder).parameters if p not in _STANDARD)


_REGISTRY: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo(
            "lenet",
            "2 strided 5×5 convs (32, 64) + dense 1000 + dense classes",
            "AdvTrojan (ICLR 2021 submission), Table 6 'LeNet'",
            LeNet,
        ),
        ModelInfo(
            "resnet_small",
            "pre-activation ResNet, widths 16/16/32/64, 5 units per stage, LeakyReLU(0.1)",
            "AdvTrojan Table 6 'ResNet'; Madry et al. 2018 CIFAR ResNet as used by Turner et al. 2019",
            SmallResNet,
        ),
        ModelInfo(
            "resnet18",
            "CIFAR ResNet-18 (3×3 stem, no max-pool, BasicBlocks 2-2-2-2)",
            "He et al. 2016, CIFAR variant",
            resnet18,
        ),
        ModelInfo(
            "resnet34",
            "CIFAR ResNet-34 (3×3 stem, no max-pool, BasicBlocks 3-4-6-3)",
            "He et al. 2016, CIFAR variant",
            resnet34,
        ),
        ModelInfo(
            "vgg11",
            "VGG-11 with BatchNorm, CIFAR classifier Linear(512, classes)",
            "Simonyan & Zisserman 2015, configuration A, CIFAR variant",
            vgg11,
        ),
        ModelInfo(
            "vgg19",
            "VGG-19 with BatchNorm, CIFAR classifier Linear(512, classes)",
            "Simonyan & Zisserman 2015, configuration E, CIFAR variant",
            vgg19,
        ),
        ModelInfo(
            "alexnet_small",
            "4 convs (64, 192, 384, 256; first 5×5 stride 1) + fc 512 + fc classes, no dropout",
            "Saha et al. 2020, Hidden Trigger Backdoor Attacks, §4.4",
            AlexNetSmall,
        ),
        ModelInfo(
            "alexnet",
            "ImageNet AlexNet (5 convs + fc6/fc7/fc8, dropout), the paper-scale victim of Saha et al. and "
            "Sun et al.",
            "Krizhevsky et al. 2012, one-GPU layout; Saha et al. 2020 §4.1, Sun et al. 2020 App. A.1",
            AlexNet,
        ),
    )
}


def list_models() -> list[ModelInfo]:
    """Every registered architecture, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of ``name``; an unknown name raises an error listing the valid ones."""
    if name not in _REGISTRY:
        raise unknown_name("model", name, _REGISTRY)
    return _REGISTRY[name]


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BackdoorLabError(f"{what} must be a positive integer, got {value!r}")
    return value


def _size(input_size: tuple[int, int] | Sequence[int] | int) -> tuple[int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    try:
        h, w = input_size  # type: ignore[misc]
    except (TypeError, ValueError) as exc:
        raise BackdoorLabError(f"input_size must be an int or (height, width), got {input_size!r}") from exc
    return _positive_int(h, "input_size height"), _positive_int(w, "input_size width")


def _jsonable(value: object) -> object:
    """Tuples to lists, recursively, so a spec survives a JSON round trip unchanged."""
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def create_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int] | int,
    mean: Stats = None,
    std: Stats = None,
    **kwargs,
) -> nn.Module:
    """Build architecture ``name`` for ``in_channels × input_size`` images in [0, 1], ``num_classes`` outputs.

    ``mean``/``std`` (a float or one per channel; ``None`` → identity) go into the model's own
    :class:`Normalize` layer. ``kwargs`` are the architecture's options (see ``ModelInfo.options``). The
    model gets a JSON-able ``spec`` attribute that rebuilds it.
    """
    info = model_info(name)
    in_channels = _positive_int(in_channels, "in_channels")
    num_classes = _positive_int(num_classes, "num_classes")
    size = _size(input_size)
    m, s = resolve_stats(mean, std, in_channels)
    unknown = sorted(set(kwargs) - set(info.options))
    if unknown:
        raise BackdoorLabError(
            f"model {name!r} takes no option {unknown[0]!r}; "
            f"its options are: {', '.join(info.options) or 'none'}"
        )
    spec_kwargs = {k: _jsonable(v) for k, v in kwargs.items()}
    for k, v in spec_kwargs.items():
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise BackdoorLabError(f"model option {k!r} must be a plain JSON value, got {v!r}") from exc
    try:
        model = info.builder(
            in_channels=in_channels, num_classes=num_classes, input_size=size, mean=m, std=s, **kwargs
        )
    except BackdoorLabError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        raise BackdoorLabError(f"cannot build model {name!r} with options {kwargs}: {exc}") from exc
    model.spec = {
        "name": name,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "input_size": list(size),
        "mean": list(m),
        "std": list(s),
        "kwargs": spec_kwargs,
    }
    return model


def model_from_spec(spec: dict) -> nn.Module:
    """Rebuild a model (fresh weights) from the ``spec`` dict that :func:`create_model` attached."""
    try:
        name = spec["name"]
        return create_model(
            name,
            in_channels=spec["in_channels"],
            num_classes=spec["num_classes"],
            input_size=tuple(spec["input_size"]),
            mean=spec.get("mean"),
            std=spec.get("std"),
            **dict(spec.get("kwargs") or {}),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise BackdoorLabError(f"model spec is incomplete or malformed ({exc!r}): {spec!r}") from exc


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """``(C, H, W)`` a model made by :func:`create_model` expects."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict):
        raise BackdoorLabError(
            f"{type(model).__name__} has no spec, so its input shape is unknown; build it with create_model"
        )
    h, w = spec["input_size"]
    return int(spec["in_channels"]), int(h), int(w)


def check_input_shape(model: nn.Module, shape: Sequence[int]) -> None:
    """Raise if data of ``shape`` (``C×H×W`` or ``N×C×H×W``) does not match what ``model`` was built for."""
    expected = input_shape(model)
    got = tuple(int(d) for d in tuple(shape)[-3:])
    if len(got) != 3:
        raise BackdoorLabError(f"data shape must be C×H×W or N×C×H×W, got {tuple(shape)}")
    if got != expected:
        e, g = "×".join(map(str, expected)), "×".join(map(str, got))
        raise BackdoorLabError(
            f"model expects {e} inputs, data is {g}; create the model with this dataset's shape"
        )
