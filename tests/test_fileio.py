"""Atomic writes publish files and folders with ordinary permissions (tempfile's are 0600 / 0700)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from backdoorlab.experiments.cache import ArtifactCache
from backdoorlab.fileio import temp_dir, write_atomic


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_write_atomic_gives_umask_permissions_and_leaves_no_temporary(tmp_path: Path) -> None:
    out = write_atomic(tmp_path / "sub" / "report.html", "<p>hi</p>")
    assert out.read_text() == "<p>hi</p>"
    assert _mode(out) == 0o666 & ~_umask()
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]


def test_temp_dir_and_cache_folders_are_not_private(tmp_path: Path) -> None:
    assert _mode(temp_dir(tmp_path, ".x.")) == 0o777 & ~_umask()
    folder, hit = ArtifactCache(tmp_path / "cache").get_or_create(
        "kind", "k" * 64, lambda d: (d / "a.json").write_text("{}")
    )
    assert not hit and _mode(folder) == 0o777 & ~_umask()
