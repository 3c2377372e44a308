"""A small convolutional auto-encoder on [0, 1] pixels (input purification, Liu, Xie & Srivastava 2017).

This is the convolutional auto-encoder of Li et al.'s footnote 4 in spirit (their implementation is a
public CIFAR-10 auto-encoder): a conv 3×3 encoder with two stride-2 down-samplings, a transposed-conv decoder
with two ×2 up-samplings and a sigmoid output, so the reconstruction is again in [0, 1].

| stage    | layer                                                | 32×32 input | 28×28 input |
| -------- | ---------------------------------------------------- | ----------- | ----------- |
| encoder  | conv 3×3, ``width``, BN, ReLU                        | 32×32       | 28×28       |
|          | conv 3×3 stride 2, ``2·width``, BN, ReLU             | 16×16       | 14×14       |
|          | conv 3×3 stride 2, ``latent`` (linear code)          | 8×8         | 7×7         |
| decoder  | conv-transpose 4×4 stride 2, ``2·width``, BN, ReLU   | 16×16       | 14×14       |
|          | conv-transpose 4×4 stride 2, ``width``, BN, ReLU     | 32×32       | 28×28       |
|          | conv 3×3, ``in_channels``, sigmoid                   | 32×32       | 28×28       |

The code (``latent`` channels at a quarter of the resolution) is the bottleneck that drops fine detail such
as a small trigger. BatchNorm is our choice: without it the sigmoid decoder collapses to an all-black output
on MNIST-like data (mostly zero pixels) within an epoch. Sizes that are not multiples of 4 are up-sampled
past the input size and cropped back (top-left aligned), so any ``H×W`` works.
"""

from __future__ import annotations

import torch
from torch import nn

from backdoorlab.errors import BackdoorLabError


def _positive(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BackdoorLabError(f"{what} must be a positive integer, got {value!r}")
    return value


def _conv_bn_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), nn.ReLU()]


class ConvAutoEncoder(nn.Module):
    """Conv encoder (two stride-2 down-samplings) + transposed-conv decoder + sigmoid, on [0, 1] images.

    ``forward(x)`` returns the reconstruction, same shape as ``x``, in (0, 1). :meth:`encode` gives the
    ``latent × ⌈H/4⌉ × ⌈W/4⌉`` code.
    """

    def __init__(
        self,
        in_channels: int = 3,
        input_size: int | tuple[int, int] = 32,
        width: int = 32,
        latent: int = 16,
    ) -> None:
        super().__init__()
        self.in_channels = _positive(in_channels, "in_channels")
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.input_size = (_positive(h, "input_size height"), _positive(w, "input_size width"))
        width = _positive(width, "auto-encoder width")
        latent = _positive(latent, "auto-encoder latent channels")
        self.encoder = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(in_channels, width, 3, padding=1), width),
            *_conv_bn_relu(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), 2 * width),
            nn.Conv2d(2 * width, latent, 3, stride=2, padding=1),  # linear code
        )
        self.decoder = nn.Sequential(
            *_conv_bn_relu(nn.ConvTranspose2d(latent, 2 * width, 4, stride=2, padding=1), 2 * width),
            *_conv_bn_relu(nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), width),
            nn.Conv2d(width, in_channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck code of a [0, 1] batch."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Decode a code to pixels, cropped (or zero-padded) to ``size`` (default: the build ``input_size``)."""
        out = self.decoder(z)
        h, w = size if size is not None else self.input_size
        dh, dw = h - out.shape[-2], w - out.shape[-1]
        if dh > 0 or dw > 0:
            out = nn.functional.pad(out, (0, max(dw, 0), 0, max(dh, 0)))
        return out[..., :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise BackdoorLabError(
                f"auto-encoder expects N×{self.in_channels}×H×W images, got shape {tuple(x.shape)}"
            )
        return self.decode(self.encode(x), (x.shape[-2], x.shape[-1]))
