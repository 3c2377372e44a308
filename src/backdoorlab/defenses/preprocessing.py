"""Transformation-based defences: pre-process every test image before prediction (Li et al. 2021, Def. 4).

Each defence is a small object with one verb, ``transform(x, gen=None)`` (also its ``__call__``), a
``name`` and ``describe()`` for configs and reports. Li recommend spatial transformations (``Flip``,
``ShrinkPad``, §4.1/§5.1) over non-spatial ones (``GaussianNoise``, ``ColorJitter``, §5.2), which barely
lower the attack success rate. :class:`DefendedModel` puts a defence in front of a model so every metric
(``metrics.accuracy``, ``metrics.attack_success_rate``) evaluates the defended pipeline unchanged.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from backdoorlab import transforms
from backdoorlab.data.tensors import make_generator
from backdoorlab.errors import BackdoorLabError, unknown_name

__all__ = [
    "DEFENSES",
    "ColorJitter",
    "Compose",
    "DefendedModel",
    "Flip",
    "GaussianNoise",
    "InputTransform",
    "ShrinkPad",
    "make_defense",
]


class InputTransform(ABC):
    """An input-transform defence: ``T(x)`` replaces ``x`` before prediction (Li Def. 4, shape-preserving)."""

    name: ClassVar[str] = "transform"

    @abstractmethod
    def transform(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """``T(x)`` for an N×C×H×W batch in [0, 1]; random choices from ``gen`` (None: seeded 0)."""

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return self.transform(x, gen)

    def params(self) -> dict[str, Any]:
        """The defence's parameters (JSON-able)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """A JSON-able config: ``{"name": …, **params}``."""
        return {"name": self.name, **self.params()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class Flip(InputTransform):
    """Left–right flip (Li §5.1, "Flip"): deterministic; fails against symmetric triggers (Turner's)."""

    name = "flip"

    def transform(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return transforms.flip(x)


class ShrinkPad(InputTransform):
    """ShrinkPad-``k`` (Li §5.1): bilinear shrink by ``k`` pixels, zero-pad back at a random offset per sample.

    ``k`` is checked here (integer ≥ 0) and against the image size when applied (``k ≤ min(H, W) // 3``).
    Li's Table 1 uses k = 1..4 on 32×32 CIFAR-10; k = 4 lowers the ASR by more than 90 %.
    """

    name = "shrinkpad"

    def __init__(self, k: int = 4) -> None:
        self.k = transforms.check_shrink_size(k)

    def transform(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return transforms.shrink_pad(x, self.k, gen)

    def params(self) -> dict[str, Any]:
        return {"k": self.k}


class GaussianNoise(InputTransform):
    """Additive Gaussian noise with ``std`` on the 0–255 scale, clipped (Li §5.2, Table 3: 5, 10, 15, 20)."""

    name = "noise"

    def __init__(self, std: float = 10.0) -> None:
        self.std = transforms.check_noise_std(std)

    def transform(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return transforms.gaussian_noise(x, self.std, gen)

    def params(self) -> dict[str, Any]:
        return {"std": self.std}


class ColorJitter(InputTransform):
    """Random colour shifting as torchvision's ``ColorJitter`` (Li §5.2, Table 4: strengths 0.1–0.4)."""

    name = "jitter"

    def __init__(
        self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0
    ) -> None:
        self.brightness, self.contrast, self.saturation, self.hue = transforms.check_jitter(
            brightness, contrast, saturation, hue
        )

    def transform(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return transforms.color_jitter(x, self.brightness, self.contrast, self.saturation, self.hue, gen=gen)

    def params(self) -> dict[str, Any]:
        return {
            "brightness": self.brightness,
            "contrast": self.contrast,
            "saturation": self.saturation,
            "hue": self.hue,
        }


class Compose(InputTransform):
    """A compound transformation (Li Def. 6): the steps applied in order, sharing one generator."""

    name = "compose"

    def __init__(self, steps: Sequence[InputTransform]) -> None:
        steps = list(steps)
        for i, step in enumerate(steps):
            if not isinstance(step, InputTransform):
                raise BackdoorLabError(
                    f"compose step {i} must be an input defence ({', '.join(sorted(DEFENSES))}), "
                    f"got {type(step).__name__}"
                )
        self.steps = steps

    def transform(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        g = make_generator(gen)
        for step in self.steps:
            x = step.transform(x, g)
        return x

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "steps": [step.describe() for step in self.steps]}

    def __repr__(self) -> str:
        return f"Compose({self.steps!r})"


class DefendedModel(torch.nn.Module):
    """``model(defense(x))`` as one module (Li Def. 4), so every metric evaluates the defended pipeline.

    The wrapped model is a submodule (``parameters()``, ``.to()``, ``state_dict()`` reach it). The defence
    draws from the wrapper's own CPU generator seeded ``seed``; it restarts from ``seed`` whenever the
    wrapper is switched with ``.eval()`` or ``.train()`` — which every metric does at the start of an
    evaluation — and on :meth:`reset`, so evaluating twice gives identical numbers while the batches of
    one evaluation get fresh random draws. Gradients flow through the transform (for adaptive attacks).
    """

    def __init__(self, model: torch.nn.Module, defense: InputTransform, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(defense, InputTransform):
            raise BackdoorLabError(
                f"defense must be an input defence ({', '.join(sorted(DEFENSES))}), got {type(defense).__name__}"
            )
        self.model = model
        self.defense = defense
        self.seed = int(seed)
        self.gen = make_generator(self.seed)

    def reset(self) -> None:
        """Restart the defence's random draws from ``seed``."""
        self.gen.manual_seed(self.seed)

    def train(self, mode: bool = True) -> DefendedModel:
        self.reset()
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.defense.transform(x, self.gen))

    def extra_repr(self) -> str:
        return f"defense={self.defense!r}, seed={self.seed}"


DEFENSES: dict[str, type[InputTransform]] = {
    "flip": Flip,
    "shrinkpad": ShrinkPad,
    "noise": GaussianNoise,
    "jitter": ColorJitter,
}


def make_defense(name: str, **params: Any) -> InputTransform:
    """An input defence by name (``flip``, ``shrinkpad``, ``noise``, ``jitter``) with its parameters."""
    key = name.lower() if isinstance(name, str) else name
    if key not in DEFENSES:
        raise unknown_name("input defence", str(name), DEFENSES)
    cls = DEFENSES[key]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        hint = ", ".join(valid) if valid else "none"
        raise BackdoorLabError(f"input defence {key!r} has no parameter {unknown[0]!r}; valid: {hint}")
    return cls(**params)
