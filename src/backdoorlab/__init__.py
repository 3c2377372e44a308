"""backdoorlab: build, break, detect and defend backdoored image classifiers.

The public API in one place (see README for a ten-line example)::

    train, test = load_dataset("mnist5k")
    attack = BadNets(square(size=3), target=0, rate=0.1)
    poisoned = attack.poison(train, make_generator(0))
    model = create_model("lenet", in_channels=1, num_classes=10, input_size=28)
    fit(model, poisoned.data, TrainRecipe(epochs=12))
    accuracy(model, test), attack_success_rate(model, test, attack)
"""

from backdoorlab.attacks import Attack, BadNets, Blended, PoisonedSet, list_attacks, make_attack
from backdoorlab.data import Batches, ImageTensors, list_datasets, load_dataset, make_generator
from backdoorlab.errors import BackdoorLabError, UnsafeFileError
from backdoorlab.metrics import (
    accuracy,
    attack_success_rate,
    confusion_matrix,
    per_class_accuracy,
    predict_logits,
)
from backdoorlab.models import create_model, list_models, load_model, save_model
from backdoorlab.training import TrainRecipe, fit
from backdoorlab.triggers import Trigger, make_trigger, square, stamp

__version__ = "0.1.0"

__all__ = [
    "Attack",
    "BackdoorLabError",
    "BadNets",
    "Batches",
    "Blended",
    "ImageTensors",
    "PoisonedSet",
    "TrainRecipe",
    "Trigger",
    "UnsafeFileError",
    "accuracy",
    "attack_success_rate",
    "confusion_matrix",
    "create_model",
    "fit",
    "list_attacks",
    "list_datasets",
    "list_models",
    "load_dataset",
    "load_model",
    "make_attack",
    "make_generator",
    "make_trigger",
    "per_class_accuracy",
    "predict_logits",
    "save_model",
    "square",
    "stamp",
]
