"""A fast batch iterator over in-memory tensors, with batched augmentation on the tensors' device.

No ``DataLoader``, no workers, no per-sample Python: a batch is one index into the stored tensors, one
dtype conversion and (optionally) one batched pad-and-crop plus one batched horizontal flip.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from backdoorlab.data.tensors import ImageTensors, make_generator
from backdoorlab.errors import BackdoorLabError


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` on every side, then crop back to size at a random offset per sample."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    xp = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    off = torch.randint(0, 2 * padding + 1, (2, n), generator=gen).to(x.device)
    rows = (off[0, :, None] + torch.arange(h, device=x.device))[:, :, None]  # N×H×1
    cols = (off[1, :, None] + torch.arange(w, device=x.device))[:, None, :]  # N×1×W
    batch = torch.arange(n, device=x.device)[:, None, None]
    # advanced indexing puts the indexed dims first: N×H×W×C -> N×C×H×W
    return xp.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, p: float = 0.5, gen: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left–right with probability ``p``, independently per sample."""
    flip = (torch.rand(x.shape[0], generator=gen) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@dataclass(frozen=True)
class Augment:
    """Standard augmentation: zero-pad-and-crop by ``crop_padding`` and a random horizontal flip."""

    crop_padding: int = 0
    flip: bool = False

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, gen)
        if self.flip:
            x = random_flip(x, 0.5, gen)
        return x

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.flip)


class Batches:
    """Iterate ``(x, y)`` batches of ``data`` as float [0, 1] on ``device``.

    The whole dataset is moved to ``device`` once (uint8 is small), so a batch costs one gather.
    ``shuffle`` draws a fresh permutation from ``gen`` each pass; ``drop_last`` drops a short final batch.
    ``augment_mask`` (one bool per sample) limits augmentation to the flagged samples, e.g. to keep a
    trigger where it was stamped while benign images are augmented (Li et al. §4.1).
    """

    def __init__(
        self,
        data: ImageTensors,
        batch_size: int = 128,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: Augment | None = None,
        device: torch.device | str | None = None,
        seed: int | torch.Generator | None = 0,
        channels_last: bool = False,
        augment_mask: torch.Tensor | None = None,
    ) -> None:
        if batch_size < 1:
            raise BackdoorLabError(f"batch_size must be ≥ 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else data.device
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment if augment is not None and augment.active else None
        self.gen = make_generator(seed)
        self.channels_last = channels_last
        if augment_mask is not None and len(augment_mask) != len(self.labels):
            raise BackdoorLabError(
                f"augment_mask needs one flag per sample: {len(augment_mask)} flags for {len(self.labels)} samples"
            )
        self.augment_mask = None if augment_mask is None else augment_mask.to(self.device, torch.bool)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.gen).to(self.device) if self.shuffle else None
        stop = (n // self.batch_size) * self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            if order is None:
                xb, yb = (
                    self.images[start : start + self.batch_size],
                    self.labels[start : start + self.batch_size],
                )
            else:
                idx = order[start : start + self.batch_size]
                xb, yb = self.images[idx], self.labels[idx]
            x = xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb.float()
            if self.augment is not None:
                x_aug = self.augment(x, self.gen)
                if self.augment_mask is not None:  # samples flagged False keep their pixels as stored
                    keep = (
                        self.augment_mask[start : start + self.batch_size]
                        if order is None
                        else self.augment_mask[idx]
                    )
                    x_aug = torch.where(keep[:, None, None, None], x_aug, x)
                x = x_aug
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, yb
