"""Dataset loaders, the ImageTensors container and the batch iterator, on tiny data written here."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backdoorlab.data import (
    CIFAR10_CLASSES,
    SHAPE_CLASSES,
    Augment,
    Batches,
    ImageTensors,
    generate_shapes,
    list_datasets,
    load_cifar10,
    load_dataset,
    load_folder,
    load_mnist,
    load_restricted_pickle,
    load_shapes,
    random_crop,
    random_flip,
    read_idx,
    write_idx,
)
from backdoorlab.data.fashion import DEFAULT_ROOT as FASHION_ROOT
from backdoorlab.data.mnist import IDX_FILES
from backdoorlab.errors import BackdoorLabError, UnsafeFileError

# -- IDX / MNIST ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path: Path, suffix: str) -> None:
    arr = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / f"x-idx3-ubyte{suffix}", arr)
    np.testing.assert_array_equal(read_idx(path), arr)
    labels = np.arange(7, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / f"y-idx1-ubyte{suffix}", labels)), labels)


def _write_mnist(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        (np.arange(n_train) % 10).astype(np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        (np.arange(n_test) % 10).astype(np.uint8),
    )
    for i, (stem, arr) in enumerate(zip(IDX_FILES, arrays)):
        write_idx(folder / (stem + (".gz" if gz and i % 2 == 0 else "")), arr)  # mix gz and raw


def test_mnist_from_idx_folder(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    train, test = load_mnist(tmp_path)
    assert (len(train), len(test)) == (12, 5)
    assert train.shape == (1, 28, 28) and train.images.dtype == torch.uint8
    assert train.classes == tuple(str(i) for i in range(10))
    expected = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert torch.equal(train.images[:, 0], torch.from_numpy(expected.copy()))
    same, _ = load_dataset("mnist", root=str(tmp_path))
    assert same.fingerprint() == train.fingerprint()


def test_corrupt_idx_refused(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "good-idx3-ubyte", np.zeros((2, 3, 3), np.uint8)).read_bytes()
    cases = {
        "magic": b"\x01\x02" + good[2:],
        "truncated": good[:-1],
        "header": good[:6],
        "tiny": b"\x00",
    }
    for name, data in cases.items():
        path = tmp_path / f"bad-{name}"
        path.write_bytes(data)
        with pytest.raises(BackdoorLabError, match=f"bad-{name}"):
            read_idx(path)
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(BackdoorLabError, match=r"bad\.gz"):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "float.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd"))
    with pytest.raises(BackdoorLabError, match="element type"):
        read_idx(tmp_path / "float.gz")


def test_missing_idx_files_are_listed(tmp_path: Path) -> None:
    with pytest.raises(BackdoorLabError) as err:
        load_mnist(tmp_path / "nowhere")
    msg = str(err.value)
    assert "nowhere" in msg and all(f"{stem}(.gz)" in msg for stem in IDX_FILES)
    with pytest.raises(BackdoorLabError, match="root=FOLDER"):
        load_mnist()
    _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(BackdoorLabError, match=r"missing: t10k-labels-idx1-ubyte\(\.gz\)\)"):
        load_mnist(tmp_path)
    with pytest.raises(BackdoorLabError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=tmp_path / "nowhere")


@pytest.mark.skipif(not FASHION_ROOT.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package() -> None:
    train, test = load_dataset("fashion-mnist")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.num_classes == 10 and train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    assert train.shape == (1, 28, 28)
    assert torch.equal(train.class_counts(), torch.full((10,), 6000))


def test_registry_lists_all_datasets() -> None:
    names = {info.name for info in list_datasets()}
    assert {"mnist5k", "mnist", "fashion-mnist", "cifar10", "folder", "shapes"} <= names
    with pytest.raises(BackdoorLabError, match="choose one of"):
        load_dataset("nope")
    with pytest.raises(BackdoorLabError, match="no option 'colour'"):
        load_dataset("shapes", colour=True)


# -- CIFAR-10 ------------------------------------------------------------------------------------------------


def _cifar_arrays(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, n)]


def _write_cifar_py(folder: Path, n: int = 4, protocol: int = 2) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data, labels = _cifar_arrays(n, i)
        batch = {"batch_label": b"batch", "labels": labels, "data": data, "filenames": [b"a.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        out[name] = (data, labels)
    meta = {"label_names": [f"py{c}" for c in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return out


def _write_cifar_bin(folder: Path, n: int = 3) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate([*(f"data_batch_{k}.bin" for k in range(1, 6)), "test_batch.bin"]):
        data, labels = _cifar_arrays(n, 100 + i)
        records = np.concatenate([np.array(labels, np.uint8)[:, None], data], axis=1)
        (folder / name).write_bytes(records.tobytes())
        out[name] = (data, labels)
    (folder / "batches.meta.txt").write_text("\n".join(f"bin{c}" for c in range(10)) + "\n\n")
    return out


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_python_batches(tmp_path: Path, protocol: int) -> None:
    written = _write_cifar_py(tmp_path, protocol=protocol)
    train, test = load_cifar10(tmp_path)
    assert (len(train), len(test)) == (20, 4)
    assert train.shape == (3, 32, 32) and train.classes == tuple(f"py{c}" for c in range(10))
    data, labels = written["data_batch_2"]
    assert torch.equal(train.images[4:8], torch.from_numpy(data).view(4, 3, 32, 32))
    assert train.labels[4:8].tolist() == labels
    assert test.labels.tolist() == written["test_batch"][1]


def test_cifar_binary_batches_preferred(tmp_path: Path) -> None:
    _write_cifar_py(tmp_path)
    written = _write_cifar_bin(tmp_path)
    train, test = load_dataset("cifar10", root=tmp_path)
    assert (len(train), len(test)) == (15, 3)
    assert train.classes == tuple(f"bin{c}" for c in range(10))
    data, labels = written["test_batch.bin"]
    assert torch.equal(test.images, torch.from_numpy(data).view(3, 3, 32, 32))
    assert test.labels.tolist() == labels
    # without batches.meta.txt the standard names are used; the extracted sub-folder is found
    sub = tmp_path / "outer" / "cifar-10-batches-bin"
    _write_cifar_bin(sub)
    (sub / "batches.meta.txt").unlink()
    assert load_cifar10(tmp_path / "outer")[0].classes == CIFAR10_CLASSES


def test_cifar_errors(tmp_path: Path) -> None:
    with pytest.raises(BackdoorLabError, match=r"data_batch_1\.bin.*test_batch\.bin.*data_batch_1, "):
        load_cifar10(tmp_path / "nowhere")
    with pytest.raises(BackdoorLabError, match="root=FOLDER"):
        load_cifar10()
    _write_cifar_bin(tmp_path)
    (tmp_path / "data_batch_3.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(BackdoorLabError, match=r"data_batch_3\.bin is corrupt"):
        load_cifar10(tmp_path)


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _HostileEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_Hostile, _HostileEval])
def test_hostile_pickle_refused_without_side_effects(tmp_path: Path, payload: type) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"data": payload(marker), "labels": [0]}, protocol=2))
    with pytest.raises(UnsafeFileError, match=r"bad\.pkl"):
        load_restricted_pickle(bad)
    assert not marker.exists()
    # the same payload as a CIFAR batch is refused by the dataset loader
    folder = tmp_path / "cifar"
    _write_cifar_py(folder)
    (folder / "data_batch_4").write_bytes(bad.read_bytes())
    with pytest.raises(UnsafeFileError, match="data_batch_4"):
        load_cifar10(folder)
    assert not marker.exists()


def test_restricted_unpickler_rejects_garbage_and_other_numpy(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(UnsafeFileError):
        load_restricted_pickle(path)
    path.write_bytes(pickle.dumps(np.load, protocol=2))
    with pytest.raises(UnsafeFileError, match="numpy"):
        load_restricted_pickle(path)


# -- image folder --------------------------------------------------------------------------------------------


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (10, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)  # size is (width, height)


def test_folder_train_test_layout(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("test", 1)):
        for cls, colour in (("zebra", (255, 0, 0)), ("ant", (0, 0, 255))):
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.png", colour)
    (tmp_path / "train" / "ant" / "notes.txt").write_text("ignored")
    train, test = load_folder(tmp_path)
    assert train.classes == ("ant", "zebra") and (len(train), len(test)) == (6, 2)
    assert train.shape == (3, 8, 10)  # the first image's size: 8 high, 10 wide
    ant = train.images[train.labels == 0]
    assert ant[:, 2].min() == 255 and ant[:, 0].max() == 0
    grey, _ = load_dataset("folder", root=tmp_path, size=(5, 6), channels=1)
    assert grey.shape == (1, 5, 6) and grey.images.dtype == torch.uint8


def test_folder_flat_layout_split(tmp_path: Path) -> None:
    for cls in ("a", "b", "c"):
        for i in range(10):
            _png(
                tmp_path / cls / f"{i}.jpg" if i % 2 else tmp_path / cls / f"{i}.png",
                (i * 20, 0, 0),
                (12, 12),
            )
    train, test = load_folder(tmp_path, size=4, test_fraction=0.2, seed=3)
    assert (len(train), len(test)) == (24, 6)
    assert torch.equal(test.class_counts(), torch.tensor([2, 2, 2]))
    assert train.shape == (3, 4, 4)
    again, _ = load_folder(tmp_path, size=4, test_fraction=0.2, seed=3)
    assert again.fingerprint() == train.fingerprint()


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(BackdoorLabError, match="no class sub-folders"):
        load_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackdoorLabError, match="empty holds no images"):
        load_folder(tmp_path)
    _png(tmp_path / "empty" / "ok.png", (1, 2, 3))
    (tmp_path / "empty" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(BackdoorLabError, match=r"broken\.png"):
        load_folder(tmp_path)
    with pytest.raises(BackdoorLabError, match="channels"):
        load_folder(tmp_path, channels=2)
    with pytest.raises(BackdoorLabError, match="does not exist"):
        load_folder(tmp_path / "nowhere")


# -- shapes --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes() -> tuple[ImageTensors, ImageTensors]:
    return load_shapes()


def test_shapes_shape_balance_and_determinism(shapes: tuple[ImageTensors, ImageTensors]) -> None:
    train, test = shapes
    assert (len(train), len(test)) == (5000, 1000)
    assert train.shape == (3, 32, 32) and train.images.dtype == torch.uint8
    assert train.classes == SHAPE_CLASSES
    assert torch.equal(train.class_counts(), torch.full((10,), 500))
    assert torch.equal(test.class_counts(), torch.full((10,), 100))
    small, small_test = load_dataset("shapes", n_train=300, n_test=100, seed=5)
    again, again_test = load_shapes(n_train=300, n_test=100, seed=5)
    assert torch.equal(again.images, small.images) and torch.equal(again.labels, small.labels)
    assert torch.equal(again_test.images, small_test.images)
    assert not torch.equal(again.images[:100], again_test.images)
    other = generate_shapes(50, seed=1)
    assert not torch.equal(other.images, generate_shapes(50, seed=0).images)
    assert generate_shapes(50, seed=1, size=48).shape == (3, 48, 48)


def test_shapes_colour_not_predictive(shapes: tuple[ImageTensors, ImageTensors]) -> None:
    train, test = shapes
    colour = train.float01().mean(dim=(2, 3))  # N×3 mean colour per image
    per_class = torch.stack([colour[train.labels == c].mean(0) for c in range(10)])
    assert (per_class - colour.mean(0)).abs().max() < 0.04
    # nearest class-mean on an image's mean colour is no better than chance on held-out images
    test_colour = test.float01().mean(dim=(2, 3))
    pred = torch.cdist(test_colour, per_class).argmin(1)
    assert (pred == test.labels).float().mean() < 0.2
    # and images are not blank: the shapes differ from their surroundings
    assert train.float01().std(dim=(2, 3)).mean() > 0.08


# -- ImageTensors --------------------------------------------------------------------------------------------


def _toy(n_per_class: int = 20, classes: int = 4) -> ImageTensors:
    n = n_per_class * classes
    images = (
        torch.arange(n, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 1, 1, 1).repeat(1, 1, 2, 2)
    )
    labels = torch.arange(n) % classes
    return ImageTensors(images, labels, tuple("abcdefgh"[:classes]), name="toy")


def test_split_stratified_and_seeded() -> None:
    data = _toy()
    train, test = data.split(0.25, seed=7)
    assert torch.equal(test.class_counts(), torch.full((4,), 5))
    assert torch.equal(train.class_counts(), torch.full((4,), 15))
    ids = torch.cat([train.images[:, 0, 0, 0], test.images[:, 0, 0, 0]]).sort().values
    assert torch.equal(ids, torch.arange(80, dtype=torch.uint8))
    same = data.split(0.25, seed=7)[1]
    assert torch.equal(same.images, test.images)
    assert not torch.equal(data.split(0.25, seed=8)[1].images, test.images)
    with pytest.raises(BackdoorLabError):
        data.split(1.5)


def test_per_class_and_of_classes() -> None:
    data = _toy()
    few = data.per_class(3, seed=1)
    assert torch.equal(few.class_counts(), torch.full((4,), 3))
    assert torch.equal(few.images, data.per_class(3, seed=1).images)
    sub = data.of_classes([3, 1], relabel=True)
    assert sub.classes == ("d", "b") and len(sub) == 40
    original = data.labels[sub.images[:, 0, 0, 0].long()]
    assert torch.equal(sub.labels, torch.where(original == 3, 0, 1))
    assert data.of_classes([2]).labels.unique().tolist() == [2]
    with pytest.raises(BackdoorLabError):
        data.of_classes([9])


# -- Batches and augmentation --------------------------------------------------------------------------------


def test_batches_cover_every_sample_once_per_epoch() -> None:
    data = _toy(25)  # 100 images, pixel value = index
    batches = Batches(data, 32, shuffle=True, seed=0)
    assert len(batches) == 4
    epochs = []
    for _ in range(2):
        seen = torch.cat([(x[:, 0, 0, 0] * 255).round().long() for x, _ in batches])
        assert torch.equal(seen.sort().values, torch.arange(100))
        epochs.append(seen)
    assert not torch.equal(epochs[0], epochs[1])
    x, y = next(iter(Batches(data, 10)))
    assert x.dtype == torch.float32 and x.max() <= 1.0 and torch.equal(y, data.labels[:10])
    assert sum(len(y) for _, y in Batches(data, 32, drop_last=True)) == 96


def test_augmentation_keeps_shape() -> None:
    train = generate_shapes(40, seed=2)
    for x, _ in Batches(train, 16, shuffle=True, augment=Augment(crop_padding=4, flip=True)):
        assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32


def test_random_crop_is_a_shifted_copy() -> None:
    p = 3
    x = torch.rand(20, 2, 9, 11, generator=torch.Generator().manual_seed(0)) + 0.1  # no zeros inside
    out = random_crop(x, p, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 9, dx : dx + 11])
        ]
        assert matches, f"crop {i} is not a shifted copy"


def test_random_flip_flips_about_half() -> None:
    x = torch.arange(5, dtype=torch.float32).view(1, 1, 1, 5).repeat(1000, 1, 1, 1)
    out = random_flip(x, 0.5, torch.Generator().manual_seed(0))
    flipped = out[:, 0, 0, 0] == 4
    assert torch.all((out == x).all(dim=(1, 2, 3)) | (out == x.flip(-1)).all(dim=(1, 2, 3)))
    assert 400 < int(flipped.sum()) < 600
