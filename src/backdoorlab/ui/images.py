"""Images for the browser: [0, 1] tensors to 8-bit PNG bytes and ``data:`` URLs, with no imaging library.

The page shows every image at its own resolution, upscaled by the browser with ``image-rendering: pixelated``;
a colour picked from a pixel in the page is the exact 8-bit value of this PNG (``round(255·x)``).
"""

from __future__ import annotations

import base64
import struct
import zlib

import torch

from backdoorlab.errors import BackdoorLabError

_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels → PNG colour type (grey, grey+alpha, RGB, RGBA)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A C×H×W image in [0, 1] as H×W×C uint8 (``round(255·x)``, clipped)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] not in _COLOR_TYPES:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise BackdoorLabError(f"image must be a C×H×W tensor with 1 to 4 channels, got {shape}")
    if image.dtype == torch.uint8:
        return image.permute(1, 2, 0).contiguous()
    return (
        (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bytes(image: torch.Tensor) -> bytes:
    """An 8-bit PNG of a C×H×W image in [0, 1] (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA)."""
    pixels = to_uint8(image)
    h, w, c = pixels.shape
    rows = pixels.reshape(h, w * c)
    raw = torch.cat([torch.zeros(h, 1, dtype=torch.uint8), rows], 1).numpy().tobytes()  # filter 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPES[c], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def data_url(image: torch.Tensor) -> str:
    """``data:image/png;base64,…`` of :func:`png_bytes`, for ``<img src>`` in the page."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def with_alpha(pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A trigger's 1- or 3-channel pattern with its mask as the alpha channel, for a PNG download."""
    if pattern.ndim != 3 or pattern.shape[0] not in (1, 3) or mask.ndim != 3:
        raise BackdoorLabError(f"pattern must be 1×h×w or 3×h×w with a mask, got {tuple(pattern.shape)}")
    alpha = mask.float().amax(0, keepdim=True).expand(1, *pattern.shape[1:])
    return torch.cat([pattern.float(), alpha], 0)


__all__ = ["data_url", "png_bytes", "to_uint8", "with_alpha"]
