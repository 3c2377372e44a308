"""Per-channel input normalisation as the first layer of every model.

The whole library works on raw pixels in [0, 1] (triggers, ε-balls, clipping, denoisers). Each model
therefore owns its normalisation: ``(x - mean) / std`` per channel, with ``mean`` and ``std`` kept as buffers
so they move with the model and are saved with its weights. ``mean=0, std=1`` makes it the identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from backdoorlab.errors import BackdoorLabError

Stats = float | Sequence[float] | None


def per_channel(values: Stats, channels: int, what: str, default: float) -> tuple[float, ...]:
    """``values`` (``None``, one float, or one per channel) as a tuple of ``channels`` floats."""
    if values is None:
        return (float(default),) * channels
    if isinstance(values, int | float):
        return (float(values),) * channels
    if isinstance(values, torch.Tensor):
        values = values.flatten().tolist()
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise BackdoorLabError(f"{what} must be a number or one number per channel, got {values!r}") from exc
    if len(out) == 1:
        return out * channels
    if len(out) != channels:
        raise BackdoorLabError(
            f"{what} has {len(out)} values but the model has {channels} input channels; "
            f"give one value or {channels}"
        )
    return out


def resolve_stats(mean: Stats, std: Stats, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)``; ``None`` means identity (mean 0, std 1). Checks std > 0 and finiteness."""
    m = per_channel(mean, channels, "mean", 0.0)
    s = per_channel(std, channels, "std", 1.0)
    if not all(math.isfinite(v) for v in m + s):
        raise BackdoorLabError(f"mean and std must be finite, got mean={m}, std={s}")
    if any(v <= 0 for v in s):
        raise BackdoorLabError(f"std must be > 0 for every channel, got {s}")
    return m, s


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel on ``N×C×H×W`` inputs in [0, 1].

    ``mean`` and ``std`` are a float (all channels) or one value per channel; they are stored as
    ``1×C×1×1`` buffers (saved in the state dict). ``Normalize()`` is the identity.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: float | Sequence[float] = 0.0, std: float | Sequence[float] = 1.0) -> None:
        super().__init__()
        m = [float(mean)] if isinstance(mean, int | float) else [float(v) for v in mean]
        s = [float(std)] if isinstance(std, int | float) else [float(v) for v in std]
        if len(m) != len(s) and 1 not in (len(m), len(s)):
            raise BackdoorLabError(f"mean has {len(m)} values and std has {len(s)}; give the same number")
        if any(v <= 0 for v in s):
            raise BackdoorLabError(f"std must be > 0 for every channel, got {tuple(s)}")
        self.register_buffer("mean", torch.tensor(m, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(s, dtype=torch.float32).view(1, -1, 1, 1))

    @classmethod
    def for_channels(cls, channels: int, mean: Stats = None, std: Stats = None) -> Normalize:
        """A ``Normalize`` with one ``mean``/``std`` per channel (``None`` → identity), validated."""
        m, s = resolve_stats(mean, std, channels)
        return cls(m, s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
