"""What every model-detection defence returns (DESIGN.md, "The four roles": ``inspect(model, clean) -> Verdict``).

A model-detection defence looks at a trained model (and a few clean images) and says which classes, if any,
look like the target of a backdoor. Its answer is a :class:`Verdict`: the suspected target classes, one
anomaly score per class (higher = more suspicious, so scores of different defences read the same way), a
JSON-able ``details`` dict for reports, and the wall time of the inspection (Li et al. 2021, Table 2 compares
defences by their cost).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True, eq=False)
class Verdict:
    """The outcome of inspecting one model.

    ``flagged`` lists the suspected target classes (sorted, possibly empty). ``scores`` is a float tensor with
    one anomaly score per class of the model, higher = more suspicious; a class the defence did not inspect
    scores NaN. ``details`` holds JSON-able extras (thresholds, per-class statistics). ``seconds`` is the wall
    time the inspection took.
    """

    flagged: tuple[int, ...]
    scores: torch.Tensor
    details: dict = field(default_factory=dict)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "flagged", tuple(sorted(int(c) for c in self.flagged)))

    @property
    def is_backdoored(self) -> bool:
        """True when at least one class was flagged."""
        return bool(self.flagged)
