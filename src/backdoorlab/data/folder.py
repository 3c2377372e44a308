"""Any image-folder dataset: ``root/train/<class>/*`` + ``root/test/<class>/*``, or ``root/<class>/*``.

Class names are the sub-folder names, sorted. Every image is converted to ``channels`` (1 or 3) and resized
to ``size`` with PIL once, at load time; after that the data is a plain uint8 tensor like every other set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from backdoorlab.data.registry import register_dataset
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"}
)
_LAYOUT = "root/train/<class>/<image> and root/test/<class>/<image>, or root/<class>/<image>"


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise BackdoorLabError(f"class folder {folder} holds no images (looked for {kinds})")
    return files


def _scan(folder: Path) -> dict[str, list[Path]]:
    """``{class name: sorted image paths}`` for the class sub-folders of ``folder``."""
    classes = _class_dirs(folder)
    if not classes:
        raise BackdoorLabError(f"folder {folder} has no class sub-folders; lay images out as {_LAYOUT}")
    return {c.name: _images_in(c) for c in classes}


def _read_image(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image as an H×W(×C) uint8 array in ``mode`` ('L' or 'RGB'), resized to ``size`` = (H, W)."""
    from PIL import Image, UnidentifiedImageError  # only needed here; keeps `import backdoorlab` light

    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if size is not None and (img.height, img.width) != size:
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BackdoorLabError(f"cannot read image {path}: {exc}") from None


def _first_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BackdoorLabError(f"cannot read image {path}: {exc}") from None


def _to_tensors(
    files: dict[str, list[Path]], classes: tuple[str, ...], mode: str, size: tuple[int, int], name: str
) -> ImageTensors:
    arrays, labels = [], []
    for label, cls in enumerate(classes):
        for path in files.get(cls, []):
            arrays.append(_read_image(path, mode, size))
            labels.append(label)
    images = torch.from_numpy(np.stack(arrays))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()
    return ImageTensors(images, torch.tensor(labels, dtype=torch.int64), classes, name=name)


def _normalise_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise BackdoorLabError(f"size must be a positive int or (height, width), got {size!r}")
    return hw  # type: ignore[return-value]


@register_dataset(
    "folder",
    "images in class sub-folders (root/train/<class>, root/test/<class>, or root/<class> split by seed)",
    (0, 0, 0),  # set by the files: channels, and size (default: the first image's)
    0,  # as many classes as sub-folders
    "a folder root= laid out as " + _LAYOUT,
)
def load_folder(
    root: str | Path | None = None,
    size: int | tuple[int, int] | None = None,
    channels: int = 3,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[ImageTensors, ImageTensors]:
    """``(train, test)`` from an image folder, as ``channels``×H×W uint8 with sorted class names.

    With ``root/train`` and ``root/test`` present those are the splits (test classes must exist in train);
    otherwise ``root/<class>`` is split stratified with ``test_fraction`` and ``seed``. ``size`` is an int
    or ``(height, width)``; by default every image is resized to the size of the first one.
    """
    if root is None:
        raise BackdoorLabError(f"dataset 'folder' needs root=FOLDER laid out as {_LAYOUT}")
    if channels not in (1, 3):
        raise BackdoorLabError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise BackdoorLabError(f"dataset 'folder': {base} does not exist; lay images out as {_LAYOUT}")
    mode = "L" if channels == 1 else "RGB"
    hw = _normalise_size(size)
    name = f"folder:{base.name}"

    if (base / "train").is_dir() and (base / "test").is_dir():
        train_files, test_files = _scan(base / "train"), _scan(base / "test")
        extra = sorted(set(test_files) - set(train_files))
        if extra:
            raise BackdoorLabError(
                f"{base / 'test'} has classes missing from {base / 'train'}: {', '.join(extra)}"
            )
        classes = tuple(sorted(train_files))
        hw = hw or _first_size(train_files[classes[0]][0])
        train = _to_tensors(train_files, classes, mode, hw, name)
        test = _to_tensors(test_files, classes, mode, hw, name)
        return train, test

    files = _scan(base)
    classes = tuple(sorted(files))
    hw = hw or _first_size(files[classes[0]][0])
    return _to_tensors(files, classes, mode, hw, name).split(test_fraction, seed=seed)
