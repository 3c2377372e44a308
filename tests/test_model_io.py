"""Safe model files: round trip, atomic writes, and refusal of pickles, corrupt files and tampering."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from backdoorlab.errors import BackdoorLabError, UnsafeFileError
from backdoorlab.models import ModelCard, create_model, load_model, model_hash, save_model
from backdoorlab.models.io import load_state_dict_file

CLASSES = [str(i) for i in range(10)]


pytestmark = pytest.mark.usefixtures("one_thread")


class _Marker:
    """Unpickling this object creates ``path`` (stands in for arbitrary code execution)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _trained_resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet_small", in_channels=3, num_classes=10, input_size=32, units=1, mean=0.5)
    model.train()
    model(torch.rand(8, 3, 32, 32))  # move BatchNorm running stats off their defaults
    return model.eval()


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = _trained_resnet()
    path = save_model(
        model, tmp_path / "m.safetensors", classes=CLASSES, extra={"attack": "badnets", "eps": 0.1}
    )
    loaded, card = load_model(path)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert isinstance(card, ModelCard)
    assert card.classes == tuple(CLASSES)
    assert card.input_shape == (3, 32, 32)
    assert card.spec == model.spec
    assert card.extra == {"attack": "badnets", "eps": 0.1}
    assert card.sha256 == model_hash(model) == model_hash(loaded)
    assert not loaded.training


def test_lenet_round_trip(tmp_path: Path) -> None:
    model = create_model("lenet", in_channels=1, num_classes=10, input_size=28).eval()
    loaded, _ = load_model(save_model(model, tmp_path / "lenet.safetensors", classes=CLASSES))
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_atomic_save_leaves_no_tmp_files(tmp_path: Path) -> None:
    model = create_model("lenet", in_channels=1, num_classes=10, input_size=28)
    target = tmp_path / "sub" / "m.safetensors"
    save_model(model, target, classes=CLASSES)
    save_model(model, target, classes=CLASSES)  # overwrite in place
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.safetensors"]
    with pytest.raises(BackdoorLabError, match="JSON"):
        save_model(model, target, classes=CLASSES, extra={"bad": object()})
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.safetensors"]
    with pytest.raises(BackdoorLabError, match="classes has 2 names"):
        save_model(model, target, classes=["a", "b"])


def test_marker_pickle_would_run_code(tmp_path: Path) -> None:
    """Control: the crafted payload really does create its marker when unpickled."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(_Marker(marker)))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["torch_zip", "torch_legacy", "raw_pickle"])
def test_pickle_checkpoints_refused_without_unpickling(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    payload = {"weight": torch.zeros(2), "evil": _Marker(marker)}
    path = tmp_path / "model.pt"
    if kind == "torch_zip":
        torch.save(payload, path)
    elif kind == "torch_legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    assert not marker.exists()
    with pytest.raises(UnsafeFileError, match="pickle-based PyTorch checkpoint"):
        load_model(path)
    with pytest.raises(UnsafeFileError, match="only loads safetensors"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_truncated_file_refused(tmp_path: Path) -> None:
    path = save_model(
        create_model("lenet", in_channels=1, num_classes=10, input_size=28), tmp_path / "m", classes=CLASSES
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsafeFileError, match="corrupt or truncated"):
        load_model(path)
    path.write_bytes(data[:5])
    with pytest.raises(UnsafeFileError, match="corrupt or truncated"):
        load_model(path)


def test_tampered_weights_refused(tmp_path: Path) -> None:
    path = save_model(
        create_model("lenet", in_channels=1, num_classes=10, input_size=28), tmp_path / "m", classes=CLASSES
    )
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits in the last tensor's bytes; the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(UnsafeFileError, match="sha256"):
        load_model(path)


def test_missing_header_and_unknown_architecture_refused(tmp_path: Path) -> None:
    model = create_model("lenet", in_channels=1, num_classes=10, input_size=28)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    raw = tmp_path / "raw.safetensors"
    save_file(state, str(raw))
    with pytest.raises(UnsafeFileError, match="without a backdoorlab header"):
        load_model(raw)
    loaded = load_state_dict_file(raw)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)

    path = save_model(model, tmp_path / "m.safetensors", classes=CLASSES)
    header = json.loads(_read_meta(path))
    header["spec"]["name"] = "mystery_net"
    odd = tmp_path / "odd.safetensors"
    save_file(state, str(odd), metadata={"backdoorlab": json.dumps(header)})
    with pytest.raises(UnsafeFileError, match="unknown model 'mystery_net'"):
        load_model(odd)


def _read_meta(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()["backdoorlab"]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(BackdoorLabError, match=r"nope\.safetensors"):
        load_model(missing)


def test_load_pretrained_names_the_field_and_checks_the_shape(tmp_path: Path) -> None:
    from backdoorlab.models import load_pretrained

    with pytest.raises(BackdoorLabError, match=r"datasets\.x\.pretrained: .*missing\.safetensors not found"):
        load_pretrained(tmp_path / "missing.safetensors", "datasets.x.pretrained", (1, 28, 28))
    model = create_model("lenet", in_channels=1, num_classes=10, input_size=28)
    path = tmp_path / "lenet.safetensors"
    save_model(model, path, classes=[str(i) for i in range(10)])
    loaded, card = load_pretrained(path, "pretrained", (1, 28, 28))
    assert not loaded.training and card.sha256 == model_hash(model)
    with pytest.raises(BackdoorLabError):
        load_pretrained(path, "pretrained", (3, 32, 32))
