"""Fine-Pruning (Liu et al. 2018) with Li et al.'s split-half grid search: activations, masking, selection."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from backdoorlab.attacks.badnets import BadNets
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.defenses.fine_pruning import (
    DEFAULT_FRACTIONS,
    FinePruning,
    channel_activations,
    evaluate_pruning_curve,
    prune,
    pruning_mask,
    pruning_order,
)
from backdoorlab.errors import BackdoorLabError
from backdoorlab.metrics import accuracy, attack_success_rate
from backdoorlab.models.lenet import LeNet
from backdoorlab.training import TrainRecipe
from backdoorlab.triggers import square


class HandBackdoored(nn.Module):
    """A 4-channel net built by hand: channels 0-2 detect the toy classes, channel 3 is the backdoor.

    The toy class ``c`` has a bright row ``2c + 1``; channel ``c`` averages that row. Channel 3 averages
    the bottom-right 2×2 corner, fires only when the trigger is there (it is dormant on clean data) and
    drives class 0.
    """

    last_conv_layer = "act"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=8)
        self.act = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            w = torch.zeros(4, 1, 8, 8)
            for c in range(3):
                w[c, 0, 2 * c + 1, :] = 1 / 8
            w[3, 0, 6:, 6:] = 1 / 4
            self.conv.weight.copy_(w)
            self.conv.bias.copy_(torch.tensor([-0.5, -0.5, -0.5, -0.6]))
            head = torch.zeros(3, 4)
            head[0, 0], head[1, 1], head[2, 2] = 10.0, 10.0, 10.0
            head[0, 3] = 20.0
            self.fc.weight.copy_(head)
            self.fc.bias.copy_(torch.tensor([-1.0, 0.0, 0.0]))  # all channels off → not class 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.act(self.conv(x))))


@pytest.fixture
def hand() -> HandBackdoored:
    return HandBackdoored()


@pytest.fixture
def attack() -> BadNets:
    return BadNets(trigger=square(2), target=0)


def _rows(data: ImageTensors) -> set[bytes]:
    return {img.numpy().tobytes() for img in data.images}


def test_hand_model_is_backdoored(hand, toy, attack):
    assert accuracy(hand, toy) == 1.0
    assert attack_success_rate(hand, toy, attack) == 1.0


def test_channel_activations_match_a_manual_hook(toy):
    torch.manual_seed(0)
    model = LeNet(1, 3, input_size=8)
    acts = channel_activations(model, None, toy, batch_size=64)  # default: last_conv_layer = conv2_relu
    seen = []
    handle = model.conv2_relu.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    with torch.no_grad():
        model.eval()
        model(toy.float01())
    handle.remove()
    expected = seen[0].mean(dim=(0, 2, 3))
    assert acts.shape == (64,)
    torch.testing.assert_close(acts, expected, rtol=1e-5, atol=1e-6)
    # a 2-D (N×C) output is averaged over the images only
    fc = channel_activations(model, "fc1", toy)
    assert fc.shape == (1000,)


def test_unknown_layer_is_a_named_error(toy):
    model = LeNet(1, 3, input_size=8)
    with pytest.raises(BackdoorLabError, match=r"'conv9' is not a module of this LeNet.*conv2_relu"):
        channel_activations(model, "conv9", toy)
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with pytest.raises(BackdoorLabError, match="no last_conv_layer"):
        channel_activations(plain, None, toy)


def test_order_is_ascending_mean_activation(hand, toy):
    acts = channel_activations(hand, None, toy)
    order = pruning_order(acts)
    assert torch.all(acts[order][1:] >= acts[order][:-1])
    assert int(order[0]) == 3  # the backdoor channel is dormant on clean data
    assert float(acts[3]) == 0.0


def test_prune_masks_exactly_those_channels_and_keeps_weights(toy):
    torch.manual_seed(0)
    model = LeNet(1, 3, input_size=8).eval()
    order = pruning_order(channel_activations(model, None, toy))
    pruned = prune(model, None, order, 5)
    cut = set(order[:5].tolist())

    def grab(m: nn.Module) -> torch.Tensor:
        out = []
        handle = m.conv2_relu.register_forward_hook(lambda mod, a, o: out.append(o.detach()))
        with torch.no_grad():
            m(toy.float01())
        handle.remove()
        return out[0]

    before, after = grab(model), grab(pruned)
    for c in range(64):
        if c in cut:
            assert torch.all(after[:, c] == 0)
        else:
            torch.testing.assert_close(after[:, c], before[:, c])
    # weights untouched, state dict keys unchanged, the original is not pruned
    sd0, sd1 = model.state_dict(), pruned.state_dict()
    assert sd0.keys() == sd1.keys()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert pruning_mask(model) is None
    mask = pruning_mask(pruned)
    assert mask is not None and int((mask == 0).sum()) == 5
    # survives deepcopy and works with the metrics
    again = copy.deepcopy(pruned)
    torch.testing.assert_close(grab(again), after)
    assert 0.0 <= accuracy(again, toy) <= 1.0


def test_fractions_are_validated():
    for bad in ([1.0], [-0.1], [0.2, 1.5], []):
        with pytest.raises(BackdoorLabError, match="fraction"):
            FinePruning(fractions=bad)
    with pytest.raises(BackdoorLabError, match="max_acc_drop"):
        FinePruning(max_acc_drop=2.0)
    assert FinePruning().fractions == DEFAULT_FRACTIONS
    assert DEFAULT_FRACTIONS[0] == 0.0 and DEFAULT_FRACTIONS[-1] == 0.95 and len(DEFAULT_FRACTIONS) == 20


def test_curve_rows(hand, toy, attack):
    curve = evaluate_pruning_curve(hand, toy, fractions=[0.0, 0.25, 0.5], attack=attack)
    assert [r["pruned"] for r in curve] == [0, 1, 2]
    assert curve[0]["asr"] == 1.0 and curve[1]["asr"] == 0.0
    assert curve[1]["accuracy"] == 1.0 and curve[2]["accuracy"] < 0.9


@pytest.mark.parametrize("with_attack", [True, False])
def test_repair_prunes_the_dormant_backdoor_channel(hand, toy, attack, with_attack):
    result = FinePruning(seed=1).repair(hand, toy, attack=attack if with_attack else None)
    # the grid search picked a fraction of the grid that prunes exactly the backdoor channel
    assert result.fraction in DEFAULT_FRACTIONS
    assert result.pruned == 1 and result.channels == 4 and int(result.order[0]) == 3
    assert result.rule == ("min-asr" if with_attack else "max-prune")
    assert len(result.curve) == len(DEFAULT_FRACTIONS)
    assert ("asr" in result.curve[0]) is with_attack
    assert result.seconds > 0
    # Li's protocol: disjoint validation and test halves that cover the test set
    val, test = _rows(result.validation), _rows(result.test)
    assert len(val) + len(test) == len(toy) == len(_rows(toy))
    assert not val & test and val | test == _rows(toy)
    assert abs(len(result.validation) - len(result.test)) <= 3
    # reported on the held-out half: the backdoor is gone, clean accuracy kept
    assert attack_success_rate(hand, result.test, attack) == 1.0
    assert attack_success_rate(result.model, result.test, attack) == 0.0
    assert accuracy(result.model, result.test) == 1.0
    assert pruning_mask(hand) is None  # the input model is untouched


def test_repair_with_given_validation_and_finetune(hand, toy, attack):
    val, test = toy.split(0.5, seed=3)
    result = FinePruning(fractions=[0.0, 0.25, 0.5], finetune=TrainRecipe(epochs=1, batch_size=32)).repair(
        hand, test, validation=val, attack=attack
    )
    assert result.validation is val and result.test is test
    assert result.fraction == 0.25 and len(result.history) == 1
    mask = pruning_mask(result.model)
    assert mask is not None and mask[3] == 0  # fine-tuning keeps the pruned channel masked
    summary = result.to_dict()
    assert summary["pruned"] == 1 and summary["order"][0] == 3
