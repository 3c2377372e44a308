"""VGG with BatchNorm, CIFAR style (Simonyan & Zisserman 2015, configurations A = VGG-11 and E = VGG-19).

Each 3×3 conv is followed by BatchNorm and ReLU; five 2×2 max-pools divide the image by 32. The classifier is
the usual CIFAR one: a single ``Linear(512, num_classes)`` on the 512-channel map. At 32×32 that map is 1×1,
exactly the standard CIFAR VGG. For other sizes the max-pools use ``ceil_mode`` (28 → 14 → 7 → 4 → 2 → 1)
and an adaptive average pool reduces whatever is left to 1×1, so any input size works (sizes ≥ 16 keep every
pool meaningful; smaller images just repeat 1×1 pools).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from backdoorlab.models.normalize import Normalize

Stats = float | Sequence[float] | None

# channels per conv, grouped by the max-pool that ends each block
CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


class VGG(nn.Module):
    """VGG-BN for small images.

    Hookable layers: ``convs.conv{b}_{i}``, ``convs.bn{b}_{i}``, ``convs.relu{b}_{i}``, ``convs.pool{b}`` for
    block ``b`` and conv ``i`` (1-based); :attr:`last_conv_layer` is the last ReLU; ``pool`` (adaptive pool +
    flatten, the 512-d penultimate features, :attr:`feature_layer`); ``fc`` (logits).
    """

    feature_layer = "pool"
    head_layer = "fc"

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int | tuple[int, int] = 32,
        mean: Stats = None,
        std: Stats = None,
        config: Sequence[Sequence[int]] = CONFIGS["vgg11"],
    ) -> None:
        super().__init__()
        self.normalize = Normalize.for_channels(in_channels, mean, std)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        ch = in_channels
        last = ""
        for b, block in enumerate(config, start=1):
            for i, out in enumerate(block, start=1):
                layers[f"conv{b}_{i}"] = nn.Conv2d(ch, out, 3, padding=1, bias=False)
                layers[f"bn{b}_{i}"] = nn.BatchNorm2d(out)
                layers[f"relu{b}_{i}"] = nn.ReLU()
                last, ch = f"convs.relu{b}_{i}", out
            layers[f"pool{b}"] = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.convs = nn.Sequential(layers)
        self.last_conv_layer = last
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(ch, num_classes)
        self.feature_dim = ch

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 512-d penultimate features of raw [0, 1] images."""
        return self.pool(self.convs(self.normalize(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def vgg11(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int | tuple[int, int] = 32,
    mean: Stats = None,
    std: Stats = None,
) -> VGG:
    """VGG-11 with BatchNorm (configuration A)."""
    return VGG(in_channels, num_classes, input_size, mean, std, config=CONFIGS["vgg11"])


def vgg19(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int | tuple[int, int] = 32,
    mean: Stats = None,
    std: Stats = None,
) -> VGG:
    """VGG-19 with BatchNorm (configuration E)."""
    return VGG(in_channels, num_classes, input_size, mean, std, config=CONFIGS["vgg19"])
