"""Neural Cleanse (Wang et al. 2019): MAD outlier test, cost schedule, batched reverse engineering, unlearning."""

from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn.functional as F

from backdoorlab import BadNets, ImageTensors, TrainRecipe, create_model, fit, make_generator, square
from backdoorlab.defenses.base import Verdict
from backdoorlab.defenses.neural_cleanse import (
    CostSchedule,
    EarlyStop,
    NeuralCleanse,
    NeuralCleanseResult,
    flag_outliers,
    mad_anomaly_index,
    median,
    unlearn,
)
from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics import accuracy, attack_success_rate


# -- MAD ------------------------------------------------------------------------------------------------------
def _hand_index(values: list[float]) -> list[float]:
    med = statistics.median(values)  # numpy-style: mean of the two middle values for even counts
    mad = 1.4826 * statistics.median([abs(v - med) for v in values])
    return [abs(v - med) / mad for v in values]


@pytest.mark.parametrize(
    "values",
    [
        [10.0, 52.0, 48.0, 50.0, 55.0, 47.0, 60.0, 51.0, 49.0, 53.0],  # even count
        [10.0, 52.0, 48.0, 50.0, 55.0, 47.0, 60.0, 51.0, 49.0],  # odd count
    ],
)
def test_mad_anomaly_index_matches_hand_computation(values):
    got = mad_anomaly_index(torch.tensor(values))
    assert torch.allclose(got, torch.tensor(_hand_index(values), dtype=torch.float64), atol=1e-9)
    assert float(median(torch.tensor(values))) == pytest.approx(statistics.median(values))


def test_even_median_is_numpy_style_not_torch_lower_middle():
    v = torch.tensor([4.0, 1.0, 3.0, 2.0])
    assert float(median(v)) == 2.5
    assert float(torch.median(v)) == 2.0  # what we deliberately do not use


def test_flags_only_small_outliers():
    # class 0 far below, class 6 far above the median: only class 0 is flagged
    l1 = torch.tensor([10.0, 52.0, 48.0, 50.0, 55.0, 47.0, 95.0, 51.0, 49.0, 53.0])
    index = mad_anomaly_index(l1)
    assert index[0] > 2 and index[6] > 2
    assert flag_outliers(l1).nonzero().flatten().tolist() == [0]
    assert flag_outliers(l1, threshold=100.0).sum() == 0


def test_mad_zero_gives_inf_for_deviating_classes():
    index = mad_anomaly_index(torch.tensor([5.0, 5.0, 5.0, 1.0]))
    assert index[:3].tolist() == [0.0, 0.0, 0.0] and index[3] == float("inf")


# -- schedule -------------------------------------------------------------------------------------------------
def _run_schedule(accs: list[list[float]], **kw) -> tuple[list[list[float]], list[list[bool]]]:
    sched = CostSchedule(len(accs[0]), **kw)
    costs, both = [], []
    for a in accs:
        costs.append(sched.update(torch.tensor(a)).tolist())
        both.append(sched.adjusted_both.tolist())
    return costs, both


def test_cost_schedule_follows_the_authors_rules():
    hi, lo = 1.0, 0.5
    # class 0: always succeeds; class 1: never succeeds; class 2: succeeds then fails
    seq = [[hi, lo, hi]] * 10 + [[hi, lo, lo]] * 5
    costs, both = _run_schedule(seq, init_cost=1e-3, patience=2, threshold=0.99)
    c0 = [c[0] for c in costs]
    # set after 2 successes; the up counter already counts that step, so ×2 one step later, then every 2
    assert c0[:6] == [0.0, 1e-3, 2e-3, 2e-3, 4e-3, 4e-3]
    assert all(c[1] == 0.0 for c in costs)  # never set: 0 stays 0 whatever the multipliers do
    c2 = [c[2] for c in costs]
    assert c2[9] == c0[9]  # identical history so far
    down = 2.0**1.5
    assert c2[11] == pytest.approx(c2[9] / down) and c2[13] == pytest.approx(c2[9] / down**2)
    assert both[-1] == [False, False, True]  # only class 2 was raised and lowered (with a non-zero cost)


def test_cost_schedule_rows_update_only_those_classes():
    sched = CostSchedule(3, init_cost=0.1, patience=2)
    for _ in range(2):
        sched.update(torch.tensor([1.0]), rows=torch.tensor([1]))
    assert sched.cost.tolist() == [0.0, 0.1, 0.0]


def test_early_stop_counts_epochs_without_improvement():
    stop = EarlyStop(2, patience=3, threshold=1.0)
    inf = float("inf")
    seq = [[inf, 5.0], [inf, 4.0], [inf, 4.0], [inf, 4.0], [inf, 4.0]]
    out = [stop.update(torch.tensor(s)).tolist() for s in seq]
    assert [o[0] for o in out] == [False] * 5  # no valid trigger yet: never stops
    assert [o[1] for o in out] == [False, False, False, False, True]


# -- reverse engineering on a tiny backdoored model -----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_backdoor():
    """LeNet on 14×14 MNIST (1500 images) with a white 3×3 BadNets square at the bottom-right → class 0."""
    from backdoorlab.data.registry import load_dataset

    torch.set_num_threads(2)
    train, test = load_dataset("mnist5k")

    def shrink(d: ImageTensors, n: int) -> ImageTensors:
        x = F.avg_pool2d(d.float01(slice(0, n)), 2)
        return ImageTensors(ImageTensors.quantize(x), d.labels[:n], d.classes, name="mnist14")

    train, test = shrink(train, 1500), shrink(test, 300)
    attack = BadNets(square(size=3), target=0, rate=0.1)
    poisoned = attack.poison(train, make_generator(0))
    torch.manual_seed(0)
    model = create_model("lenet", in_channels=1, num_classes=10, input_size=14)
    fit(model, poisoned.data, TrainRecipe(epochs=4, batch_size=64, lr=0.05), seed=0, device="cpu")
    model.eval()
    assert accuracy(model, test) > 0.8 and attack_success_rate(model, test, attack) > 0.9
    return model, test, attack


# a short schedule for a tiny model: the classes far from any trigger do not reach 99 % attack accuracy in
# 30 epochs, so only the planted target's rank and mask (not the exact flagged set) are asserted
FAST = dict(epochs=30, batch_size=32, batches_per_epoch=4, init_cost=3e-2, patience=2, early_stop_patience=6)


@pytest.fixture(scope="module")
def nc_result(tiny_backdoor):
    model, test, _ = tiny_backdoor
    return NeuralCleanse(**FAST).inspect(model, test, gen=0)


def test_recovers_planted_trigger(tiny_backdoor, nc_result):
    r = nc_result
    assert isinstance(r, NeuralCleanseResult) and isinstance(r, Verdict)
    assert r.masks.shape == (10, 14, 14) and r.patterns.shape == (10, 1, 14, 14)
    assert int(r.l1.argmin()) == 0
    mass = float(r.masks[0, -5:, -5:].sum() / r.masks[0].sum())
    assert mass > 0.5, mass
    assert 0 in r.flagged and r.is_backdoored
    assert int(r.scores.argmax()) == 0 and r.seconds > 0
    assert r.attack_acc[0] >= 0.99
    assert int(r.epochs.min()) > 0 and int(r.epochs.max()) <= FAST["epochs"]


def test_batched_and_one_at_a_time_agree(tiny_backdoor, nc_result):
    model, test, _ = tiny_backdoor
    one = NeuralCleanse(**FAST, classes=[0, 3], batched=False).inspect(model, test, gen=0)
    chunked = NeuralCleanse(**FAST, classes=[0, 3], class_chunk=1).inspect(model, test, gen=0)
    for k in (0, 3):  # the same initial values and batches whatever the mode or the class subset
        assert torch.allclose(one.masks[k], nc_result.masks[k], atol=1e-3)
        assert torch.allclose(chunked.masks[k], nc_result.masks[k], atol=1e-3)
        assert float(one.l1[k]) == pytest.approx(float(nc_result.l1[k]), rel=1e-3)
    assert one.classes == (0, 3) and torch.isnan(one.l1[1]) and torch.isnan(one.scores[1])


def test_model_is_left_untouched(tiny_backdoor):
    model, test, _ = tiny_backdoor
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.fc2.weight.requires_grad_(True)
    model.conv1.weight.requires_grad_(False)
    model.train()
    NeuralCleanse(epochs=1, batches_per_epoch=1, classes=[1]).inspect(model, test)
    assert model.training and model.fc2.weight.requires_grad and not model.conv1.weight.requires_grad
    model.conv1.weight.requires_grad_(True)
    model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_progress_callback_reports_epochs(tiny_backdoor):
    model, test, _ = tiny_backdoor
    calls = []
    NeuralCleanse(epochs=2, batches_per_epoch=1, classes=[0, 1], batched=False).inspect(
        model, test, progress=lambda done, total, info: calls.append((done, total))
    )
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_out_of_range_class_is_a_named_error(tiny_backdoor):
    model, test, _ = tiny_backdoor
    with pytest.raises(BackdoorLabError, match=r"class 12 is out of range 0\.\.9"):
        NeuralCleanse(epochs=1, classes=[0, 12]).inspect(model, test)
    with pytest.raises(BackdoorLabError, match="positive integer"):
        NeuralCleanse(epochs=0)


def test_trigger_and_unlearning_remove_the_backdoor(tiny_backdoor, nc_result):
    model, test, attack = tiny_backdoor
    trig = nc_result.trigger(0)
    assert trig.pattern.shape == (1, 14, 14) and trig.mask.shape == (1, 14, 14)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    asr = attack_success_rate(model, test, attack)
    recipe = TrainRecipe(epochs=3, batch_size=32, lr=0.01)
    repaired = unlearn(model, test, nc_result, recipe, gen=0, classes=[0])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert attack_success_rate(repaired, test, attack) < asr / 2
    assert accuracy(repaired, test) > 0.7
    with pytest.raises(BackdoorLabError, match="no reverse-engineered trigger"):
        unlearn(model, test, nc_result, classes=[11])
