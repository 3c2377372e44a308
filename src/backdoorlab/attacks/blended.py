"""Blended injection (Chen et al. 2017, Sec. 4.2 "blended injection strategy"; Li et al. 2021, Eq. 1).

The whole image is blended with a key pattern: ``x' = (1 − α)·x + α·p``. The poisoning itself (choice of
images, label maps, rate) is BadNets' machinery; only the trigger differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from backdoorlab.attacks.badnets import BadNets
from backdoorlab.errors import BackdoorLabError
from backdoorlab.triggers import Trigger, TriggerSet, blended, digest, from_config


class Blended(BadNets):
    """Chen et al.'s blended attack.

    ``trigger`` is ``None`` (a uniform-noise key image from ``seed``, made lazily at the data's shape), a
    pattern image tensor (resized to the data's H×W when it differs) or a ready :class:`Trigger`. ``alpha``
    is the blend ratio used in training (default 0.2); for a given Trigger it rescales the mask so that its
    peak is ``alpha`` (``None`` keeps the trigger as it is). ``test_alpha`` optionally uses a different
    ratio at test time (Chen et al. Sec. 5.2 evaluate a larger α_test than α_train).
    """

    name = "blended"

    def __init__(
        self,
        trigger: Trigger | torch.Tensor | Mapping[str, Any] | None = None,
        alpha: float | None = None,
        target: int = 0,
        rate: float | int = 0.1,
        mode: str = "all-to-one",
        sources: Sequence[int] | None = None,
        test_alpha: float | None = None,
        seed: int = 0,
        num_classes: int | None = None,
    ) -> None:
        for label, a in (("alpha", alpha), ("test_alpha", test_alpha)):
            if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a <= 1):
                raise BackdoorLabError(f"blended {label} must be a number in (0, 1], got {a!r}")
        self.pattern_image: torch.Tensor | None = None
        given: Trigger | None = None
        if isinstance(trigger, torch.Tensor):
            self.pattern_image = trigger
        elif trigger is not None:
            given = from_config(trigger)
            if isinstance(given, TriggerSet):
                raise BackdoorLabError("blended attack needs a single Trigger, not a trigger set")
        self.alpha = alpha
        self.test_alpha = test_alpha
        self.seed = int(seed)
        self._given = given
        self._cache: dict[tuple[tuple[int, int, int], bool], Trigger] = {}
        # ``trigger``: the given Trigger, or the training trigger of the last image shape seen (None before)
        self.trigger = None if given is None else self.trigger_for(None)
        self._init_labels(target, rate, mode, sources, num_classes)

    def trigger_for(self, shape: tuple[int, int, int] | None, test: bool = False) -> Trigger:
        """The blended trigger for images of ``shape``, made once per shape (seeded) and cached."""
        if self._given is not None:
            shape = None  # a ready trigger does not depend on the image shape
        key = (shape, test)
        if key not in self._cache:
            if self._given is not None:
                t = self._given if self.alpha is None else _with_peak(self._given, self.alpha)
            else:
                t = blended(self.pattern_image, self.alpha or 0.2, shape, self.seed)
            if test and self.test_alpha is not None:
                t = _with_peak(t, self.test_alpha)
            self._cache[key] = t
        if not test:
            self.trigger = self._cache[key]
        return self._cache[key]

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(alpha=self.alpha, test_alpha=self.test_alpha, seed=self.seed)
        if self._given is None:
            out["alpha"] = self.alpha or 0.2
            out["trigger"] = {
                "kind": "blended",
                "pattern": "noise" if self.pattern_image is None else "image",
            }
            if self.pattern_image is not None:
                out["trigger"]["digest"] = digest(self.pattern_image)
        return out


def _with_peak(t: Trigger, alpha: float) -> Trigger:
    """``t`` with its mask rescaled so that its maximum is ``alpha`` (a constant mask becomes ``alpha``)."""
    peak = t.mask.detach().max()
    if float(peak) <= 0:
        raise BackdoorLabError("blended trigger mask is all zero; it cannot be rescaled to an alpha")
    return replace(t, mask=t.mask * (alpha / peak))
