"""The ImageNet AlexNet, the torchvision-weights converter, the paper recipes' layer names and the CLI."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from backdoorlab.cli import main
from backdoorlab.errors import BackdoorLabError
from backdoorlab.models import create_model, import_torchvision_alexnet, load_model, save_model
from backdoorlab.models.alexnet import AlexNet
from backdoorlab.models.io import HEADER_KEY

LAYERS = [
    "conv1", "conv1_relu", "pool1", "conv2", "conv2_relu", "pool2", "conv3", "conv3_relu", "conv4",
    "conv4_relu", "conv5", "conv5_relu", "pool5", "avgpool", "flatten", "fc6_dropout", "fc6", "fc6_relu",
    "fc7_dropout", "fc7", "fc7_relu", "fc8",
]  # fmt: skip
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's, written out here
RECIPES = Path(str(resources.files("backdoorlab") / "recipes"))


pytestmark = pytest.mark.usefixtures("one_thread")


class TorchvisionLayout(nn.Module):
    """A reference AlexNet with torchvision's module indices, written here (torchvision is not a dependency)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(9216, 4096), nn.ReLU(),
            nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[TorchvisionLayout, Path]:
    """A 10-class reference with He-initialised weights and non-zero biases (so logits are O(1) and a wrongly
    mapped key or normalisation shows), saved as a torchvision-layout safetensors state dict."""
    torch.manual_seed(0)
    ref = TorchvisionLayout(10).eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.bias.normal_(0.0, 0.1)
    path = tmp_path_factory.mktemp("tv") / "alexnet_tv.safetensors"
    save_file(ref.state_dict(), str(path))
    return ref, path


@pytest.fixture(scope="module")
def paper_model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("alexnet", in_channels=3, num_classes=1000, input_size=224).eval()


# -- the architecture -------------------------------------------------------------------------------------
def test_layers_shapes_and_features(paper_model: nn.Module) -> None:
    model = paper_model
    assert [n for n, _ in model.named_children()] == ["normalize", *LAYERS]
    assert tuple(model.LAYERS) == ("normalize", *LAYERS)
    for name in (model.feature_layer, model.last_conv_layer, model.head_layer):
        assert name in LAYERS
    assert isinstance(model.fc8, nn.Linear) and model.fc8.in_features == model.feature_dim == 4096
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.padding) == ((11, 11), (4, 4), (2, 2))
    assert [model.get_submodule(f"conv{i}").out_channels for i in range(1, 6)] == [64, 192, 384, 256, 256]
    assert model.fc6_dropout.p == model.fc7_dropout.p == 0.5
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(lambda _m, _i, o, n=n: seen.__setitem__(n, o))
        for n in ("pool5", "fc7_relu")
    ]
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    assert logits.shape == (1, 1000)
    assert seen["pool5"].shape == (1, 256, 6, 6) and seen["fc7_relu"].shape == (1, 4096)


def test_small_inputs_and_the_smallest_size(paper_model: nn.Module) -> None:
    from backdoorlab.attacks.hidden_trigger import feature_extractor
    from backdoorlab.models.registry import model_info

    model = paper_model
    x = torch.rand(2, 3, 63, 63)
    with torch.no_grad():
        logits = model(x)
        feats = feature_extractor(model)(x)
        torch.testing.assert_close(model.features(x), feats)
        torch.testing.assert_close(model.fc8(feats), logits)
    assert logits.shape == (2, 1000) and feats.shape == (2, 4096)
    assert model_info("alexnet").options == ("dropout",)
    with pytest.raises(BackdoorLabError, match=r"input_size of at least 63×63.*got 62×62"):
        create_model("alexnet", in_channels=3, num_classes=5, input_size=62)
    with pytest.raises(BackdoorLabError, match=r"input_size .*got 224×40"):
        AlexNet(input_size=(224, 40))
    with pytest.raises(BackdoorLabError, match="'dropout'"):
        AlexNet(input_size=64, dropout=1.0)


# -- the converter ----------------------------------------------------------------------------------------
def test_converted_weights_give_torchvisions_logits(reference, tmp_path: Path) -> None:
    ref, src = reference
    out = import_torchvision_alexnet(src, tmp_path / "alexnet.safetensors")
    model, card = load_model(out)
    assert card.name == "alexnet" and card.classes == tuple(str(i) for i in range(10))
    assert card.input_shape == (3, 224, 224)
    assert card.spec["mean"] == pytest.approx(IMAGENET_MEAN)
    assert card.spec["std"] == pytest.approx(IMAGENET_STD)
    assert card.extra["imported"]["file"] == src.name
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for x in (torch.rand(1, 3, 224, 224), torch.rand(2, 3, 67, 67)):
        with torch.no_grad():
            ours, theirs = model(x), ref((x - mean) / std)
        assert theirs.abs().max() > 0.1  # a real signal, not a sea of dead ReLUs
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def _tiny(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(s) for k, s in shapes.items()}


FULL_TINY = {
    **{f"features.{i}.{p}": (1,) for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")},
    **{f"classifier.{i}.{p}": (1,) for i in (1, 4, 6) for p in ("weight", "bias")},
}


def _case(tmp: Path, case: str) -> Path:
    """A bad input file for the converter, named as the user would have it."""
    src = tmp / "alexnet.safetensors"
    if case == "missing":
        return tmp / "nope.safetensors"
    if case == "garbage":
        src.write_bytes(b"certainly not a safetensors file")
    elif case in ("pth", "zip"):
        src = tmp / "alexnet.pth" if case == "pth" else src
        torch.save({"features.0.weight": torch.zeros(1)}, src)  # written, never read back
    elif case == "keys":
        save_file(_tiny({"features.0.weight": (64, 3, 11, 11)}), str(src))
    elif case == "extra":
        save_file(_tiny({**FULL_TINY, "features.1.running_mean": (1,)}), str(src))
    elif case == "head":
        save_file(_tiny({**FULL_TINY, "classifier.6.weight": (10, 100)}), str(src))
    elif case == "shape":
        shapes = {**FULL_TINY, "classifier.6.weight": (10, 4096), "features.0.weight": (64, 3, 11, 11)}
        save_file(_tiny({**shapes, "features.0.bias": (64,), "features.3.weight": (192, 64, 3, 3)}), str(src))
    elif case == "ints":
        save_file({**_tiny(FULL_TINY), "features.6.bias": torch.zeros(1, dtype=torch.int64)}, str(src))
    return src


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing", r"AlexNet weights not found: .*nope\.safetensors"),
        ("garbage", r"not a readable safetensors file .*safetensors\.torch\.save_file"),
        ("pth", r"alexnet\.pth is a pickle-based PyTorch checkpoint.*save_file\(torchvision\.models\.alexnet\("),
        ("zip", r"pickle-based PyTorch checkpoint, which backdoorlab never loads; convert it"),
        ("keys", r"missing keys features\.0\.bias, features\.3\.weight, features\.3\.bias \(and 12 more\); "
         r"expected torchvision's AlexNet layout"),
        ("extra", r"unexpected keys features\.1\.running_mean; expected only torchvision's AlexNet layout"),
        ("head", r"classifier\.6\.weight has shape \(10, 100\), expected \(num_classes, 4096\)"),
        ("shape", r"features\.3\.weight has shape \(192, 64, 3, 3\), expected \(192, 64, 5, 5\)"),
        ("ints", r"features\.6\.bias holds torch\.int64 values"),
    ],
)  # fmt: skip
def test_converter_errors_name_the_problem_and_write_nothing(tmp_path: Path, case: str, needle: str) -> None:
    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    src = _case(src_dir, case)
    with pytest.raises(BackdoorLabError, match=needle) as err:
        import_torchvision_alexnet(src, out_dir / "alexnet.safetensors")
    assert "\n" not in str(err.value)
    assert list(out_dir.iterdir()) == []


def test_converter_checks_classes_and_paths(reference, tmp_path: Path) -> None:
    _, src = reference
    with pytest.raises(BackdoorLabError, match=r"3 class names given but .* has 10 outputs"):
        import_torchvision_alexnet(src, tmp_path / "a.safetensors", classes=["a", "b", "c"])
    with pytest.raises(BackdoorLabError, match="is the input file"):
        import_torchvision_alexnet(src, src)
    assert list(tmp_path.iterdir()) == []


# -- the paper recipes ------------------------------------------------------------------------------------
def test_saha2020_paper_recipe_layers_resolve(paper_model: nn.Module) -> None:
    from backdoorlab.papers.saha2020 import (
        check_layer_fields,
        check_tail_chain,
        layer_outputs,
        load_saha2020_config,
        victim_tail,
    )

    cfg = load_saha2020_config(RECIPES / "saha2020" / "paper.yaml")
    assert cfg.data.options["size"] == 224 and cfg.pretrained
    check_layer_fields(paper_model, cfg)
    children = [n for n, _ in paper_model.named_children()]
    assert {cfg.feature_layer, cfg.conv_layer, *cfg.more_layers, paper_model.head_layer} <= set(children)
    probe = torch.rand(2, 3, 67, 67)
    check_tail_chain(paper_model, cfg.conv_layer, probe)
    shapes: dict[str, tuple[int, ...]] = {}
    feats = layer_outputs(paper_model, probe, [cfg.conv_layer, cfg.feature_layer], shapes=shapes)
    assert feats[cfg.feature_layer].shape == (2, 4096)
    tail = victim_tail(paper_model, cfg.conv_layer, 2, cfg.more_layers, 0, in_shape=shapes[cfg.conv_layer])
    trained = {n.split(".")[0] for n, p in tail.named_parameters() if p.requires_grad}
    assert trained == {"fc6", "fc7", "fc8"} and tail.eval()(feats[cfg.conv_layer]).shape == (2, 2)


def test_sun2020_paper_recipe_layers_resolve(paper_model: nn.Module) -> None:
    import copy

    from backdoorlab.attacks.hidden_trigger import resolve_feature_layer
    from backdoorlab.papers.sun2020 import load_sun2020_config
    from backdoorlab.transfer import replace_head

    cfg = load_sun2020_config(RECIPES / "sun2020" / "paper.yaml")
    for ds in cfg.datasets.values():
        assert ds.data.options["size"] == 224 and ds.pretrained
        name, module = resolve_feature_layer(paper_model, ds.feature_layer)
        assert name == "fc7_relu" and isinstance(module, nn.ReLU)
    victim = copy.deepcopy(paper_model)
    replace_head(victim, 2)
    assert victim.fc8.out_features == 2 and victim.spec["num_classes"] == 2
    assert [n for n, _ in victim.named_children()][-1] == "fc8"  # still the last of the forward chain


# -- the CLI ----------------------------------------------------------------------------------------------
def test_cli_import_alexnet(reference, tmp_path: Path, capsys) -> None:
    _, src = reference
    names = tmp_path / "classes.txt"
    names.write_text("".join(f"class {i}\n" for i in range(10)) + "\n")
    out = tmp_path / "data" / "alexnet_imagenet.safetensors"
    argv = ["models", "import-alexnet", str(src), str(out), "--classes-file", str(names)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    with safe_open(str(out), "pt") as f:  # the header only: the CLI has already loaded and checked the file
        header = json.loads(f.metadata()[HEADER_KEY])
    assert f"wrote {out}: alexnet, input 3×224×224" in text
    assert "classes: 10 (class 0, class 1, class 2, class 3, class 4, …)" in text and header["sha256"] in text
    assert header["classes"][9] == "class 9" and header["spec"]["name"] == "alexnet"
    assert (
        main(["models", "import-alexnet", str(tmp_path / "nope.pth"), str(tmp_path / "x.safetensors")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("backdoorlab: error: AlexNet weights not found") and "\n" not in err
    names.write_text("a\nb\n")
    assert main([*argv[:3], str(tmp_path / "y.safetensors"), "--classes-file", str(names)]) == 2
    assert "2 class names given" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


def _png_folder(root: Path, hw: int = 12) -> Path:
    """root/{train,test}/class{0,1,2}/*.png: 4 tinted hw×hw RGB images per class and split."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, tint in enumerate(((200, 40, 40), (40, 200, 40), (40, 40, 200))):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(4):
                pixels = np.clip(rng.normal(tint, 30, (hw, hw, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_cli_models_inspect_reads_a_data_folder(tmp_path: Path, capsys) -> None:
    images = _png_folder(tmp_path / "images")
    torch.manual_seed(0)
    net = create_model("lenet", in_channels=3, num_classes=3, input_size=16)
    path = save_model(net, tmp_path / "m.safetensors", classes=["class0", "class1", "class2"])
    inspect = ["models", "inspect", str(path), "--data", "folder"]
    assert main([*inspect, "--data-root", str(images), "--data-option", "size=16"]) == 0
    assert "clean accuracy on folder test split: " in capsys.readouterr().out
    for flags, needle in (
        ([], "give the folder with --data-root PATH"),
        (["--data-root", str(images)], "model expects 3×16×16 inputs, data is 3×12×12"),
        (
            ["--data-root", str(images), "--data-option", "size"],
            "--data-option 'size': write it as key=value",
        ),
        (["--data-root", str(images), "--data-option", "colour=1"], "takes no option 'colour'"),
    ):
        assert main([*inspect, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("backdoorlab: error: ") and needle in err and "\n" not in err
    assert main(["models", "inspect", str(path), "--data-root", str(images)]) == 2
    assert "give it with --data NAME" in capsys.readouterr().err
