"""Shape-preserving transformations (Li et al. 2021, Def. 3, §4.1–5.5)."""

from __future__ import annotations

import pytest
import torch

from backdoorlab import transforms as T
from backdoorlab.errors import BackdoorLabError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def zero_rows_cols(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample: leading and trailing all-zero rows and columns (N each) of an N×C×H×W batch."""
    row_zero = (x == 0).all(dim=1).all(dim=2)  # N×H
    col_zero = (x == 0).all(dim=1).all(dim=1)  # N×W

    def leading(z: torch.Tensor) -> torch.Tensor:
        return (~z).int().cumsum(1).eq(0).sum(1)

    return leading(row_zero), leading(row_zero.flip(1)), leading(col_zero), leading(col_zero.flip(1))


# -- shrink_pad --------------------------------------------------------------------------------------------
def test_shrink_pad_shape_range_and_border():
    x = torch.ones(16, 3, 32, 32)
    y = T.shrink_pad(x, 4, gen(0))
    assert y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1
    top, bottom, left, right = zero_rows_cols(y)
    assert torch.equal(top + bottom, torch.full((16,), 4))
    assert torch.equal(left + right, torch.full((16,), 4))
    # the shrunk picture itself is all ones (bilinear interpolation of a constant)
    assert int((y > 1 - 1e-6).sum()) == 16 * 3 * 28 * 28


def test_shrink_pad_offsets_per_sample_and_seeded():
    x = torch.ones(32, 1, 28, 28)
    y1 = T.shrink_pad(x, 3, gen(1))
    y2 = T.shrink_pad(x, 3, gen(1))
    assert torch.equal(y1, y2)
    top, _, left, _ = zero_rows_cols(y1)
    assert len(set(top.tolist())) > 1 and len(set(left.tolist())) > 1  # not one offset per batch
    assert not torch.equal(T.shrink_pad(x, 3, gen(2)), y1)
    assert torch.equal(T.shrink_pad(x, 3), T.shrink_pad(x, 3, None))  # None means seed 0


def test_shrink_pad_identity_and_errors():
    x = torch.rand(4, 3, 8, 8, generator=gen())
    assert torch.equal(T.shrink_pad(x, 0), x)
    with pytest.raises(
        BackdoorLabError, match=r"k=12 is larger than a third of the 28-pixel image side \(max 9\)"
    ):
        T.shrink_pad(torch.rand(2, 1, 28, 28), 12)
    with pytest.raises(BackdoorLabError, match="shrink size k"):
        T.shrink_pad(x, -1)


def test_shrink_pad_keeps_gradients():
    x = torch.rand(2, 3, 12, 12, requires_grad=True)
    T.shrink_pad(x, 2, gen()).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_random_shrink_pad_sizes_vary():
    x = torch.ones(64, 1, 28, 28)
    y = T.random_shrink_pad(x, 4, gen(3))
    assert y.shape == x.shape
    top, bottom, left, right = zero_rows_cols(y)
    sizes = top + bottom
    assert torch.equal(sizes, left + right)
    assert set(sizes.tolist()) == {0, 1, 2, 3, 4}
    assert torch.equal(y, T.random_shrink_pad(x, 4, gen(3)))
    with pytest.raises(BackdoorLabError, match="max_k"):
        T.random_shrink_pad(torch.ones(2, 1, 8, 8), 4)


# -- flip ----------------------------------------------------------------------------------------------------
def test_flip_twice_identity_and_moves_patch():
    x = torch.zeros(2, 3, 10, 10)
    x[:, :, -3:, -3:] = 1.0  # bottom-right patch
    y = T.flip(x)
    assert torch.equal(T.flip(y), x)
    assert (y[:, :, -3:, :3] == 1).all() and y[:, :, -3:, -3:].sum() == 0


def test_random_flip_reuses_loader_and_is_seeded():
    x = torch.arange(8 * 5, dtype=torch.float32).reshape(8, 1, 1, 5) / 40
    y = T.random_flip(x, 0.5, gen(0))
    flipped = (y != x).flatten(1).any(1)
    assert 0 < int(flipped.sum()) < 8
    assert torch.equal(y, T.random_flip(x))  # None means seed 0
    assert torch.equal(T.random_flip(x, 1.0), x.flip(-1))
    with pytest.raises(BackdoorLabError, match="p must be"):
        T.random_flip(x, 1.5)


# -- gaussian noise --------------------------------------------------------------------------------------------
def test_gaussian_noise_std_and_clip():
    x = torch.full((8, 3, 32, 32), 0.5)
    y = T.gaussian_noise(x, 10, gen())
    assert abs(float((y - x).std()) - 10 / 255) < 0.002
    assert abs(float((y - x).mean())) < 0.002
    big = T.gaussian_noise(x, 255, gen())
    assert big.min() == 0 and big.max() == 1
    assert torch.equal(T.gaussian_noise(x, 0), x)
    with pytest.raises(BackdoorLabError, match=r"std .*\[0, 255\]"):
        T.gaussian_noise(x, 300)


# -- colour jitter ---------------------------------------------------------------------------------------------
def test_color_jitter_range_shape_identity():
    x = torch.rand(8, 3, 16, 16, generator=gen())
    y = T.color_jitter(x, 0.4, 0.4, 0.4, 0.1, gen=gen())
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert not torch.equal(y, x)
    assert torch.equal(T.color_jitter(x), x)
    assert torch.equal(y, T.color_jitter(x, 0.4, 0.4, 0.4, 0.1, gen=gen()))


def test_color_jitter_brightness_scales_by_factor_in_range():
    x = torch.rand(32, 3, 8, 8, generator=gen()) * 0.5  # ≤ 0.5, so a factor ≤ 1.3 never clips
    y = T.color_jitter(x, brightness=0.3, gen=gen(1))
    ratio = (y / x.clamp_min(1e-6)).flatten(1)
    per_sample = ratio.median(1).values
    assert torch.allclose(ratio, per_sample[:, None].expand_as(ratio), atol=1e-4)
    assert (per_sample >= 0.7 - 1e-5).all() and (per_sample <= 1.3 + 1e-5).all()
    assert per_sample.std() > 0.05  # one factor per sample


def test_color_jitter_hue_preserves_grey_and_roundtrips():
    grey = torch.rand(4, 1, 8, 8, generator=gen()).expand(4, 3, 8, 8).contiguous()
    assert torch.allclose(T.color_jitter(grey, hue=0.5, gen=gen()), grey, atol=1e-6)
    single = torch.rand(4, 1, 8, 8, generator=gen())
    assert torch.equal(T.color_jitter(single, saturation=0.4, hue=0.5, gen=gen()), single)
    x = torch.rand(4, 3, 8, 8, generator=gen())
    assert torch.allclose(T._hsv_to_rgb(T._rgb_to_hsv(x)), x, atol=1e-5)
    # a half-turn hue shift maps pure red to cyan
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1
    cyan = T._adjust_hue(red, torch.tensor([0.5]))
    assert torch.allclose(cyan[0, :, 0, 0], torch.tensor([0.0, 1.0, 1.0]), atol=1e-6)


def test_color_jitter_errors():
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(BackdoorLabError, match="brightness"):
        T.color_jitter(x, brightness=-0.1)
    with pytest.raises(BackdoorLabError, match=r"hue .*\[0, 0.5\]"):
        T.color_jitter(x, hue=0.6)


# -- physical ---------------------------------------------------------------------------------------------------
def test_physical_shape_range_and_identity():
    x = torch.rand(6, 3, 20, 24, generator=gen())
    y = T.physical(x, gen())
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(y, x, atol=1e-3)
    assert torch.equal(y, T.physical(x, gen()))
    off = T.physical(x, gen(), perspective=0, scale=None, rotation=0, blur=0, brightness=0)
    assert torch.equal(off, x)
    # an identity warp through grid_sample is (numerically) the identity
    warped = T.physical(x, gen(), perspective=0, scale=(1.0, 1.0), rotation=1e-9, blur=0, brightness=0)
    assert torch.allclose(warped, x, atol=1e-5)


def test_physical_blur_only_smooths():
    x = torch.zeros(2, 1, 15, 15)
    x[:, :, 7, 7] = 1.0
    y = T.physical(x, gen(), perspective=0, scale=None, rotation=0, blur=2.0, brightness=0)
    assert torch.allclose(y.sum(dim=(1, 2, 3)), torch.ones(2), atol=1e-5)  # mass kept away from edges
    assert (y[:, :, 7, 7] < 1).all()


def test_physical_errors():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(BackdoorLabError, match="perspective"):
        T.physical(x, perspective=0.9)
    with pytest.raises(BackdoorLabError, match="scale"):
        T.physical(x, scale=(1.2, 0.8))
