"""The ImageNet AlexNet of Krizhevsky et al. (NeurIPS 2012), in the common one-GPU layout.

This is the paper-scale victim of Saha et al. (Hidden Trigger Backdoor Attacks, AAAI 2020) and Sun et al.
(Poisoned classifiers are not only backdoored, 2020): an ImageNet-pretrained AlexNet whose fc8 (or fc6–fc8) is
re-initialised and fine-tuned. Every layer is a top-level module named after the paper, and ``forward`` is the
chain of the top-level modules in registration order, so a victim can be trained on the cached output of any
of them. Weights in torchvision's key layout are imported by :mod:`backdoorlab.models.convert`.

| name                     | layer                                    | 224×224 output |
| ------------------------ | ---------------------------------------- | -------------- |
| normalize                | (x − mean) / std per channel             | 3×224×224      |
| conv1, conv1_relu        | 11×11×64, stride 4, pad 2                | 64×55×55       |
| pool1                    | max 3×3, stride 2                        | 64×27×27       |
| conv2, conv2_relu        | 5×5×192, pad 2                           | 192×27×27      |
| pool2                    | max 3×3, stride 2                        | 192×13×13      |
| conv3, conv3_relu        | 3×3×384, pad 1                           | 384×13×13      |
| conv4, conv4_relu        | 3×3×256, pad 1                           | 256×13×13      |
| conv5, conv5_relu        | 3×3×256, pad 1                           | 256×13×13      |
| pool5                    | max 3×3, stride 2                        | 256×6×6        |
| avgpool, flatten         | adaptive average pool to 6×6             | 9216           |
| fc6_dropout, fc6, relu   | dropout, 4096                            | 4096           |
| fc7_dropout, fc7, relu   | dropout, 4096 (the feature space)        | 4096           |
| fc8                      | num_classes                              | logits         |

Inputs smaller than 63×63 leave nothing for pool5 and are refused when the model is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from backdoorlab.errors import BackdoorLabError
from backdoorlab.models.normalize import Normalize

Stats = float | Sequence[float] | None

MIN_INPUT_SIZE = 63
"""The smallest height/width for which pool5 still has a 1×1 output."""


class AlexNet(nn.Module):
    """ImageNet AlexNet (5 convs, fc6/fc7/fc8 with dropout) on raw [0, 1] pixels.

    Hookable top-level layers: ``conv1``..``conv5`` with ``conv{i}_relu``, ``pool1``, ``pool2``, ``pool5``,
    ``avgpool``, ``flatten``, ``fc6``/``fc7`` with ``fc{i}_dropout`` and ``fc{i}_relu``, and ``fc8``.
    ``fc7_relu`` (:attr:`feature_layer`) is the 4096-d fc7 feature space Saha et al. match in (with dropout
    off, i.e. in eval mode); :meth:`features` returns it. ``conv5_relu`` is :attr:`last_conv_layer`.
    """

    feature_layer = "fc7_relu"
    last_conv_layer = "conv5_relu"
    head_layer = "fc8"
    feature_dim = 4096
    LAYERS = (
        "normalize", "conv1", "conv1_relu", "pool1", "conv2", "conv2_relu", "pool2", "conv3", "conv3_relu",
        "conv4", "conv4_relu", "conv5", "conv5_relu", "pool5", "avgpool", "flatten", "fc6_dropout", "fc6",
        "fc6_relu", "fc7_dropout", "fc7", "fc7_relu", "fc8",
    )  # fmt: skip
    """The top-level modules in forward order: ``forward`` is their chain."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        input_size: int | tuple[int, int] = 224,
        mean: Stats = None,
        std: Stats = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        if min(h, w) < MIN_INPUT_SIZE:
            raise BackdoorLabError(
                f"alexnet needs input_size of at least {MIN_INPUT_SIZE}×{MIN_INPUT_SIZE} (pool5 has nothing "
                f"left below that), got {h}×{w}; resize the images or use alexnet_small for small ones"
            )
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise BackdoorLabError(
                f"alexnet option 'dropout' must be a probability in [0, 1), got {dropout!r}"
            )
        self.normalize = Normalize.for_channels(in_channels, mean, std)
        self.conv1 = nn.Conv2d(in_channels, 64, 11, stride=4, padding=2)
        self.conv1_relu = nn.ReLU()
        self.pool1 = nn.MaxPool2d(3, 2)
        self.conv2 = nn.Conv2d(64, 192, 5, padding=2)
        self.conv2_relu = nn.ReLU()
        self.pool2 = nn.MaxPool2d(3, 2)
        self.conv3 = nn.Conv2d(192, 384, 3, padding=1)
        self.conv3_relu = nn.ReLU()
        self.conv4 = nn.Conv2d(384, 256, 3, padding=1)
        self.conv4_relu = nn.ReLU()
        self.conv5 = nn.Conv2d(256, 256, 3, padding=1)
        self.conv5_relu = nn.ReLU()
        self.pool5 = nn.MaxPool2d(3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.flatten = nn.Flatten()
        self.fc6_dropout = nn.Dropout(float(dropout))
        self.fc6 = nn.Linear(256 * 6 * 6, 4096)
        self.fc6_relu = nn.ReLU()
        self.fc7_dropout = nn.Dropout(float(dropout))
        self.fc7 = nn.Linear(4096, 4096)
        self.fc7_relu = nn.ReLU()
        self.fc8 = nn.Linear(4096, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 4096-d fc7 features (after ``fc7`` + ReLU) of raw [0, 1] images."""
        for name in self.LAYERS[:-1]:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.features(x))
