"""Fashion-MNIST from its four IDX files; by default where Debian's ``dataset-fashion-mnist`` puts them."""

from __future__ import annotations

from pathlib import Path

from backdoorlab.data.mnist import load_idx_dataset
from backdoorlab.data.registry import register_dataset
from backdoorlab.data.tensors import ImageTensors

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")


@register_dataset(
    "fashion-mnist",
    "full Fashion-MNIST (60,000 train / 10,000 test clothing images) from IDX files",
    (1, 28, 28),
    10,
    f"Debian package dataset-fashion-mnist ({DEFAULT_ROOT}), or any folder root= with the four IDX files",
)
def load_fashion_mnist(root: str | Path | None = None) -> tuple[ImageTensors, ImageTensors]:
    """Fashion-MNIST as 1×28×28 uint8 ``(train, test)``; ``root`` defaults to the Debian package's folder."""
    return load_idx_dataset(
        "fashion-mnist",
        DEFAULT_ROOT if root is None else root,
        FASHION_CLASSES,
        hint=f"on Debian/Ubuntu run `apt-get install dataset-fashion-mnist` to get them in {DEFAULT_ROOT}",
    )
