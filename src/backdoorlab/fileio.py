"""Atomic file writes: a temporary file beside the target, then a rename, so no reader sees half a file.

``tempfile`` creates its files 0600 and folders 0700; what we publish (reports, plots, model files, run folders)
gets the permissions an ordinary ``open`` / ``mkdir`` would give under the process's umask instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once at import: os.umask can only be read by setting it


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; returns the path.

    The file gets mode ``0o666 & ~umask``, like a plain ``open(path, "w")``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A fresh hidden folder in ``parent`` to fill and then rename into place, with mode ``0o777 & ~umask``."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    return tmp
