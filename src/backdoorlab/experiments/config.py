"""Experiment configs: validated pydantic models, loaded from YAML.

A config names a dataset, a model, an attack (with its trigger), a training recipe and a seed. Everything
is checked before any work starts: field ranges by pydantic, names against the registries, and shapes
against the dataset (a trigger larger than the image, a model that does not take the data's shape).
Errors are :class:`BackdoorLabError` with the dotted field name, e.g. ``attack.rate: …``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backdoorlab.errors import BackdoorLabError
from backdoorlab.training import TrainRecipe

M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Which dataset, from where, and optionally a per-class subset for quick runs."""

    name: str = "mnist5k"
    options: dict[str, Any] = Field(default_factory=dict, description="loader options, e.g. root, seed")
    train_per_class: int | None = Field(
        None, ge=1, description="keep at most this many training images per class"
    )
    test_per_class: int | None = Field(None, ge=1, description="keep at most this many test images per class")


class ModelConfig(_Strict):
    name: str = "lenet"
    params: dict[str, Any] = Field(default_factory=dict)
    normalize: Literal["none", "dataset"] = Field(
        "none", description="'dataset': per-channel mean/std of the training images in the model's Normalize"
    )


class TriggerConfig(_Strict):
    kind: str = "square"
    params: dict[str, Any] = Field(default_factory=lambda: {"size": 3, "placement": "bottom-right"})


class AttackConfig(_Strict):
    name: str = "badnets"
    target: int | None = Field(
        0, ge=0, description="the target class; null only for an untargeted attack (advtrojan, Eq. 9)"
    )
    rate: float | int = Field(0.1, description="a fraction of the training set in (0, 1], or a count ≥ 1")
    trigger: TriggerConfig | None = Field(default_factory=TriggerConfig)
    params: dict[str, Any] = Field(
        default_factory=dict, description="further attack options (mode, sources, …)"
    )

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: float | int) -> float | int:
        if isinstance(v, bool):
            raise ValueError("must be a number")
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"a count must be ≥ 1, got {v}")
        elif not 0.0 < v <= 1.0:
            raise ValueError(f"must be a fraction in (0, 1] or a count ≥ 1, got {v}")
        return v


class ExperimentConfig(_Strict):
    """One experiment: poison, train the victim (and a clean reference), evaluate, report."""

    name: str = "experiment"
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    attack: AttackConfig | None = Field(default_factory=AttackConfig)
    train: TrainRecipe = Field(default_factory=TrainRecipe)
    clean_reference: bool = Field(True, description="also train a clean model with the same recipe")
    augment_poisoned: bool = Field(
        True,
        description="apply the recipe's augmentation to poisoned samples too; False keeps each trigger where "
        "it was stamped while benign images are augmented (Li et al. §4.1: the trigger is added after "
        "the standard training transformations)",
    )
    device: str = "auto"
    report_samples: int = Field(16, ge=0, le=256, description="poisoned samples shown in the report")

    def digest(self, *, exclude: tuple[str, ...] = ("name", "device", "report_samples")) -> str:
        """SHA-256 of the fields that change results (not the name, device or report layout)."""
        return stable_hash(self.model_dump(mode="json", exclude=set(exclude)))


def stable_hash(obj: Any) -> str:
    """SHA-256 of a JSON-able object with sorted keys: the cache key of a step's inputs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def validation_message(err: ValidationError, prefix: str = "") -> str:
    """Pydantic's error as one line: ``field.path: what is wrong``."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-after"))
    msg = first["msg"].removeprefix("Value error, ")
    extra = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    if first["type"] == "extra_forbidden":
        msg = "unknown field; check its spelling"
    where = ".".join(p for p in (prefix, loc) if p)
    return f"{where or 'config'}: {msg}{extra}"


def parse_config(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a plain dict (e.g. parsed YAML) into an :class:`ExperimentConfig`."""
    return parse_config_model(raw, ExperimentConfig)


def parse_config_model(raw: Any, model: type[M]) -> M:
    """Validate a plain dict into any pydantic config ``model``; errors name the dotted field."""
    if not isinstance(raw, dict):
        raise BackdoorLabError("config: the top level must be a mapping of fields")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise BackdoorLabError(validation_message(err)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file as a dict, with one-line errors for a missing file or bad YAML."""
    path = Path(path)
    if not path.is_file():
        raise BackdoorLabError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BackdoorLabError(f"{path}: not valid YAML{where}") from None
    return raw if raw is not None else {}


def load_config_model(path: str | Path, model: type[M]) -> M:
    """Read a YAML file and validate it into ``model``."""
    return parse_config_model(read_yaml(path), model)


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML file."""
    return load_config_model(path, ExperimentConfig)
