"""Architectures, Normalize and the model registry."""

from __future__ import annotations

import pytest
import torch

from backdoorlab.errors import BackdoorLabError
from backdoorlab.models import Normalize, check_input_shape, create_model, list_models

NAMES = [info.name for info in list_models()]
# the ImageNet AlexNet needs inputs of at least 63 px: tests/test_alexnet.py covers it
SMALL_NAMES = [n for n in NAMES if n != "alexnet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_lists_every_architecture() -> None:
    small = {"lenet", "resnet_small", "resnet18", "resnet34", "vgg11", "vgg19", "alexnet_small"}
    assert set(NAMES) == {*small, "alexnet"}
    for info in list_models():
        assert info.description and info.reference


@pytest.mark.parametrize("name", SMALL_NAMES)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_forward_shapes_and_hook_names(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    c, h, w = shape
    model = create_model(name, in_channels=c, num_classes=10, input_size=(h, w)).eval()
    assert isinstance(model.normalize, Normalize)
    modules = dict(model.named_modules())
    assert model.last_conv_layer in modules
    seen = {}
    handle = modules[model.feature_layer].register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad():  # one pass (these nets are slow on a CPU): logits, and the hooked features
        logits = model(torch.rand(1, c, h, w))
        head = modules[model.head_layer](seen["out"])
    handle.remove()
    assert logits.shape == (1, 10)
    assert seen["out"].shape == (1, model.feature_dim)
    torch.testing.assert_close(head, logits)


SMALL_OPTIONS = {"resnet18": {"width": 4}, "resnet34": {"width": 4}, "resnet_small": {"units": 1}}


@pytest.mark.parametrize("name", SMALL_NAMES)
def test_features_method_is_the_feature_layer(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, num_classes=5, input_size=16, **SMALL_OPTIONS.get(name, {}))
    model.eval()
    x = torch.rand(2, 3, 16, 16)
    seen = {}
    dict(model.named_modules())[model.feature_layer].register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
    assert logits.shape == (2, 5)
    torch.testing.assert_close(feats, seen["out"])


def test_lenet_matches_advtrojan_table6() -> None:
    model = create_model("lenet", in_channels=1, num_classes=10, input_size=28)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["conv1.weight"] == (32, 1, 5, 5)
    assert shapes["conv2.weight"] == (64, 32, 5, 5)
    assert shapes["fc1.weight"] == (1000, 3136)
    assert shapes["fc2.weight"] == (10, 1000)
    assert model.conv1.stride == (2, 2) and model.conv2.stride == (2, 2)


def test_resnet_small_structure() -> None:
    model = create_model("resnet_small", in_channels=3, num_classes=10, input_size=32)
    for i, width in enumerate((16, 32, 64), start=1):
        stage = getattr(model, f"stage{i}")
        assert len(stage) == 5
        assert all(unit.conv2.out_channels == width for unit in stage)
    assert model.stem.out_channels == 16
    assert model.fc.in_features == 64
    odd = create_model("resnet_small", in_channels=3, num_classes=4, input_size=30, units=1)
    assert odd(torch.rand(1, 3, 30, 30)).shape == (1, 4)


def test_alexnet_small_matches_saha() -> None:
    model = create_model("alexnet_small", in_channels=3, num_classes=2, input_size=32)
    convs = [model.conv1, model.conv2, model.conv3, model.conv4]
    assert [c.out_channels for c in convs] == [64, 192, 384, 256]
    assert model.conv1.kernel_size == (5, 5) and model.conv1.stride == (1, 1)
    assert (model.fc1.out_features, model.fc2.out_features) == (512, 2)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())


def test_normalize_per_channel_and_identity() -> None:
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(Normalize()(x), x)
    norm = Normalize([0.5, 0.25, 0.0], [0.5, 0.25, 2.0])
    y = norm(x)
    torch.testing.assert_close(y[:, 0], (x[:, 0] - 0.5) / 0.5)
    torch.testing.assert_close(y[:, 2], x[:, 2] / 2.0)
    assert set(dict(norm.named_buffers())) == {"mean", "std"}
    with pytest.raises(BackdoorLabError, match="std"):
        Normalize(0.0, 0.0)


def test_create_model_normalisation_and_spec() -> None:
    model = create_model("lenet", in_channels=3, num_classes=10, input_size=32, mean=0.5, std=[0.2, 0.3, 0.4])
    assert model.spec == {
        "name": "lenet",
        "in_channels": 3,
        "num_classes": 10,
        "input_size": [32, 32],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.2, 0.3, 0.4],
        "kwargs": {},
    }
    torch.testing.assert_close(model.normalize.std.flatten(), torch.tensor([0.2, 0.3, 0.4]))
    with pytest.raises(BackdoorLabError, match=r"mean has 2 values .* 3 input channels"):
        create_model("lenet", in_channels=3, num_classes=10, input_size=32, mean=[0.1, 0.2])


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(BackdoorLabError, match="unknown model 'lenet5'") as err:
        create_model("lenet5", in_channels=1, num_classes=10, input_size=28)
    for name in NAMES:
        assert name in str(err.value)


def test_bad_options_are_named() -> None:
    with pytest.raises(BackdoorLabError, match="takes no option 'depth'"):
        create_model("resnet18", in_channels=3, num_classes=10, input_size=32, depth=50)
    with pytest.raises(BackdoorLabError, match="'units'"):
        create_model("resnet_small", in_channels=3, num_classes=10, input_size=32, units=0)
    with pytest.raises(BackdoorLabError, match="num_classes"):
        create_model("vgg11", in_channels=3, num_classes=0, input_size=32)
    small = create_model("resnet18", in_channels=3, num_classes=10, input_size=32, width=8)
    assert small.spec["kwargs"] == {"width": 8} and small.fc.in_features == 64


def test_check_input_shape() -> None:
    model = create_model("lenet", in_channels=1, num_classes=10, input_size=28)
    check_input_shape(model, (1, 28, 28))
    check_input_shape(model, torch.Size([5, 1, 28, 28]))
    with pytest.raises(BackdoorLabError, match="model expects 1×28×28 inputs, data is 3×32×32"):
        check_input_shape(model, (3, 32, 32))
