"""Trigger sensitivity (Li et al. 2021, Sec. 3.2, Figs. 4–5) and saliency maps (Sec. 5.4, Fig. 10)."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

from backdoorlab.analysis.saliency import plot_saliency_grid, saliency, saliency_rows
from backdoorlab.analysis.sensitivity import (
    Heatmap,
    plot_heatmap,
    plot_value_sweep,
    position_heatmap,
    value_sweep,
    with_value,
)
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError
from backdoorlab.triggers import li_badnets, square

TARGET = 2
AT = (3, 4)  # where the hand-made model looks for its trigger


class PatchDetector(torch.nn.Module):
    """Predicts ``TARGET`` iff the 3×3 window at ``AT`` is bright (mean > threshold) and pixel (0, 0) is
    dark; otherwise class 0. The threshold is per image: ``base + pixel (0, 1)``."""

    def __init__(self, base: float = 0.9) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, c = AT
        window = x[:, 0, r : r + 3, c : c + 3].mean((1, 2))
        fire = (window > self.base + x[:, 0, 0, 1]) & (x[:, 0, 0, 0] < 0.5)
        logits = torch.zeros(len(x), 3) + self.dummy
        logits[:, 0] = 0.5
        logits[fire, TARGET] = 1.0
        return logits


@pytest.fixture
def data() -> ImageTensors:
    gen = torch.Generator().manual_seed(0)
    n = 30
    images = (torch.rand(n, 1, 12, 12, generator=gen) * 100).to(torch.uint8)  # dark: ≤ 100/255
    labels = torch.arange(n) % 3
    images[:, 0, 0, 1] = 0  # the detector's per-image threshold offset (varied in the value sweep)
    images[labels == TARGET, 0, 0, 0] = 255  # target-class images never fire: they must be excluded
    return ImageTensors(images, labels, ("a", "b", "c"), name="toy")


def test_heatmap_is_one_exactly_at_the_detector_position(data: ImageTensors) -> None:
    model = PatchDetector(base=0.9)
    model.train()
    trigger = square(3, 1.0, placement=AT)
    calls = []
    hm = position_heatmap(
        model, data, trigger, TARGET, batch_size=97, progress=lambda d, t, _: calls.append((d, t))
    )
    assert isinstance(hm, Heatmap)
    assert hm.asr.shape == (10, 10)
    assert torch.equal(hm.rows, torch.arange(10)) and torch.equal(hm.cols, torch.arange(10))
    expected = torch.zeros(10, 10)
    expected[AT] = 1.0
    assert torch.equal(hm.asr, expected)
    assert hm.at(*AT) == 1.0
    assert hm.trained_at == AT
    assert model.training  # mode restored
    assert calls[-1][0] == calls[-1][1] == -(-20 * 100 // 97)


def test_heatmap_stride_and_max_images(data: ImageTensors) -> None:
    model = PatchDetector(base=0.9)
    hm = position_heatmap(model, data, square(3, 1.0), TARGET, stride=3, max_images=5)
    assert torch.equal(hm.rows, torch.tensor([0, 3, 6, 9]))
    assert torch.equal(hm.cols, torch.tensor([0, 3, 6, 9]))
    assert hm.asr[1, 1] == 0  # (3, 3) is one pixel off the detector's window
    assert hm.trained_at == (9, 9)  # bottom-right corner of a 12×12 image
    hm2 = position_heatmap(model, data, square(3, 1.0), TARGET, stride=1, max_images=5)
    assert float(hm2.asr.sum()) == 1.0


def test_heatmap_errors(data: ImageTensors) -> None:
    model = PatchDetector()
    with pytest.raises(BackdoorLabError, match="stride"):
        position_heatmap(model, data, square(3), TARGET, stride=0)
    with pytest.raises(BackdoorLabError, match="larger than"):
        position_heatmap(model, data, square(13), TARGET)
    only_target = data.subset((data.labels == TARGET).nonzero().squeeze(1))
    with pytest.raises(BackdoorLabError, match="no test image"):
        position_heatmap(model, only_target, square(3), TARGET)


def test_value_sweep_monotone_at_trigger_placement(data: ImageTensors) -> None:
    # the detector's threshold varies per image, so ASR rises gradually with the trigger value
    images = data.images.clone()
    images[:, 0, 0, 1] = torch.linspace(0, 60, len(images)).to(torch.uint8)
    varied = data.with_images(images)
    model = PatchDetector(base=0.3)
    trigger = square(3, 128 / 255, placement=AT)
    values, asr = value_sweep(model, varied, trigger, TARGET)
    assert torch.equal(values, torch.arange(0, 256, 16).float())
    assert bool((asr[1:] >= asr[:-1]).all())
    assert asr[0] == 0 and asr[-1] == 1
    assert 0 < float(asr[8]) < 1
    # a trigger elsewhere never fires
    _, off = value_sweep(model, varied, square(3, 1.0, placement=(0, 8)), TARGET, values=[255])
    assert float(off[0]) == 0


def test_with_value_keeps_zeros() -> None:
    t = li_badnets("0-128")
    v = with_value(t, 1.0)
    assert torch.equal(v.pattern == 0, t.pattern == 0)
    assert torch.equal(v.pattern[t.pattern > 0], torch.ones(int((t.pattern > 0).sum())))
    assert v.placement is t.placement


def test_plots_return_figures() -> None:
    hm = Heatmap(torch.rand(4, 5), torch.arange(0, 8, 2), torch.arange(5), trained_at=(2, 3))
    assert isinstance(plot_heatmap(hm, "t"), Figure)
    values = torch.arange(0, 256, 16)
    asr = torch.linspace(0, 1, len(values))
    assert isinstance(plot_value_sweep(values, asr, original=128), Figure)
    assert isinstance(plot_value_sweep(values.tolist(), asr.tolist()), Figure)


# -- saliency (Li Sec. 5.4) -------------------------------------------------------------------------------
def one_pixel_model(pixel: tuple[int, int, int] = (1, 2, 5)) -> torch.nn.Module:
    """A linear 3×8×8 → 2 classifier that reads a single pixel (class 0: +, class 1: −)."""
    lin = torch.nn.Linear(3 * 8 * 8, 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        flat = pixel[0] * 64 + pixel[1] * 8 + pixel[2]
        lin.weight[0, flat] = 2.0
        lin.weight[1, flat] = -1.0
        lin.bias[1] = 0.5
    return torch.nn.Sequential(torch.nn.Flatten(), lin)


def test_saliency_marks_the_pixel_the_model_reads() -> None:
    model = one_pixel_model()
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    maps = saliency(model, x, batch_size=2)
    assert maps.shape == (5, 8, 8)
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    expected = torch.zeros(8, 8)
    expected[2, 5] = 1.0
    assert torch.equal(maps, expected.expand(5, 8, 8))
    assert torch.equal(saliency(model, x, labels=torch.ones(5, dtype=torch.long)), maps)
    assert model.training
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q) and p.grad is None
    assert not x.requires_grad


def test_saliency_zero_gradient_gives_zero_map() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    with torch.no_grad():
        model[1].weight.zero_()
    maps = saliency(model, torch.rand(2, 1, 8, 8))
    assert torch.equal(maps, torch.zeros(2, 8, 8))


def test_saliency_grid_figure() -> None:
    model = one_pixel_model()
    x = torch.rand(3, 3, 8, 8)
    rows = saliency_rows(model, {"clean": x, "triggered": x.clamp(0.5, 1)}, prefix="standard: ")
    assert list(rows) == ["standard: clean", "standard: triggered"]
    fig = plot_saliency_grid(rows, max_images=2, title="Fig. 10")
    assert isinstance(fig, Figure)
    gray = {"clean": (torch.rand(1, 1, 8, 8), torch.rand(1, 8, 8))}
    assert isinstance(plot_saliency_grid(gray), Figure)
    with pytest.raises(BackdoorLabError):
        plot_saliency_grid({})
