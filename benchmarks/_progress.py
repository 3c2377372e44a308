"""The progress callback the reproduction benchmarks share: one line per stage, with the seconds it took."""

from __future__ import annotations

import time
from collections.abc import Callable


class StagePrinter:
    """``progress(stage, done, total)`` for ``run_*`` reproductions: prints ``[done/total] stage (+s)``.

    ``quiet(stage, done, total)`` marks lines that are printed only when ``every`` seconds have passed since
    the last line (e.g. the many sub-steps of one audit); every other line is printed.
    """

    def __init__(self, quiet: Callable[[str, int, int], bool] | None = None, every: float = 20.0) -> None:
        self.quiet, self.every = quiet, every
        self.last = time.time()

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.time()
        if self.quiet is not None and self.quiet(stage, done, total) and now - self.last <= self.every:
            return
        print(f"[{done:3d}/{total}] {stage}  (+{now - self.last:.0f} s)", flush=True)
        self.last = now
