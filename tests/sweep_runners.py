"""Per-experiment runners that inject faults into a sweep (imported by spawned workers by name)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from backdoorlab.experiments.sweep import execute


def _first_time(root: str, tag: str, config: dict[str, Any]) -> bool:
    marker = Path(root) / f"{tag}-{config['seed']}.marker"
    if marker.exists():
        return False
    marker.write_text("x")
    return True


def flaky(config: dict[str, Any], root: str, threads: int) -> dict[str, Any]:
    """seed 1 fails on its first attempt only; seed 2 always fails; the others run normally."""
    if config["seed"] == 2:
        return {"error": "RuntimeError: injected failure that never heals"}
    if config["seed"] == 1 and _first_time(root, "flaky", config):
        raise RuntimeError("injected failure on the first attempt")
    return execute(config, root, threads)


def dies_once(config: dict[str, Any], root: str, threads: int) -> dict[str, Any]:
    """seed 1's worker process is SIGKILLed on the first attempt."""
    if config["seed"] == 1 and _first_time(root, "dies", config):
        os.kill(os.getpid(), signal.SIGKILL)
    return execute(config, root, threads)
