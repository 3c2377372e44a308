"""User-facing errors.

Every error a user can cause by bad input (an unknown name, a value out of range, a missing file, an
unsafe model file) is a :class:`BackdoorLabError`. Its message is one readable line that names the field
and says how to fix it; the CLI prints exactly that line and exits non-zero, with no traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class BackdoorLabError(ValueError):
    """An error caused by the user's input; the message says what to change."""


class UnsafeFileError(BackdoorLabError):
    """A model or artefact file was refused because loading it could execute code or it is corrupt."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> BackdoorLabError:
    """The error for a name that is not registered, listing the valid ones."""
    options = ", ".join(sorted(valid))
    return BackdoorLabError(f"unknown {kind} {name!r}; choose one of: {options}")
