from __future__ import annotations

import torch

from backdoorlab.attacks import BadNets
from backdoorlab.metrics import accuracy, attack_success_rate, confusion_matrix, per_class_accuracy
from backdoorlab.triggers import square


class RowReader(torch.nn.Module):
    """Predicts the toy label from which row is bright; a bottom-right trigger does not change it."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x[:, 0, [1, 3, 5], :4].mean(-1)  # left half of rows 1, 3, 5
        return rows + 0 * self.dummy


class AlwaysTarget(RowReader):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), 3)
        out[:, 0] = 1
        return out + 0 * self.dummy


def test_accuracy_and_confusion(toy):
    model = RowReader()
    assert accuracy(model, toy) == 1.0
    cm = confusion_matrix(model, toy)
    assert torch.equal(cm, torch.diag(toy.class_counts()))
    assert per_class_accuracy(model, toy) == [1.0, 1.0, 1.0]
    assert abs(accuracy(AlwaysTarget(), toy) - 1 / 3) < 1e-6


def test_asr_excludes_target_class(toy):
    attack = BadNets(square(size=2), target=0, rate=0.1)
    # a model that ignores the trigger: counting target-class images would give 1/3, Eq. 3 gives 0
    assert attack_success_rate(RowReader(), toy, attack) == 0.0
    # a model that always answers the target: every counted image is a success
    assert attack_success_rate(AlwaysTarget(), toy, attack) == 1.0


def test_asr_source_specific_counts_sources_only(toy):
    attack = BadNets(square(size=2), target=0, rate=0.1, mode="source-specific", sources=(1,))
    mask = attack.victim_mask(toy.labels)
    assert set(toy.labels[mask].tolist()) == {1}
