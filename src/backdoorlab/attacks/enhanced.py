"""Random-transformation enhanced attacks (Li et al. 2021, Sec. 4.2, Eq. 7–9; evaluated in Sec. 5.3).

An enhanced attack wraps any other attack. Its poisoned training images are passed through a random
compound transformation ``T(·; θ)`` before training (Eq. 7): a random left–right flip (p = 0.5) followed
by a random ShrinkPad whose shrinking size is drawn from ``{0, …, max_shrink}`` (the only hyper-parameter,
Sec. 5.3). Eq. 9's expectation over θ is handled by Li's sampling-based training: one θ per poisoned
image, drawn once when the set is poisoned. With ``transform_benign=True`` (Li's Sec. 5.3 evaluation mode)
the benign samples get the same random transformation, so that the black edges ShrinkPad pads with
cannot become a second, edge-activated backdoor. The test-time trigger is the base attack's, unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from backdoorlab import transforms
from backdoorlab.attacks.base import Attack, PoisonedSet
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError

_CHUNK = 4096  # images transformed at once (bounds the float32 copy of a large training set)


class Enhanced:
    """Li et al.'s enhanced version of ``base`` (e.g. ``Enhanced(BadNets())`` is "BadNets+").

    ``max_shrink`` is the maximal ShrinkPad size in pixels (Li use 4; 0 disables ShrinkPad); ``flip``
    enables the random flip. Attributes the wrapper does not define itself (``target``, ``trigger``,
    ``rate``, …) are read from ``base``.
    """

    def __init__(
        self, base: Attack, max_shrink: int = 4, flip: bool = True, transform_benign: bool = False
    ) -> None:
        if not isinstance(base, Attack):
            raise BackdoorLabError(
                f"an enhanced attack wraps another attack (poison, apply_trigger, target_labels, "
                f"victim_mask), got {type(base).__name__}"
            )
        if isinstance(max_shrink, bool) or not isinstance(max_shrink, int) or max_shrink < 0:
            raise BackdoorLabError(
                f"enhanced attack max_shrink must be an integer ≥ 0 pixels, got {max_shrink!r}"
            )
        self.base = base
        self.max_shrink = int(max_shrink)
        self.flip = bool(flip)
        self.transform_benign = bool(transform_benign)
        self.name = f"{base.name}+"

    # -- the Attack protocol ---------------------------------------------------------------------------------
    def poison(self, train: ImageTensors, gen: torch.Generator) -> PoisonedSet:
        """The base attack's poisoned set with every poisoned image replaced by ``T(x; θ)``, one θ per image
        (Li Eq. 7, sampling-based training of Sec. 4.2); benign images too when ``transform_benign``.

        Labels, ``poison_idx`` and ``original_labels`` are the base attack's. uint8 data stays uint8.
        """
        _, h, w = train.shape
        transforms.check_shrink_size(self.max_shrink, (h, w), what="enhanced attack max_shrink")
        ps = self.base.poison(train, gen)
        if not self.active:
            return ps
        data = ps.data
        idx = ps.poison_idx.to(data.device)
        if self.transform_benign:
            idx = torch.arange(len(data), device=data.device)
        images = data.images.clone()
        for start in range(0, len(idx), _CHUNK):
            part = idx[start : start + _CHUNK]
            x = self.transform(data.float01(part), gen)
            images[part] = ImageTensors.quantize(x) if images.dtype == torch.uint8 else x.to(images.dtype)
        out = data.with_images(images, attack=self.describe())
        return PoisonedSet(data=out, poison_idx=ps.poison_idx, original_labels=ps.original_labels)

    def apply_trigger(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """The base attack's test-time trigger (Li evaluate enhanced attacks with the standard trigger)."""
        return self.base.apply_trigger(x, gen)

    def target_labels(self, y: torch.Tensor) -> torch.Tensor:
        return self.base.target_labels(y)

    def victim_mask(self, y: torch.Tensor) -> torch.Tensor:
        return self.base.victim_mask(y)

    # -- the random transformation layer (Li Fig. 6) ---------------------------------------------------------
    @property
    def active(self) -> bool:
        """False when the transformation is the identity (no flip, ``max_shrink = 0``)."""
        return self.flip or self.max_shrink > 0

    def transform(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """``T(x; θ)`` on a batch (N×C×H×W float in [0, 1]): random flip, then random ShrinkPad, θ per sample."""
        if self.flip:
            x = transforms.random_flip(x, 0.5, gen=gen)
        if self.max_shrink > 0:
            x = transforms.random_shrink_pad(x, self.max_shrink, gen=gen)
        return x

    # -- description -----------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """A JSON-able config: the base attack's description plus the enhancement's parameters."""
        base = self.base.describe() if hasattr(self.base, "describe") else {"name": self.base.name}
        return {
            "name": self.name,
            "base": base,
            "enhancement": {
                "flip": self.flip,
                "max_shrink": self.max_shrink,
                "transform_benign": self.transform_benign,
            },
        }

    def __getattr__(self, item: str) -> Any:
        # only reached for attributes not found on the wrapper: read them from the base attack
        if item.startswith("_") or item == "base":
            raise AttributeError(item)
        return getattr(self.base, item)

    def __repr__(self) -> str:
        return (
            f"Enhanced({self.base!r}, max_shrink={self.max_shrink}, flip={self.flip}, "
            f"transform_benign={self.transform_benign})"
        )
