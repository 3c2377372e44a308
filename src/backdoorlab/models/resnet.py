"""CIFAR-style residual networks.

* :class:`SmallResNet` (``resnet_small``) — the small pre-activation ResNet of AdvTrojan Table 6, which is the
  CIFAR-10 ResNet of Madry et al. (as used by Turner et al.'s label-consistent attack) at widths
  16/16/32/64: a 3×3×16 conv, three stages of 5 residual units (3×3 convs, strides 1, 2, 2), each unit
  pre-activated with BatchNorm + LeakyReLU(0.1), then BatchNorm + LeakyReLU, global average pool and a dense
  layer. As in Madry's code the shortcut has no parameters: average-pool by the stride and zero-pad the new
  channels; the first unit activates before splitting into residual and shortcut.
* :class:`CifarResNet` (``resnet18``, ``resnet34``) — He et al.'s BasicBlock ResNet adapted to 32×32 images
  the usual CIFAR way: 3×3 stride-1 stem, no max-pool, stages of 64/128/256/512 channels with strides 1/2/2/2,
  1×1-conv projection shortcuts, global average pool. Works for any input size (28×28 → 4×4 before pooling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backdoorlab.errors import BackdoorLabError
from backdoorlab.models.normalize import Normalize

Stats = float | Sequence[float] | None


def _pool_flatten() -> nn.Sequential:
    """Global average pool to a flat vector (one module, so it can be hooked by name)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


# -- Madry / Turner small ResNet -------------------------------------------------------------------------
class PreActUnit(nn.Module):
    """Madry's residual unit: BN-LReLU-conv3×3(stride)-BN-LReLU-conv3×3 plus a parameter-free shortcut."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, activate_before_residual: bool, slope: float
    ) -> None:
        super().__init__()
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        self.activate_before_residual = activate_before_residual
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.act1 = nn.LeakyReLU(slope)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act2 = nn.LeakyReLU(slope)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        shortcut = pre if self.activate_before_residual else x
        out = self.conv2(self.act2(self.bn2(self.conv1(pre))))
        if self.stride > 1:
            # ceil_mode keeps the shortcut the same size as the stride-s 'same' conv on odd sizes
            shortcut = F.avg_pool2d(shortcut, self.stride, self.stride, ceil_mode=True)
        if self.out_ch != self.in_ch:
            extra = self.out_ch - self.in_ch
            shortcut = F.pad(shortcut, (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return out + shortcut


class SmallResNet(nn.Module):
    """AdvTrojan Table 6 / Madry CIFAR ResNet: stem ``filters[0]``, stages ``filters[1:]`` of ``units`` units.

    Hookable layers: ``stem``, ``stage1``..``stage3``, ``final_bn``, ``final_act`` (last conv feature map,
    :attr:`last_conv_layer`), ``pool`` (pooled penultimate features, :attr:`feature_layer`), ``fc`` (logits).
    """

    feature_layer = "pool"
    last_conv_layer = "final_act"
    head_layer = "fc"

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int | tuple[int, int] = 32,
        mean: Stats = None,
        std: Stats = None,
        filters: Sequence[int] = (16, 16, 32, 64),
        units: int = 5,
        strides: Sequence[int] = (1, 2, 2),
        leaky_slope: float = 0.1,
    ) -> None:
        super().__init__()
        filters, strides = [int(f) for f in filters], [int(s) for s in strides]
        if len(filters) != len(strides) + 1 or min(filters) < 1:
            raise BackdoorLabError(
                f"resnet_small option 'filters' needs the stem width and one positive width per stage "
                f"({len(strides) + 1} numbers), got {filters}"
            )
        if int(units) < 1:
            raise BackdoorLabError(f"resnet_small option 'units' must be ≥ 1, got {units}")
        if min(strides) < 1:
            raise BackdoorLabError(f"resnet_small option 'strides' must be ≥ 1, got {strides}")
        self.normalize = Normalize.for_channels(in_channels, mean, std)
        self.stem = nn.Conv2d(in_channels, filters[0], 3, stride=1, padding=1, bias=False)
        for i, stride in enumerate(strides):
            blocks = [
                PreActUnit(
                    filters[i] if u == 0 else filters[i + 1],
                    filters[i + 1],
                    stride if u == 0 else 1,
                    activate_before_residual=(i == 0 and u == 0),
                    slope=leaky_slope,
                )
                for u in range(int(units))
            ]
            self.add_module(f"stage{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(strides)
        self.final_bn = nn.BatchNorm2d(filters[-1])
        self.final_act = nn.LeakyReLU(leaky_slope)
        self.pool = _pool_flatten()
        self.fc = nn.Linear(filters[-1], num_classes)
        self.feature_dim = filters[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled penultimate features (``filters[-1]`` wide) of raw [0, 1] images."""
        x = self.stem(self.normalize(x))
        for i in range(self.num_stages):
            x = getattr(self, f"stage{i + 1}")(x)
        return self.pool(self.final_act(self.final_bn(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


# -- CIFAR ResNet-18/34 ----------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus shortcut (1×1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """BasicBlock ResNet for small images (He et al. 2016, CIFAR variant: 3×3 stem, no max-pool).

    ``blocks`` is the number of blocks per stage ((2, 2, 2, 2) for ResNet-18, (3, 4, 6, 3) for ResNet-34);
    ``width`` is the first stage's channels (64 as in the paper; smaller for quick CPU runs).
    Hookable layers: ``conv1``, ``bn1``, ``relu``, ``layer1``..``layer4`` (``layer4`` is the last conv feature
    map, :attr:`last_conv_layer`), ``pool`` (penultimate features, :attr:`feature_layer`), ``fc`` (logits).
    """

    feature_layer = "pool"
    last_conv_layer = "layer4"
    head_layer = "fc"

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int | tuple[int, int] = 32,
        mean: Stats = None,
        std: Stats = None,
        blocks: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
    ) -> None:
        super().__init__()
        blocks = [int(b) for b in blocks]
        if len(blocks) != 4 or min(blocks) < 1:
            raise BackdoorLabError(f"resnet option 'blocks' needs 4 positive counts, got {blocks}")
        if int(width) < 1:
            raise BackdoorLabError(f"resnet option 'width' must be ≥ 1, got {width}")
        widths = [int(width) * m for m in (1, 2, 4, 8)]
        self.normalize = Normalize.for_channels(in_channels, mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        in_ch = widths[0]
        for i, (n, out_ch, stride) in enumerate(zip(blocks, widths, (1, 2, 2, 2))):
            layers = [
                BasicBlock(in_ch if b == 0 else out_ch, out_ch, stride if b == 0 else 1) for b in range(n)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            in_ch = out_ch
        self.pool = _pool_flatten()
        self.fc = nn.Linear(widths[-1], num_classes)
        self.feature_dim = widths[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled penultimate features (``8 × width`` wide) of raw [0, 1] images."""
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def resnet18(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int | tuple[int, int] = 32,
    mean: Stats = None,
    std: Stats = None,
    width: int = 64,
) -> CifarResNet:
    """CIFAR ResNet-18 (blocks 2, 2, 2, 2)."""
    return CifarResNet(in_channels, num_classes, input_size, mean, std, blocks=(2, 2, 2, 2), width=width)


def resnet34(
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int | tuple[int, int] = 32,
    mean: Stats = None,
    std: Stats = None,
    width: int = 64,
) -> CifarResNet:
    """CIFAR ResNet-34 (blocks 3, 4, 6, 3)."""
    return CifarResNet(in_channels, num_classes, input_size, mean, std, blocks=(3, 4, 6, 3), width=width)
