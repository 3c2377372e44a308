"""Stage counting for the reproductions' progress callbacks, and their torch thread setting (shared by every
paper module)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

StageProgress = Callable[[str, int, int], None]


class Stages:
    """Calls ``progress(f"{prefix}: {name}", done, total)`` once per stage; ``sub`` forwards a step callback."""

    def __init__(self, prefix: str, progress: StageProgress | None, total: int) -> None:
        self.prefix, self.progress, self.total, self.done = prefix, progress, total, 0

    def __call__(self, name: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(f"{self.prefix}: {name}", min(self.done, self.total), self.total)

    def sub(self, name: str) -> Callable[[int, int, dict], None] | None:
        """A ``progress(step, total, info)`` callback for one long stage (e.g. :func:`~backdoorlab.training.fit`)."""
        progress = self.progress
        if progress is None:
            return None
        return lambda s, t, _info: progress(f"{self.prefix}: {name}", s, t)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (``None``: unchanged), then restore the previous count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
