"""The Attack protocol every poisoning attack follows (DESIGN.md, "The four roles").

An attack poisons a training set (``poison``) and stamps its trigger on test inputs (``apply_trigger``).
``target_labels`` says which label a triggered input should receive (all-to-one: the target class;
all-to-all: the next class), and ``victim_mask`` which test inputs count for the attack success rate
(never those already labelled with the target; for a source-specific attack only the source classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from backdoorlab.data.tensors import ImageTensors


@dataclass(frozen=True, eq=False)
class PoisonedSet:
    """A poisoned training set and what the attack changed in it."""

    data: ImageTensors  # the full training set, poisoned samples included
    poison_idx: torch.Tensor  # int64 indices of the poisoned samples in ``data``
    original_labels: torch.Tensor  # the labels those samples had before poisoning

    @property
    def rate(self) -> float:
        return len(self.poison_idx) / max(len(self.data), 1)

    def poisoned_samples(self) -> ImageTensors:
        return self.data.subset(self.poison_idx)


@runtime_checkable
class Attack(Protocol):
    """What the experiment runner, the metrics and the defences need from an attack."""

    name: str

    def poison(self, train: ImageTensors, gen: torch.Generator) -> PoisonedSet: ...

    def apply_trigger(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Stamp the test-time trigger on a batch ``x`` (N×C×H×W float in [0, 1])."""
        ...

    def target_labels(self, y: torch.Tensor) -> torch.Tensor:
        """The label each triggered input should be classified as."""
        ...

    def victim_mask(self, y: torch.Tensor) -> torch.Tensor:
        """Which test inputs (by true label) count for the attack success rate."""
        ...
