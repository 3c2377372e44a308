"""LeNet exactly as in AdvTrojan (Table 6, "Structure of Classifiers").

| layer       | parameter              | padding | activation |
| ----------- | ---------------------- | ------- | ---------- |
| conv1       | 5×5×32, stride 2       | same    | ReLU       |
| conv2       | 5×5×64, stride 2       | same    | ReLU       |
| flatten     |                        |         |            |
| fc1         | 1000                   |         | ReLU       |
| fc2         | num_classes            |         | (softmax)  |

The softmax is left to the loss: ``forward`` returns logits. 'Same' padding with stride 2 and a 5×5 kernel is
padding 2 (output ``ceil(n / 2)``), so a 28×28 image becomes 7×7×64 = 3136 features before ``fc1``. The
flatten size is measured with a dummy forward, so any input size works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from backdoorlab.models.normalize import Normalize


class LeNet(nn.Module):
    """AdvTrojan's LeNet on ``in_channels × H × W`` inputs in [0, 1].

    Hookable layers (module names): ``conv1``, ``conv1_relu``, ``conv2``, ``conv2_relu`` (last conv feature
    map, :attr:`last_conv_layer`), ``fc1``, ``fc1_relu`` (the 1000-d penultimate features that
    :meth:`features` returns, :attr:`feature_layer`) and ``fc2`` (logits). Activations are not in-place so a
    hook on a conv or linear layer sees its pre-activation output.
    """

    feature_layer = "fc1_relu"
    last_conv_layer = "conv2_relu"
    head_layer = "fc2"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int | tuple[int, int] = 28,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        self.normalize = Normalize.for_channels(in_channels, mean, std)
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=5, stride=2, padding=2)
        self.conv1_relu = nn.ReLU()
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, stride=2, padding=2)
        self.conv2_relu = nn.ReLU()
        self.flatten = nn.Flatten()
        with torch.no_grad():
            flat = self._convs(torch.zeros(1, in_channels, h, w)).flatten(1).shape[1]
        self.fc1 = nn.Linear(flat, 1000)
        self.fc1_relu = nn.ReLU()
        self.fc2 = nn.Linear(1000, num_classes)
        self.feature_dim = 1000

    def _convs(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2_relu(self.conv2(self.conv1_relu(self.conv1(x))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1000-d penultimate activations (after ``fc1`` + ReLU) of raw [0, 1] images."""
        return self.fc1_relu(self.fc1(self.flatten(self._convs(self.normalize(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))
