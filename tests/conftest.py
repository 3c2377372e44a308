"""Shared fixtures: tiny data and models so every test trains for seconds at most."""

from __future__ import annotations

import pytest
import torch

from backdoorlab.data.tensors import ImageTensors


@pytest.fixture(autouse=True)
def _threads():
    # CI has 2 cores: keep tests deterministic and avoid oversubscription
    torch.set_num_threads(2)


@pytest.fixture
def one_thread(_threads):
    """Tiny tensors: one intra-op thread (on a busy 2-core machine two OpenMP threads make each op far slower).

    Modules of tiny-network tests use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def mnist5k():
    from backdoorlab.data.registry import load_dataset

    return load_dataset("mnist5k")


@pytest.fixture
def toy() -> ImageTensors:
    """A learnable 3-class 1×8×8 toy set: the class sets the brightness of one row."""
    gen = torch.Generator().manual_seed(0)
    n = 300
    labels = torch.arange(n) % 3
    images = (torch.rand(n, 1, 8, 8, generator=gen) * 60).to(torch.uint8)
    images[torch.arange(n), 0, labels * 2 + 1, :] = 250
    return ImageTensors(images, labels, ("a", "b", "c"), name="toy")


def tiny_net(channels: int = 1, classes: int = 3, size: int = 8) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * size * size, classes),
    )
