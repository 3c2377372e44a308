"""The simplified AlexNet of Saha et al., "Hidden Trigger Backdoor Attacks" (AAAI 2020), §4.4.

The paper fixes: four conv layers with 64, 192, 384 and 256 kernels, the first 5×5 with stride 1; two fully
connected layers with 512 and ``num_classes`` units; no dropout. The rest is our choice, following AlexNet:

| name            | layer                              | 32×32 output |
| --------------- | ---------------------------------- | ------------ |
| conv1, relu     | 5×5×64, stride 1, pad 2            | 64×32×32     |
| pool1           | max 2×2                            | 64×16×16     |
| conv2, relu     | 5×5×192, pad 2                     | 192×16×16    |
| pool2           | max 2×2                            | 192×8×8      |
| conv3, relu     | 3×3×384, pad 1                     | 384×8×8      |
| conv4, relu     | 3×3×256, pad 1                     | 256×8×8      |
| pool3           | max 2×2                            | 256×4×4      |
| fc1, relu       | 512 ("fc7": the feature space)     | 512          |
| fc2             | num_classes ("fc8")                | logits       |

Max-pools use ``ceil_mode`` so 28×28 inputs give 4×4 too; the flatten size is measured with a dummy forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from backdoorlab.models.normalize import Normalize

Stats = float | Sequence[float] | None


class AlexNetSmall(nn.Module):
    """Saha et al.'s CIFAR AlexNet.

    Hookable layers: ``conv1``..``conv4`` with ``conv{i}_relu``, ``pool1``..``pool3``, ``fc1``/``fc1_relu``
    and ``fc2``. ``fc1_relu`` (:attr:`feature_layer`) is the 512-d feature space the hidden-trigger attack
    matches in (the paper's fc7); :meth:`features` returns it. ``conv4_relu`` is :attr:`last_conv_layer`.
    """

    feature_layer = "fc1_relu"
    last_conv_layer = "conv4_relu"
    head_layer = "fc2"

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: int | tuple[int, int] = 32,
        mean: Stats = None,
        std: Stats = None,
    ) -> None:
        super().__init__()
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        self.normalize = Normalize.for_channels(in_channels, mean, std)
        self.conv1 = nn.Conv2d(in_channels, 64, 5, stride=1, padding=2)
        self.conv1_relu = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(64, 192, 5, padding=2)
        self.conv2_relu = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(192, 384, 3, padding=1)
        self.conv3_relu = nn.ReLU()
        self.conv4 = nn.Conv2d(384, 256, 3, padding=1)
        self.conv4_relu = nn.ReLU()
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.flatten = nn.Flatten()
        with torch.no_grad():
            flat = self._convs(torch.zeros(1, in_channels, h, w)).flatten(1).shape[1]
        self.fc1 = nn.Linear(flat, 512)
        self.fc1_relu = nn.ReLU()
        self.fc2 = nn.Linear(512, num_classes)
        self.feature_dim = 512

    def _convs(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1_relu(self.conv1(x)))
        x = self.pool2(self.conv2_relu(self.conv2(x)))
        x = self.conv4_relu(self.conv4(self.conv3_relu(self.conv3(x))))
        return self.pool3(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 512-d fc7-like features (after ``fc1`` + ReLU) of raw [0, 1] images."""
        return self.fc1_relu(self.fc1(self.flatten(self._convs(self.normalize(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))
