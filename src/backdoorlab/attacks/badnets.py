"""BadNets (Gu et al. 2017, Sec. 3–4): stamp a trigger on a fraction of the training set and relabel it.

Three label maps (Gu et al. Sec. 4.2.3 / 5): ``all-to-one`` (every poisoned image → ``target``),
``all-to-all`` (label ``y`` → ``(y + 1) mod K``) and ``source-specific`` (only images of ``sources`` are
poisoned, → ``target``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from backdoorlab.attacks.base import PoisonedSet, check_rate, choose, poison_count
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError, unknown_name
from backdoorlab.triggers import AnyTrigger, from_config, square, stamp

LABEL_MODES = ("all-to-one", "all-to-all", "source-specific")


class BadNets:
    """Dirty-label patch poisoning (Gu et al. 2017).

    ``rate`` is a fraction in (0, 1] of the *whole* training set (``round(rate·N)`` images) or an int count.
    Candidates: for all-to-one the images not already labelled ``target`` (poisoning one changes nothing, so
    it would silently lower the effective rate); for all-to-all every image; for source-specific the images
    of ``sources``. They are chosen with a seeded permutation from the generator given to :meth:`poison`.
    ``trigger`` may be a :class:`Trigger`, a :class:`TriggerSet` or a trigger config mapping; ``None`` is a
    white 3×3 square at the bottom-right corner.
    """

    name = "badnets"

    def __init__(
        self,
        trigger: AnyTrigger | Mapping[str, Any] | None = None,
        target: int = 0,
        rate: float | int = 0.1,
        mode: str = "all-to-one",
        sources: Sequence[int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.trigger: AnyTrigger | None = square() if trigger is None else from_config(trigger)
        self._init_labels(target, rate, mode, sources, num_classes)

    def _init_labels(
        self,
        target: int,
        rate: float | int,
        mode: str,
        sources: Sequence[int] | None,
        num_classes: int | None,
    ) -> None:
        """Validate and store the label map and rate (shared with attacks built on BadNets)."""
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise BackdoorLabError(f"attack target must be a class index ≥ 0, got {target!r}")
        if mode not in LABEL_MODES:
            raise unknown_name("attack mode", mode, LABEL_MODES)
        if mode == "source-specific":
            if not sources:
                raise BackdoorLabError(
                    "attack sources must list at least one class for mode 'source-specific'"
                )
            sources = tuple(int(s) for s in sources)
            if target in sources:
                raise BackdoorLabError(f"attack sources {list(sources)} must not contain the target {target}")
        elif sources is not None:
            raise BackdoorLabError(f"attack sources are only used with mode 'source-specific', not {mode!r}")
        self.target = target
        self.rate = check_rate(rate)
        self.mode = mode
        self.sources: tuple[int, ...] | None = sources
        self.num_classes = num_classes

    # -- the Attack protocol ---------------------------------------------------------------------------------
    def poison(self, train: ImageTensors, gen: torch.Generator) -> PoisonedSet:
        """Stamp the trigger on ``rate`` of ``train`` and relabel those; the rest stay bit-identical."""
        self._check_classes(train)
        labels = train.labels.cpu()
        candidates, pool = self._candidates(labels)
        k = poison_count(self.rate, len(train), len(candidates), pool)
        idx = choose(candidates, k, gen)
        original = labels[idx].clone()
        dev_idx = idx.to(train.device)
        x = self._stamp(train.float01(dev_idx), train.shape, gen, test=False)
        images = train.images.clone()
        images[dev_idx] = ImageTensors.quantize(x) if images.dtype == torch.uint8 else x.to(images.dtype)
        new_labels = train.labels.clone()
        new_labels[dev_idx] = self.target_labels(original).to(new_labels.device)
        data = train.with_images(images, new_labels, attack=self.describe())
        return PoisonedSet(data=data, poison_idx=idx, original_labels=original)

    def apply_trigger(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Stamp the test-time trigger on a batch (N×C×H×W float in [0, 1])."""
        return self._stamp(x, tuple(x.shape[-3:]), gen, test=True)

    def target_labels(self, y: torch.Tensor) -> torch.Tensor:
        """The target class (all-to-one, source-specific) or ``(y + 1) mod K`` (all-to-all)."""
        if self.mode == "all-to-all":
            if self.num_classes is None:
                raise BackdoorLabError(
                    "all-to-all labels need the class count: pass num_classes= or call poison() first"
                )
            return (y + 1) % self.num_classes
        return torch.full_like(y, self.target)

    def victim_mask(self, y: torch.Tensor) -> torch.Tensor:
        """Inputs that count for the attack success rate: all-to-one excludes the target class; all-to-all
        counts every input (its target always differs from its label); source-specific only the sources.
        """
        if self.mode == "all-to-all":
            return torch.ones_like(y, dtype=torch.bool)
        if self.mode == "source-specific":
            return torch.isin(y, torch.tensor(self.sources, device=y.device, dtype=y.dtype))
        return y != self.target

    # -- description -----------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """A JSON-able config of this attack (used in reports and cache keys)."""
        return {
            "name": self.name,
            "trigger": None if self.trigger is None else self.trigger.describe(),
            "target": self.target,
            "rate": self.rate,
            "mode": self.mode,
            "sources": None if self.sources is None else list(self.sources),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self.target}, rate={self.rate}, mode={self.mode!r})"

    # -- helpers for subclasses ------------------------------------------------------------------------------
    def trigger_for(self, shape: tuple[int, int, int], test: bool = False) -> AnyTrigger:
        """The trigger used on images of ``shape`` (C, H, W), at training (``test=False``) or test time."""
        return self.trigger

    def _stamp(
        self, x: torch.Tensor, shape: tuple[int, int, int], gen: torch.Generator | None, test: bool
    ) -> torch.Tensor:
        return stamp(x, self.trigger_for(tuple(int(s) for s in shape), test=test), gen=gen)

    def _check_classes(self, train: ImageTensors) -> None:
        k = train.num_classes
        if self.target >= k:
            raise BackdoorLabError(
                f"attack target {self.target} is out of range for {train.name or 'the dataset'} "
                f"with {k} classes (0..{k - 1})"
            )
        bad = [s for s in self.sources or () if not 0 <= s < k]
        if bad:
            raise BackdoorLabError(f"attack sources {bad} are out of range for {k} classes (0..{k - 1})")
        if self.mode == "all-to-all" and k < 2:
            raise BackdoorLabError("all-to-all poisoning needs at least 2 classes")
        self.num_classes = k

    def _candidates(self, labels: torch.Tensor) -> tuple[torch.Tensor, str]:
        if self.mode == "all-to-all":
            return torch.arange(len(labels)), "images"
        if self.mode == "source-specific":
            keep = torch.isin(labels, torch.tensor(self.sources))
            return keep.nonzero().squeeze(1), f"images of source classes {list(self.sources)}"
        return (labels != self.target).nonzero().squeeze(1), f"images not labelled with target {self.target}"
