"""Turner et al.'s label-probability data sanitisation (defenses/filtering.py)."""

from __future__ import annotations

import pytest
import torch

from backdoorlab.attacks import BadNets
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.defenses.filtering import LabelProbabilityFilter, poisons_found
from backdoorlab.errors import BackdoorLabError
from backdoorlab.training import TrainRecipe

RECIPE = TrainRecipe(epochs=8, batch_size=32, optimizer="adam", lr=3e-3, channels_last=False)


def _bands(n: int = 1200, k: int = 4, size: int = 12) -> ImageTensors:
    """A learnable toy set: class c lights up rows 2c+1..2c+2 on a dark noisy background."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, k, (n,), generator=g)
    images = (torch.rand(n, 1, size, size, generator=g) * 80).to(torch.uint8)
    rows = 2 * labels + 1
    images[torch.arange(n), 0, rows, :] = 230
    images[torch.arange(n), 0, rows + 1, :] = 230
    return ImageTensors(images, labels, tuple(str(i) for i in range(k)), name="bands")


@pytest.fixture(scope="module")
def poisoned():
    train = _bands()
    ps = BadNets(target=0, rate=30).poison(train, torch.Generator().manual_seed(0))  # dirty label
    return ps


@pytest.fixture(scope="module")
def fitted(poisoned):
    clean = torch.ones(len(poisoned.data), dtype=torch.bool)
    clean[poisoned.poison_idx] = False
    trusted = clean.nonzero().squeeze(1)[torch.randperm(int(clean.sum()), generator=torch.Generator())[:256]]
    return LabelProbabilityFilter(trusted=256, recipe=RECIPE, seed=0, device="cpu").fit(
        poisoned.data, trusted_idx=trusted
    )


def test_filter_ranks_dirty_label_poisons_first(poisoned, fitted) -> None:
    data = poisoned.data
    n, n_poison = len(data), len(poisoned.poison_idx)
    scores = fitted.scores(data)
    assert scores.shape == (n,) and scores.dtype == torch.float32
    assert float(scores.min()) >= 0 and float(scores.max()) <= 1
    order = fitted.ranking(data)
    assert torch.equal(order.sort().values, torch.arange(n))  # a permutation
    assert bool((scores[order][1:] >= scores[order][:-1]).all())  # ascending: most suspicious first
    inspected = 2 * n_poison
    found = poisons_found(order, poisoned.poison_idx, [inspected, n])
    base_rate = inspected * n_poison / n  # poisons met by inspecting images in random order
    assert found[inspected] >= 5 * base_rate
    assert found[n] == n_poison
    assert float(scores[poisoned.poison_idx].mean()) < 0.2 < float(scores.mean())
    assert fitted.seconds > 0 and len(fitted.history) == RECIPE.epochs
    assert fitted.trusted_idx is not None and len(fitted.trusted_idx) == 256


def test_poisons_found_counts() -> None:
    ranking = torch.tensor([5, 2, 7, 0, 1, 3, 4, 6])
    assert poisons_found(ranking, torch.tensor([2, 6]), [0, 1, 2, 7, 8, 100]) == {
        0: 0,
        1: 0,
        2: 1,
        7: 1,
        8: 2,
        100: 2,
    }
    with pytest.raises(BackdoorLabError, match="n_inspected"):
        poisons_found(ranking, [2], [-1])


def test_default_trusted_draw_is_seeded_and_validated() -> None:
    data = _bands(n=200)
    tiny = TrainRecipe(epochs=1, batch_size=64, channels_last=False)
    a = LabelProbabilityFilter(trusted=50, recipe=tiny, seed=3, device="cpu").fit(data)
    b = LabelProbabilityFilter(trusted=50, recipe=tiny, seed=3, device="cpu").fit(data)
    assert torch.equal(a.trusted_idx, b.trusted_idx) and len(a.trusted_idx) == 50
    assert torch.equal(a.scores(data), b.scores(data))  # same seed, same scores on CPU
    with pytest.raises(BackdoorLabError, match="only 200"):
        LabelProbabilityFilter(trusted=500, recipe=tiny).fit(data)
    with pytest.raises(BackdoorLabError, match="trusted_idx"):
        LabelProbabilityFilter(recipe=tiny).fit(data, trusted_idx=[0, 999])
    with pytest.raises(BackdoorLabError, match="trusted"):
        LabelProbabilityFilter(trusted=0)
    with pytest.raises(BackdoorLabError, match="not fitted"):
        LabelProbabilityFilter().scores(data)
