"""The one in-memory container every dataset loads into.

Images are kept as an ``N×C×H×W`` tensor, ``uint8`` for real data (0–255) or ``float32`` in [0, 1] for
data an attack perturbed below the 1/255 grid (e.g. PGD poisons). Labels are ``int64``. Conversion to the
[0, 1] float pixel space the whole library works in happens per batch (:meth:`ImageTensors.float01`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from backdoorlab.errors import BackdoorLabError


def make_generator(seed: int | torch.Generator | None) -> torch.Generator:
    """A CPU ``torch.Generator`` from a seed (or pass one through); ``None`` means seed 0."""
    if isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator()
    gen.manual_seed(0 if seed is None else int(seed))
    return gen


@dataclass(frozen=True, eq=False)
class ImageTensors:
    """Images, labels and class names of one dataset (or one split of it)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise BackdoorLabError(
                f"images must be N×C×H×W, got shape {tuple(self.images.shape)}; add a channel axis"
            )
        if self.images.dtype not in (torch.uint8, torch.float32):
            raise BackdoorLabError(f"images must be uint8 (0-255) or float32 (0-1), got {self.images.dtype}")
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise BackdoorLabError(
                f"labels must be one per image: {len(self.images)} images, labels shape {tuple(self.labels.shape)}"
            )
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.labels.dtype != torch.int64:
            object.__setattr__(self, "labels", self.labels.long())
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise BackdoorLabError(
                f"labels must lie in 0..{len(self.classes) - 1} for {len(self.classes)} classes, "
                f"found {int(self.labels.min())}..{int(self.labels.max())}"
            )

    # -- shape -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __repr__(self) -> str:
        c, h, w = self.shape
        return (
            f"ImageTensors(name={self.name!r}, n={len(self)}, shape={c}×{h}×{w}, "
            f"classes={self.num_classes}, dtype={self.images.dtype})"
        )

    # -- conversion --------------------------------------------------------------------------------------
    def float01(self, index: torch.Tensor | slice | None = None, device: torch.device | str | None = None):
        """Images (or the indexed ones) as float32 in [0, 1], optionally moved to ``device``."""
        x = self.images if index is None else self.images[index]
        if device is not None:
            x = x.to(device, non_blocking=True)
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def to(self, device: torch.device | str) -> ImageTensors:
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def with_images(self, images: torch.Tensor, labels: torch.Tensor | None = None, **meta) -> ImageTensors:
        """A copy with new images (and labels); uint8 is kept when the new images are uint8."""
        return replace(
            self,
            images=images,
            labels=self.labels if labels is None else labels,
            meta={**self.meta, **meta},
        )

    @staticmethod
    def quantize(x01: torch.Tensor) -> torch.Tensor:
        """[0, 1] floats to the uint8 grid (round to nearest), as saving an image would."""
        return (x01.clamp(0, 1) * 255.0).round_().to(torch.uint8)

    # -- selection ---------------------------------------------------------------------------------------
    def subset(self, index: torch.Tensor | Sequence[int]) -> ImageTensors:
        idx = torch.as_tensor(index, dtype=torch.long, device=self.images.device)
        return replace(self, images=self.images[idx], labels=self.labels[idx])

    def of_classes(self, classes: Sequence[int], relabel: bool = False) -> ImageTensors:
        """The images whose label is in ``classes``; ``relabel`` maps them to 0..len(classes)-1."""
        classes = [self._check_class(c) for c in classes]
        keep = torch.isin(self.labels, torch.tensor(classes, device=self.labels.device))
        out = self.subset(keep.nonzero().squeeze(1))
        if not relabel:
            return out
        lut = torch.full((self.num_classes,), -1, dtype=torch.long, device=self.labels.device)
        lut[torch.tensor(classes, device=self.labels.device)] = torch.arange(len(classes), device=lut.device)
        return replace(out, labels=lut[out.labels], classes=tuple(self.classes[c] for c in classes))

    def per_class(self, n: int, seed: int | torch.Generator | None = 0) -> ImageTensors:
        """A random subset of (at most) ``n`` images from every class, in a seeded order."""
        if n < 1:
            raise BackdoorLabError(f"per-class count must be ≥ 1, got {n}")
        gen = make_generator(seed)
        perm = torch.randperm(len(self), generator=gen).to(self.labels.device)
        chosen = []
        for c in range(self.num_classes):
            idx = perm[self.labels[perm] == c]
            chosen.append(idx[:n])
        return self.subset(torch.cat(chosen).sort().values)

    def split(
        self, test: float | int, seed: int | torch.Generator | None = 0, stratified: bool = True
    ) -> tuple[ImageTensors, ImageTensors]:
        """Split into ``(train, test)``; ``test`` is a fraction in (0, 1) or a count. Seeded, stratified."""
        n = len(self)
        n_test = round(test * n) if isinstance(test, float) else int(test)
        if isinstance(test, float) and not 0.0 < test < 1.0:
            raise BackdoorLabError(f"test fraction must lie in (0, 1), got {test}")
        if not 0 < n_test < n:
            raise BackdoorLabError(f"test size must leave both splits non-empty: {n_test} of {n} images")
        gen = make_generator(seed)
        perm = torch.randperm(n, generator=gen).to(self.labels.device)
        if not stratified:
            return self.subset(perm[n_test:].sort().values), self.subset(perm[:n_test].sort().values)
        test_idx = []
        for c in range(self.num_classes):
            idx = perm[self.labels[perm] == c]
            test_idx.append(idx[: round(len(idx) * n_test / n)])
        test_idx = torch.cat(test_idx)
        mask = torch.zeros(n, dtype=torch.bool, device=self.labels.device)
        mask[test_idx] = True
        return self.subset((~mask).nonzero().squeeze(1)), self.subset(test_idx.sort().values)

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes)

    def _check_class(self, c: int) -> int:
        if not 0 <= int(c) < self.num_classes:
            raise BackdoorLabError(f"class {c} is out of range 0..{self.num_classes - 1}")
        return int(c)

    # -- identity ----------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A SHA-256 of images, labels and class names: the cache key of this data."""
        h = hashlib.sha256()
        h.update(repr((tuple(self.images.shape), str(self.images.dtype), self.classes)).encode())
        h.update(self.images.detach().cpu().contiguous().numpy().tobytes())
        h.update(self.labels.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
