"""Saha et al.'s hidden-trigger attack (attacks/hidden_trigger.py)."""

from __future__ import annotations

import math

import pytest
import torch

from backdoorlab.attacks.base import Attack
from backdoorlab.attacks.hidden_trigger import (
    HiddenTrigger,
    feature_extractor,
    generate_poisons,
    greedy_match,
    hungarian_match,
    quantize_within,
)
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError
from backdoorlab.triggers import random_color_patch, square

EPS = 16 / 255


class Net(torch.nn.Module):
    """A tiny conv net with named layers, like the library's models (feature_layer / head_layer)."""

    feature_layer = "fc1_relu"
    head_layer = "fc2"

    def __init__(self, c: int = 1, size: int = 8, k: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(c, 4, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.flatten = torch.nn.Flatten()
        self.fc1 = torch.nn.Linear(4 * size * size, 16)
        self.fc1_relu = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(16, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1_relu(self.fc1(self.flatten(self.relu(self.conv(x))))))


def _images(n: int, seed: int, c: int = 1, size: int = 8) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def _train(n_per: int = 20, k: int = 3, size: int = 8) -> ImageTensors:
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(n_per * k) % k
    images = torch.randint(20, 236, (n_per * k, 1, size, size), generator=g, dtype=torch.uint8)
    return ImageTensors(images, labels, tuple(str(i) for i in range(k)), name="tiny")


def _naive_greedy(d: torch.Tensor) -> torch.Tensor:
    """The sequential rule written out: take the global minimum (first in row-major order), drop row and col."""
    d = d.clone().double()
    perm = torch.full((d.shape[0],), -1)
    for _ in range(d.shape[0]):
        flat = int(d.argmin())
        r, c = divmod(flat, d.shape[1])
        perm[r] = c
        d[r, :] = math.inf
        d[:, c] = math.inf
    return perm


# -- matching ------------------------------------------------------------------------------------------------
def test_greedy_match_takes_global_minimum_first_hand_example():
    d = torch.tensor([[5.0, 1.0, 9.0], [2.0, 8.0, 3.0], [0.5, 7.0, 6.0]])
    # 0.5 (poison 2 ↔ source 0) first, then 1 (0 ↔ 1), then 3 (1 ↔ 2)
    assert greedy_match(d).tolist() == [1, 2, 0]
    # greedy differs from the optimum here: it takes 1 first and must then pay 100
    d2 = torch.tensor([[1.0, 2.0], [2.0, 100.0]])
    assert greedy_match(d2).tolist() == [0, 1]
    assert hungarian_match(d2).tolist() == [1, 0]


@pytest.mark.parametrize("k", [1, 2, 7, 40])
def test_greedy_match_is_one_to_one_and_equals_the_sequential_rule(k):
    g = torch.Generator().manual_seed(k)
    for trial in range(5):
        # small integers: many ties, which must be broken as the sequential argmin does
        d = torch.randint(0, 4 if trial % 2 else 1000, (k, k), generator=g).float()
        perm = greedy_match(d)
        assert sorted(perm.tolist()) == list(range(k))
        assert torch.equal(perm, _naive_greedy(d))


def test_matching_rejects_bad_matrices():
    with pytest.raises(BackdoorLabError, match="K×K"):
        greedy_match(torch.zeros(2, 3))
    with pytest.raises(BackdoorLabError, match="NaN"):
        greedy_match(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))


def test_hungarian_total_is_never_worse_than_greedy():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(30, 30, generator=g)
    ar = torch.arange(30)
    assert d[ar, hungarian_match(d)].sum() <= d[ar, greedy_match(d)].sum() + 1e-6


# -- features ------------------------------------------------------------------------------------------------
def test_feature_extractor_hooks_any_named_module_and_lists_names_on_error():
    net = Net()
    f = feature_extractor(net, "conv")
    x = _images(5, 0)
    out = f(x)
    assert out.shape == (5, 4 * 8 * 8)
    assert torch.allclose(out, net.conv(x).flatten(1))
    # eval mode during extraction (dropout off), the previous mode restored afterwards
    drop = torch.nn.Sequential(torch.nn.Dropout(0.9), torch.nn.Flatten())
    drop.train()
    g = feature_extractor(drop, "1")
    assert torch.equal(g(x), x.flatten(1)) and drop.training
    with pytest.raises(BackdoorLabError, match=r"valid names: .*conv.*fc1_relu"):
        feature_extractor(net, "fc7")


# -- Algorithm 1 ---------------------------------------------------------------------------------------------
def test_poisons_stay_in_eps_ball_and_loss_decreases():
    net = Net()
    t, s = _images(6, 1), _images(20, 2)
    kw = dict(eps=EPS, iterations=40, gen=0)
    res = generate_poisons(net, "fc1", t, s, square(3, 1.0), lr=1 / 255, step="sign", resample=False, **kw)
    z = res.poisons
    assert z.shape == t.shape
    assert float((z - t).abs().max()) <= EPS + 1e-6
    assert float(z.min()) >= 0 and float(z.max()) <= 1
    assert float((z - t).abs().max()) > EPS / 2  # it moved
    hist = res.loss_history[0]
    assert len(hist) == 40
    assert sum(hist[-5:]) < 0.7 * sum(hist[:5])
    # plain gradient steps (the paper's default) with fresh sources every iteration also decrease the loss
    res2 = generate_poisons(net, "fc1", t, s, square(3, 1.0), lr=0.5, **kw)
    h2 = res2.loss_history[0]
    assert sum(h2[-5:]) < 0.9 * sum(h2[:5])
    assert float((res2.poisons - t).abs().max()) <= EPS + 1e-6


def test_generation_is_seeded_and_batched():
    net = Net()
    t, s = _images(10, 1), _images(7, 2)  # fewer sources than K: drawn with replacement
    kw = dict(eps=EPS, iterations=3, lr=0.05, batch_size=4, matching="hungarian")
    a = generate_poisons(net, None, t, s, random_color_patch(3, channels=1), gen=5, **kw)
    b = generate_poisons(net, None, t, s, random_color_patch(3, channels=1), gen=5, **kw)
    assert torch.equal(a.poisons, b.poisons)
    assert len(a.loss_history) == 3 and a.iterations == [3, 3, 3]  # batches of 4, 4, 2
    assert a.target_idx.tolist() == list(range(10))
    kept = generate_poisons(net, None, t, s, random_color_patch(3, channels=1), gen=5, keep=4, **kw)
    assert len(kept.poisons) == 4
    assert torch.equal(kept.target_idx, torch.sort(a.final_losses).indices[:4].sort().values)
    assert float((kept.poisons - t[kept.target_idx]).abs().max()) <= EPS + 1e-6


def test_cached_source_features_give_the_same_poisons_as_fresh_forwards():
    net = Net()
    t, s = _images(8, 1), _images(30, 2)
    kw = dict(eps=EPS, iterations=6, lr=0.05, batch_size=4, gen=3)
    corner = square(3, 1.0, placement="bottom-right")
    fresh = generate_poisons(net, "fc1", t, s, corner, placement=None, cache_sources=False, **kw)
    cached = generate_poisons(net, "fc1", t, s, corner, placement=None, cache_sources=True, **kw)
    auto = generate_poisons(net, "fc1", t, s, corner, placement=None, **kw)  # 2 × 6 × 4 draws > 30: cached
    assert torch.allclose(fresh.poisons, cached.poisons, atol=1e-6)
    assert torch.equal(cached.poisons, auto.poisons)
    for a, b in zip(fresh.loss_history, cached.loss_history):
        assert a == pytest.approx(b, rel=1e-5)
    with pytest.raises(BackdoorLabError, match="cache_sources=True needs a fixed trigger placement"):
        generate_poisons(net, "fc1", t, s, corner, cache_sources=True, **kw)  # placement "random"
    bf = generate_poisons(net, "fc1", t, s, corner, placement=None, bf16=True, **kw)
    assert float((bf.poisons - t).abs().max()) <= EPS + 1e-6 and bf.poisons.dtype == torch.float32


def test_stop_loss_stops_a_batch_early():
    net = Net()
    res = generate_poisons(
        net, None, _images(4, 1), _images(4, 2), square(2), eps=EPS, iterations=50, stop_loss=1e9, gen=0
    )
    assert res.iterations == [0] and len(res.loss_history[0]) == 1
    assert torch.equal(res.poisons, _images(4, 1))


def test_generation_input_errors():
    net = Net()
    t, s = _images(4, 1), _images(4, 2)
    with pytest.raises(BackdoorLabError, match="larger than the 4 target images"):
        generate_poisons(net, None, t, s, square(2), eps=EPS, iterations=1, batch_size=5)
    with pytest.raises(BackdoorLabError, match=r"trigger of size 9×9 is larger than the 8×8"):
        generate_poisons(net, None, t, s, square(9), eps=EPS, iterations=1)
    with pytest.raises(BackdoorLabError, match="valid names"):
        generate_poisons(net, "nope", t, s, square(2), eps=EPS, iterations=1)
    with pytest.raises(BackdoorLabError, match="unknown matching"):
        generate_poisons(net, None, t, s, square(2), eps=EPS, iterations=1, matching="fast")
    with pytest.raises(BackdoorLabError, match="eps"):
        generate_poisons(net, None, t, s, square(2), eps=0.0, iterations=1)


def test_quantize_within_keeps_eps_on_the_uint8_grid():
    base = torch.tensor([0, 10, 100, 250], dtype=torch.uint8).view(1, 1, 2, 2)
    z = base.float() / 255 + torch.tensor([0.5, -0.5, 0.5, 0.5]).view(1, 1, 2, 2)
    q = quantize_within(z.clamp(0, 1), base, 10.4 / 255)
    assert q.flatten().tolist() == [10, 0, 110, 255]


# -- the attack ----------------------------------------------------------------------------------------------
def test_hidden_trigger_attack_replaces_target_images_with_clean_label_poisons():
    train = _train()
    net = Net()
    attack = HiddenTrigger(
        net, None, square(3, 1.0), source=0, target=1, count=4, iterations=5, lr=0.5, step="sign"
    )
    assert isinstance(attack, Attack)
    ps = attack.poison(train, torch.Generator().manual_seed(0))
    idx = ps.poison_idx
    assert len(idx) == 4
    assert (train.labels[idx] == 1).all() and (ps.original_labels == 1).all()
    assert torch.equal(ps.data.labels, train.labels)  # labels never change
    diff = (ps.data.images.int() - train.images.int()).abs()
    assert int(diff.max()) <= 16 and int(diff[idx].max()) > 0
    others = torch.ones(len(train), dtype=torch.bool)
    others[idx] = False
    assert torch.equal(ps.data.images[others], train.images[others])  # no trigger anywhere else
    assert ps.data.images.dtype == torch.uint8
    assert attack.victim_mask(torch.tensor([0, 1, 2])).tolist() == [True, False, False]
    assert attack.target_labels(torch.tensor([0, 2])).tolist() == [1, 1]
    x = torch.zeros(3, 1, 8, 8)
    assert int((attack.apply_trigger(x, torch.Generator().manual_seed(0)) > 0).sum()) == 3 * 9


def test_oversample_keeps_lowest_loss_and_add_mode_appends():
    train = _train()
    net = Net()
    attack = HiddenTrigger(net, None, square(2), 0, 1, 3, iterations=2, lr=0.05, oversample=2.0)
    ps = attack.poison(train, torch.Generator().manual_seed(1))
    assert attack.last_result is not None and len(attack.last_result.poisons) == 3
    assert len(ps.poison_idx) == 3
    add = HiddenTrigger(net, None, square(2), [0, 2], 1, 3, iterations=2, lr=0.05, insert="add")
    pa = add.poison(train, torch.Generator().manual_seed(1))
    assert len(pa.data) == len(train) + 3
    assert pa.poison_idx.tolist() == [len(train), len(train) + 1, len(train) + 2]
    assert (pa.data.labels[pa.poison_idx] == 1).all()
    assert torch.equal(pa.data.images[: len(train)], train.images)


def test_attack_input_errors():
    net = Net()
    with pytest.raises(BackdoorLabError, match="source and target must differ"):
        HiddenTrigger(net, None, square(2), source=1, target=1)
    with pytest.raises(BackdoorLabError, match="valid names"):
        HiddenTrigger(net, "fc8", square(2), source=0, target=1)
    train = _train(n_per=5)
    with pytest.raises(BackdoorLabError, match="only 5 of class 1"):
        HiddenTrigger(net, None, square(2), 0, 1, count=6, iterations=1).poison(train, torch.Generator())
    with pytest.raises(BackdoorLabError, match="larger than the 8×8"):
        HiddenTrigger(net, None, square(9), 0, 1, count=2, iterations=1).poison(train, torch.Generator())


def test_attack_batch_size_above_the_poison_count_is_one_batch_not_a_clamp():
    """``batch_size`` (K) above the generated count only caps the mini-batch: one batch holding every poison,
    the same poisons as K = count; the count itself is never lowered (too many poisons raise, naming it)."""
    train = _train()
    net = Net()
    kw = dict(iterations=3, lr=0.05, step="sign")
    big = HiddenTrigger(net, None, square(2), 0, 1, 3, batch_size=50, **kw)
    exact = HiddenTrigger(net, None, square(2), 0, 1, 3, batch_size=3, **kw)
    a = big.poison(train, torch.Generator().manual_seed(2))
    b = exact.poison(train, torch.Generator().manual_seed(2))
    assert big.last_result is not None and len(big.last_result.iterations) == 1
    assert len(a.poison_idx) == 3 and torch.equal(a.data.images, b.data.images)
    with pytest.raises(BackdoorLabError, match=r"needs 40 target-class images \(count 20 × oversample 2\)"):
        HiddenTrigger(net, None, square(2), 0, 1, 20, oversample=2.0, batch_size=50, **kw).poison(
            train, torch.Generator()
        )
