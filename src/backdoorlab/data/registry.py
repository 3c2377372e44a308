"""Named datasets: ``load_dataset(name) -> (train, test)`` and ``list_datasets()``.

Each loader returns two :class:`ImageTensors` with the same class names. Loaders that read files take a
``root`` folder; a missing folder or file raises a :class:`BackdoorLabError` that says which files to put
where. Datasets that ship as a single pool (``mnist5k``) are split with a seeded stratified split.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError, UnsafeFileError, unknown_name

Loader = Callable[..., tuple[ImageTensors, ImageTensors]]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    shape: tuple[int, int, int]
    num_classes: int
    source: str
    loader: Loader


_REGISTRY: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str, description: str, shape: tuple[int, int, int], num_classes: int, source: str
) -> Callable[[Loader], Loader]:
    """Decorator that registers a loader under ``name``."""

    def wrap(fn: Loader) -> Loader:
        _REGISTRY[name] = DatasetInfo(name, description, shape, num_classes, source, fn)
        return fn

    return wrap


def _ensure_loaded() -> None:
    # importing the modules runs their @register_dataset decorators
    from backdoorlab.data import cifar, fashion, folder, mnist, shapes  # noqa: F401


def list_datasets() -> list[DatasetInfo]:
    _ensure_loaded()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def dataset_info(name: str) -> DatasetInfo:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise unknown_name("dataset", name, _REGISTRY)
    return _REGISTRY[name]


def load_dataset(name: str, **options) -> tuple[ImageTensors, ImageTensors]:
    """Load dataset ``name`` as ``(train, test)``; ``options`` go to its loader (``root=``, ``seed=`` …)."""
    info = dataset_info(name)
    params = inspect.signature(info.loader).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise BackdoorLabError(
            f"dataset {name!r} takes no option {unknown[0]!r}; its options are: {', '.join(params) or 'none'}"
        )
    return info.loader(**options)


def load_dataset_from_flags(name: str, options: dict[str, Any]) -> tuple[ImageTensors, ImageTensors]:
    """:func:`load_dataset` for the command line: a loader that needs a folder it was not given says which flag
    gives it (``--data-root PATH``). Only paths in ``options`` are read."""
    try:
        return load_dataset(name, **options)
    except UnsafeFileError:
        raise
    except BackdoorLabError as exc:
        takes_root = "root" in inspect.signature(dataset_info(name).loader).parameters
        if "root" in options or not takes_root:
            raise
        raise BackdoorLabError(f"{exc} (give the folder with --data-root PATH)") from None
