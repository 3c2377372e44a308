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
from backdoorlab.errors import BackdoorLabError


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


# -- shared helpers for poisoning attacks -------------------------------------------------------------------
def check_rate(rate: float | int) -> float | int:
    """Validate a poisoning rate: a float in (0, 1] is a fraction of the training set, an int ≥ 1 a count."""
    if isinstance(rate, bool):
        raise BackdoorLabError(f"rate must be a fraction in (0, 1] or a count ≥ 1, got {rate}")
    if isinstance(rate, int) and rate >= 1:
        return int(rate)
    if isinstance(rate, float) and 0.0 < rate <= 1.0:
        return float(rate)
    raise BackdoorLabError(f"rate must be a fraction in (0, 1] or a count ≥ 1, got {rate}")


def poison_count(rate: float | int, n_total: int, n_candidates: int, pool: str = "candidate images") -> int:
    """How many samples ``rate`` asks for: ``round(rate·n_total)`` for a fraction, the count itself otherwise.

    Raises when that is zero or more than the ``n_candidates`` that may be poisoned (``pool`` names them).
    """
    rate = check_rate(rate)
    k = round(rate * n_total) if isinstance(rate, float) else rate
    if k < 1:
        raise BackdoorLabError(f"rate {rate} of {n_total} training images poisons no image; raise the rate")
    if k > n_candidates:
        raise BackdoorLabError(
            f"rate {rate} asks for {k} poisoned images but only {n_candidates} {pool} can be poisoned"
        )
    return k


def choose(candidates: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """``k`` of ``candidates`` (int64 indices) by a seeded permutation, returned sorted."""
    perm = torch.randperm(len(candidates), generator=gen)[:k]
    return candidates.cpu()[perm].sort().values
