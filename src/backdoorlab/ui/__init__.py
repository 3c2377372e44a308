"""The interactive audit tool of Sun et al. (App. D, Fig. 20) as a local web app: ``backdoorlab ui``.

:func:`create_app` builds the FastAPI app for a workspace, :func:`serve` serves it (127.0.0.1 by default),
:func:`start_server` serves it from a background thread, and :func:`run_ui_cli` is the command line's entry.
FastAPI and uvicorn (the ``ui`` extra) are imported only when one of them is used; without them the error
says what to install.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "run_ui_cli", "serve", "start_server"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'backdoorlab.ui' has no attribute {name!r}")
    try:
        from backdoorlab.ui import app
    except ModuleNotFoundError as exc:
        if exc.name not in ("fastapi", "uvicorn", "starlette", "pydantic"):
            raise
        from backdoorlab.errors import BackdoorLabError

        raise BackdoorLabError(
            f"backdoorlab ui needs {exc.name}, which is not installed; install the tool's extra with "
            "pip install 'backdoorlab[ui]' (fastapi and uvicorn)"
        ) from None
    return getattr(app, name)
