"""The artefact cache: each step's output stored under the hash of its inputs.

An artefact is a folder ``<root>/<kind>/<key>/``. It is written into a temporary sibling folder and
renamed into place only when complete, so a crash never leaves a half-written artefact visible, and a
second run with the same inputs finds it and skips the work. A miss takes an exclusive file lock on the
key first, so parallel sweep workers that need the same step (a clean reference, a robust model, a GAN)
compute it once: the others wait, then find it made. Lock files live in ``<root>/.locks/`` (empty files,
never artefacts).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from backdoorlab.fileio import temp_dir

T = TypeVar("T")

try:  # POSIX; elsewhere parallel workers may compute a step twice (still correct: first rename wins)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


@contextmanager
def _key_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (released when the holder exits, even on SIGKILL)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ArtifactCache:
    """Folders keyed by ``(kind, key)``; ``hits``/``misses`` count lookups (used by tests and reports)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def has(self, kind: str, key: str) -> bool:
        return self.path(kind, key).is_dir()

    def get_or_create(
        self,
        kind: str,
        key: str,
        write: Callable[[Path], None],
    ) -> tuple[Path, bool]:
        """Return ``(folder, hit)``; on a miss ``write(tmp_folder)`` fills a temp folder that is then renamed."""
        final = self.path(kind, key)
        if final.is_dir():
            self.hits += 1
            return final, True
        final.parent.mkdir(parents=True, exist_ok=True)
        locks = self.root / ".locks" / kind
        locks.mkdir(parents=True, exist_ok=True)
        with _key_lock(locks / f"{key}.lock"):
            if final.is_dir():  # another worker made it while we waited for the lock
                self.hits += 1
                return final, True
            self.misses += 1
            tmp = temp_dir(final.parent, f".{key[:12]}.")
            try:
                write(tmp)
                try:
                    os.replace(tmp, final)
                except OSError:  # another writer finished first (no lock support): keep theirs
                    if not final.is_dir():
                        raise
                    shutil.rmtree(tmp, ignore_errors=True)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return final, False
