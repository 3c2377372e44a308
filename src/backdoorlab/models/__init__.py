"""Architectures, a name registry and safe (safetensors-only) model files.

Every model takes raw pixels in [0, 1] (``N×C×H×W`` float32) and starts with its own :class:`Normalize`
layer; ``features(x)`` gives the penultimate features, and the class attributes ``feature_layer``,
``last_conv_layer`` and ``head_layer`` name modules to hook.
"""

from backdoorlab.models.convert import import_torchvision_alexnet
from backdoorlab.models.dncnn import DnCNN
from backdoorlab.models.io import (
    ModelCard,
    load_model,
    load_pretrained,
    load_state_dict_file,
    model_hash,
    save_model,
)
from backdoorlab.models.normalize import Normalize
from backdoorlab.models.registry import (
    ModelInfo,
    check_input_shape,
    create_model,
    input_shape,
    list_models,
    model_from_spec,
)
from backdoorlab.models.wgan import (
    WGANCritic,
    WGANGenerator,
    interpolate,
    invert,
    load_generator,
    save_generator,
    train_wgan_gp,
)

__all__ = [
    "DnCNN",
    "ModelCard",
    "ModelInfo",
    "Normalize",
    "WGANCritic",
    "WGANGenerator",
    "check_input_shape",
    "create_model",
    "import_torchvision_alexnet",
    "input_shape",
    "interpolate",
    "invert",
    "list_models",
    "load_generator",
    "load_model",
    "load_pretrained",
    "load_state_dict_file",
    "model_from_spec",
    "model_hash",
    "save_generator",
    "save_model",
    "train_wgan_gp",
]
