"""Auxiliary models an attack needs before it can poison: trained once, cached, reused by a whole sweep.

Turner et al.'s clean-label attack perturbs target-class images with the help of a second model:

- ``perturbation: pgd`` needs an **adversarially trained** model (Turner §4.2/§5.3: the adversarial
  examples are "computed with respect to an independent model" that is robust, "generated for pre-trained
  models and not on the fly");
- ``perturbation: gan`` needs a **WGAN-GP** trained on the images of the two classes between which the
  poisons are interpolated (Turner §5.2).

In a config these appear as mappings under ``attack.params`` (``robust_model: {...}`` / ``gan: {...}``);
:func:`resolve_attack_params` validates them, trains the model on the clean training set (or finds it in
the artefact cache under the hash of everything that determines it) and swaps the mapping for the model.
Every rate and target class of a sweep over the same data therefore shares one robust model, and every
rate shares one GAN per class pair.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.cache import ArtifactCache
from backdoorlab.experiments.config import ModelConfig, parse_config_model, stable_hash
from backdoorlab.training import TrainRecipe, fit, resolve_device

StageProgress = Callable[[str, int, int], None]


class RobustModelConfig(BaseModel):
    """A Madry-style adversarially trained model (Madry et al. 2018) for Turner's PGD perturbations.

    ``eps`` and ``step`` are on the 0–255 scale, like the clean-label attack's own ε. The defaults are the
    common re-implementation of Turner's source model (REFERENCE_NOTES "002": L∞ ε 8, step 2, 10 steps,
    random start). ``model`` defaults to the victim's architecture, ``train`` to the victim's recipe.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelConfig | None = None
    train: TrainRecipe | None = None
    norm: str = Field("linf", pattern="^(linf|l2)$")
    eps: float = Field(8.0, gt=0, description="0–255 scale")
    step: float = Field(2.0, gt=0, description="0–255 scale")
    steps: int = Field(10, ge=1)
    random_start: bool = True


class GanConfig(BaseModel):
    """A WGAN-GP (Gulrajani et al. 2017) on the target class and the class poisons move toward (Turner §5.2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(2000, ge=1, description="generator steps")
    batch_size: int = Field(64, ge=1)
    latent_dim: int = Field(64, ge=1)
    width: int = Field(64, ge=1)
    n_critic: int = Field(5, ge=1)
    gp_weight: float = Field(10.0, ge=0)
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = Field(
        (0.0, 0.9), description="Adam betas: Gulrajani Algorithm 1 (0, 0.9); their released code (0.5, 0.9)"
    )


def robust_model_key(
    data_fp: str, spec: RobustModelConfig, model: ModelConfig, recipe: TrainRecipe, seed: int
) -> str:
    return stable_hash(
        {
            "data": data_fp,
            "model": model.model_dump(mode="json"),
            "train": recipe.model_dump(mode="json"),
            "adversary": spec.model_dump(mode="json", exclude={"model", "train"}),
            "seed": seed,
        }
    )


def train_robust_model(
    train: ImageTensors,
    spec: RobustModelConfig,
    build: Callable[[ModelConfig], torch.nn.Module],
    model_cfg: ModelConfig,
    recipe: TrainRecipe,
    *,
    seed: int,
    device: str,
    progress: Callable[[int, int, dict], None] | None = None,
) -> tuple[torch.nn.Module, list[dict]]:
    """Madry adversarial training of a fresh ``model_cfg`` on ``train`` (the clean training set)."""
    from backdoorlab.adversarial import eps_from_255, madry_objective

    model = build(model_cfg)
    objective = madry_objective(
        eps_from_255(spec.eps),
        eps_from_255(spec.step),
        spec.steps,
        norm=spec.norm,
        random_start=spec.random_start,
        gen=seed,
    )
    history = fit(model, train, recipe, objective=objective, seed=seed, device=device, progress=progress)
    return model, history


def resolve_attack_params(
    params: dict[str, Any],
    *,
    train: ImageTensors,
    data_fp: str,
    cache: ArtifactCache,
    build: Callable[[ModelConfig], torch.nn.Module],
    model_cfg: ModelConfig,
    recipe: TrainRecipe,
    seed: int,
    device: str,
    progress: StageProgress | None = None,
    trained: list[str] | None = None,
) -> dict[str, Any]:
    """``params`` with a ``robust_model`` or ``gan`` mapping replaced by the trained (cached) model."""
    from backdoorlab.models import load_model, save_model

    out = dict(params)
    spec_raw = out.get("robust_model")
    if isinstance(spec_raw, dict):
        spec = _parse("attack.params.robust_model", spec_raw, RobustModelConfig)
        mcfg = spec.model or model_cfg
        rcp = spec.train or recipe
        key = robust_model_key(data_fp, spec, mcfg, rcp, seed)
        label = "adversarially train robust model"

        def write(folder: Path) -> None:
            cb = (lambda s, t, _i: progress(label, s, t)) if progress else None
            model, history = train_robust_model(
                train, spec, build, mcfg, rcp, seed=seed, device=device, progress=cb
            )
            save_model(
                model.cpu(), folder / "model.safetensors", classes=train.classes, extra={"label": label}
            )
            (folder / "history.json").write_text(json.dumps(history))
            if trained is not None:
                trained.append(label)

        folder, _ = cache.get_or_create("robust", key, write)
        model, _card = load_model(folder / "model.safetensors")
        out["robust_model"] = model.to(resolve_device(device)).eval()
    gan_raw = out.get("gan")
    if isinstance(gan_raw, dict) or (out.get("perturbation") == "gan" and "generator" not in out):
        spec_g = _parse("attack.params.gan", gan_raw or {}, GanConfig)
        out.pop("gan", None)
        out["generator"] = _cached_gan(train, spec_g, out, data_fp, cache, seed, device, progress, trained)
        if out.get("perturbation") == "gan":
            _cached_gan_codes(train, out, data_fp, cache, seed, progress)
    return out


def gan_classes(params: dict[str, Any], num_classes: int) -> tuple[int, int]:
    """(target, toward): the two classes the GAN is trained on (toward defaults to target + 1 mod K)."""
    from backdoorlab.attacks.clean_label import default_toward

    target = int(params.get("target", 0))
    toward = params.get("toward")
    return target, default_toward(target, num_classes) if toward is None else int(toward)


def _cached_gan(
    train: ImageTensors,
    spec: GanConfig,
    params: dict[str, Any],
    data_fp: str,
    cache: ArtifactCache,
    seed: int,
    device: str,
    progress: StageProgress | None,
    trained: list[str] | None,
) -> torch.nn.Module:
    from backdoorlab.models.wgan import load_generator, save_generator, train_wgan_gp

    target, toward = gan_classes(params, train.num_classes)
    for name, c in (("attack.target", target), ("attack.params.toward", toward)):
        if not 0 <= c < train.num_classes:
            raise BackdoorLabError(f"{name}: {c} is not a class of this {train.num_classes}-class dataset")
    if target == toward:
        raise BackdoorLabError("attack.params.toward: must differ from the target class")
    pair = sorted((target, toward))
    key = stable_hash({"data": data_fp, "classes": pair, "gan": spec.model_dump(mode="json"), "seed": seed})
    label = f"train WGAN-GP on classes {pair[0]} and {pair[1]}"

    def write(folder: Path) -> None:
        images = train.of_classes(pair).float01()
        cb = (lambda s, t, _i: progress(label, s, t)) if progress else None
        g = train_wgan_gp(images, **spec.model_dump(), seed=seed, device=device, progress=cb)
        save_generator(g.cpu(), folder / "generator.safetensors")
        if trained is not None:
            trained.append(label)

    folder, _ = cache.get_or_create("gan", key, write)
    return load_generator(folder / "generator.safetensors").to(resolve_device(device)).eval()


def _cached_gan_codes(
    train: ImageTensors,
    params: dict[str, Any],
    data_fp: str,
    cache: ArtifactCache,
    seed: int,
    progress: StageProgress | None,
) -> None:
    """Invert the images this run poisons, and their partners, once (Turner §5.2: 1,000 steps each, the costly
    part of GAN poisoning) and keep the codes in the artefact cache: every τ of a sweep at this rate — in any
    worker process — reuses them, and the attack built from ``params`` finds them in memory."""
    from safetensors.torch import load_file, save_file

    from backdoorlab.attacks.clean_label import CleanLabel
    from backdoorlab.models.io import model_hash

    attack = CleanLabel(**{k: v for k, v in params.items() if k != "robust_model"})
    idx = attack.select(train.labels, torch.Generator().manual_seed(seed))  # the run's own selection
    target, toward = gan_classes(params, train.num_classes)
    key = stable_hash(
        {
            "data": data_fp,
            "generator": model_hash(params["generator"]),
            "classes": [target, toward],
            "poisons": idx.tolist(),
            "seed": attack.seed,
            "inversion": [attack.inversion_steps, attack.inversion_lr],
        }
    )

    def write(folder: Path) -> None:
        if progress:
            progress("invert poisons and partners into the GAN", 0, 1)
        need, codes = attack.gan_codes(train, idx)
        save_file({"idx": need.contiguous(), "codes": codes.contiguous()}, str(folder / "codes.safetensors"))

    folder, _ = cache.get_or_create("gan-codes", key, write)
    saved = load_file(str(folder / "codes.safetensors"))
    attack.add_gan_codes(train, saved["idx"], saved["codes"])


def _parse(field: str, raw: Any, model: type[BaseModel]) -> Any:
    try:
        return parse_config_model(raw, model)
    except BackdoorLabError as exc:
        raise BackdoorLabError(
            f"{field}.{exc}" if not str(exc).startswith("config") else f"{field}: {exc}"
        ) from None


__all__ = ["GanConfig", "RobustModelConfig", "resolve_attack_params", "train_robust_model"]
