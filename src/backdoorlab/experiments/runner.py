"""The experiment runner: config in, cached artefacts, a store row and an HTML report out.

Steps, each cached under the hash of its inputs (so a second identical run trains nothing):

1. load the data (and per-class subsets) — cheap, not cached;
2. poison the training set            -> ``cache/poison/<key>/poison.safetensors``;
3. train the victim on the poisoned set -> ``cache/model/<key>/model.safetensors`` + ``history.json``;
4. train a clean reference (optional)  -> the same, keyed on the clean data;
5. evaluate clean accuracy and ASR of both, write the run folder and the report, then one store row.

Everything is validated (names, ranges, shapes, a dry run of the trigger) before step 2 starts.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from backdoorlab.attacks import make_attack
from backdoorlab.attacks.base import Attack, PoisonedSet
from backdoorlab.attacks.registry import attack_parameters, controls_training
from backdoorlab.data.registry import load_dataset
from backdoorlab.data.tensors import ImageTensors
from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.auxiliary import resolve_attack_params
from backdoorlab.experiments.cache import ArtifactCache
from backdoorlab.experiments.config import ExperimentConfig, stable_hash
from backdoorlab.experiments.store import RunRecord, RunStore
from backdoorlab.fileio import temp_dir, write_atomic
from backdoorlab.metrics import (
    ASR_CONVENTION,
    attack_success_rate,
    confusion_matrix,
    per_class_from_confusion,
    predictions,
)
from backdoorlab.models import check_input_shape, create_model, load_model, save_model
from backdoorlab.training import fit, resolve_device
from backdoorlab.triggers import make_trigger

StageProgress = Callable[[str, int, int], None]


@dataclass
class Workspace:
    """Where runs live: ``store.sqlite``, ``cache/`` and ``runs/<id>/`` under one folder."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def store(self) -> RunStore:
        return RunStore(self.root / "store.sqlite")

    @property
    def cache(self) -> ArtifactCache:
        return ArtifactCache(self.root / "cache")

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id


@dataclass
class RunResult:
    """What a finished run hands back to Python callers."""

    record: RunRecord
    train: ImageTensors
    test: ImageTensors
    attack: Attack | None
    poisoned: PoisonedSet | None
    victim: torch.nn.Module
    clean: torch.nn.Module | None
    cache_hits: int = 0
    cache_misses: int = 0
    trained: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record.metrics


# -- building blocks -----------------------------------------------------------------------------------
def load_data(config: ExperimentConfig) -> tuple[ImageTensors, ImageTensors]:
    """The configured dataset as ``(train, test)``, with the per-class subsets applied (seeded)."""
    train, test = _field_error("data", lambda: load_dataset(config.data.name, **config.data.options))
    if config.data.train_per_class:
        train = train.per_class(config.data.train_per_class, seed=config.seed)
    if config.data.test_per_class:
        test = test.per_class(config.data.test_per_class, seed=config.seed + 1)
    return train, test


# attack parameters given as a config mapping that the runner turns into a trained, cached model
AUXILIARY_PARAMS = ("robust_model", "gan")


def build_attack(
    config: ExperimentConfig, num_classes: int, resolved: dict[str, Any] | None = None
) -> Attack | None:
    """The configured attack (with its trigger), checked against the number of classes.

    Auxiliary-model mappings (``attack.params.robust_model`` / ``gan``) are left out unless ``resolved``
    params (see :func:`backdoorlab.experiments.auxiliary.resolve_attack_params`) are given: the test-time
    trigger never needs them, and only a poisoning step that misses the cache trains them.
    """
    if config.attack is None:
        return None
    a = config.attack
    if a.target is None and not controls_training(a.name):
        raise BackdoorLabError(
            f"attack.target: {a.name} needs a target class (0..{num_classes - 1}); only advtrojan is untargeted"
        )
    if a.target is not None and a.target >= num_classes:
        raise BackdoorLabError(
            f"attack.target: {a.target} is not a class of this {num_classes}-class dataset"
        )
    extra = (
        resolved
        if resolved is not None
        else {k: v for k, v in a.params.items() if not (k in AUXILIARY_PARAMS and isinstance(v, dict))}
    )
    params: dict[str, Any] = {"target": a.target, "rate": a.rate, **extra}
    if controls_training(a.name):  # no data is poisoned: no rate; its PGD starts follow the run's seed
        params.pop("rate")
        if "seed" in _field_error("attack", lambda: attack_parameters(a.name)):
            params.setdefault("seed", config.seed)
    if a.trigger is not None:
        params["trigger"] = _field_error(
            "attack.trigger", lambda: make_trigger(a.trigger.kind, **a.trigger.params)
        )
    return _field_error("attack", lambda: make_attack(a.name, **params))


def _field_error(field_name: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except BackdoorLabError as exc:
        raise BackdoorLabError(f"{field_name}: {exc}") from None


def build_model(config: ExperimentConfig, train: ImageTensors) -> torch.nn.Module:
    """A freshly initialised model for the data's shape; the init is seeded by ``config.seed``."""
    c, h, w = train.shape
    mean = std = None
    if config.model.normalize == "dataset":
        x = train.float01()
        mean = x.mean(dim=(0, 2, 3)).tolist()
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = _field_error(
            "model",
            lambda: create_model(
                config.model.name,
                in_channels=c,
                num_classes=train.num_classes,
                input_size=(h, w),
                mean=mean,
                std=std,
                **config.model.params,
            ),
        )
    check_input_shape(model, train.shape)
    return model


def validate(config: ExperimentConfig, train: ImageTensors, test: ImageTensors) -> Attack | None:
    """Check names, shapes and the trigger on two test images before any expensive step."""
    build_model(config, train)
    attack = build_attack(config, train.num_classes)
    if attack is not None:
        probe = test.float01(slice(0, 2))
        _field_error("attack.trigger", lambda: attack.apply_trigger(probe, torch.Generator().manual_seed(0)))
    return attack


def _save_poison(folder: Path, p: PoisonedSet) -> None:
    save_file(
        {
            "images": p.data.images.contiguous(),
            "labels": p.data.labels.contiguous(),
            "poison_idx": p.poison_idx.contiguous(),
            "original_labels": p.original_labels.contiguous(),
        },
        str(folder / "poison.safetensors"),
    )


def _load_poison(folder: Path, like: ImageTensors) -> PoisonedSet:
    t = load_file(str(folder / "poison.safetensors"))
    data = like.with_images(t["images"], t["labels"], poisoned=True)
    return PoisonedSet(data, t["poison_idx"], t["original_labels"])


def _train_cached(
    cache: ArtifactCache,
    key: str,
    config: ExperimentConfig,
    data: ImageTensors,
    val: ImageTensors,
    label: str,
    progress: StageProgress | None,
    trained: list[str],
    augment_mask: torch.Tensor | None = None,
    objective: Callable | None = None,
) -> tuple[torch.nn.Module, list[dict]]:
    def write(folder: Path) -> None:
        model = build_model(config, data)
        cb = (lambda s, t, _info: progress(label, s, t)) if progress else None
        # a killed run resumes training from its last finished epoch
        checkpoints = cache.root.parent / "checkpoints" / key
        history = fit(
            model,
            data,
            config.train,
            val=val,
            seed=config.seed,
            device=config.device,
            progress=cb,
            checkpoint_dir=checkpoints,
            augment_mask=augment_mask,
            **({"objective": objective} if objective is not None else {}),
        )
        save_model(model.cpu(), folder / "model.safetensors", classes=data.classes, extra={"label": label})
        (folder / "history.json").write_text(json.dumps(history))
        shutil.rmtree(checkpoints, ignore_errors=True)
        trained.append(label)

    folder, _hit = cache.get_or_create("model", key, write)
    model, _card = load_model(folder / "model.safetensors")
    return model.to(resolve_device(config.device)).eval(), json.loads((folder / "history.json").read_text())


def _evaluate(model: torch.nn.Module, test: ImageTensors, attack: Attack | None, seed: int) -> dict[str, Any]:
    cm = confusion_matrix(model, test)  # one pass gives accuracy, per-class accuracy and the matrix
    out: dict[str, Any] = {
        "clean_acc": float(cm.diag().sum() / max(int(cm.sum()), 1)),
        "per_class_acc": per_class_from_confusion(cm),
        "confusion": cm.tolist(),
    }
    if attack is not None and callable(getattr(attack, "evaluate", None)):
        out.update(attack.evaluate(model, test, seed=seed))  # the attack's own metrics (AdvTrojan Table 5)
    elif attack is not None:
        out["asr"] = attack_success_rate(model, test, attack, seed=seed)
    return out


def _examples(
    test: ImageTensors,
    poisoned: PoisonedSet | None,
    attack: Attack | None,
    victim: torch.nn.Module,
    n: int,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Small tensors the report shows: poisoned training samples and triggered test images with predictions."""
    ex: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(seed)

    def sample(idx: torch.Tensor) -> torch.Tensor:  # a seeded spread over the classes, shown in index order
        return idx[torch.randperm(len(idx), generator=gen)[:n]].sort().values

    if poisoned is not None and len(poisoned.poison_idx) and n:
        pick = sample(torch.arange(len(poisoned.poison_idx)))
        idx = poisoned.poison_idx[pick]
        ex["poison_images"] = poisoned.data.float01(idx).contiguous()
        ex["poison_labels"] = poisoned.data.labels[idx].contiguous()
        ex["poison_original"] = poisoned.original_labels[pick].contiguous()
    if attack is not None and n:
        keep = sample(attack.victim_mask(test.labels).nonzero().squeeze(1))
        clean = test.float01(keep)
        trig = attack.apply_trigger(clean, gen)
        shown = test.subset(keep)
        ex["test_clean"] = clean.contiguous()
        ex["test_triggered"] = trig.contiguous()
        ex["test_labels"] = shown.labels.contiguous()
        ex["test_pred_clean"] = predictions(victim, shown).contiguous()
        ex["test_pred_triggered"] = predictions(victim, shown.with_images(trig)).contiguous()
    return ex


# -- the runner ----------------------------------------------------------------------------------------
def run_experiment(
    config: ExperimentConfig,
    workspace: Workspace | str | Path,
    *,
    progress: StageProgress | None = None,
    report: bool = True,
    store: bool = True,
) -> RunResult:
    """Run ``config`` in ``workspace``: poison, train (cached), evaluate, store and report.

    ``store=False`` writes the run folder but leaves the store row to the caller (a sweep's driver is the
    store's one writer: it records the run and the sweep's bookkeeping in one transaction).
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    t0 = time.time()
    stage = (lambda name: progress(name, 0, 1)) if progress else (lambda name: None)

    stage("load data")
    train, test = load_data(config)
    attack = validate(config, train, test)
    cache = ws.cache
    data_fp = stable_hash({"train": train.fingerprint(), "test": test.fingerprint()})
    model_inputs = {
        "model": config.model.model_dump(mode="json"),
        "train": config.train.model_dump(mode="json"),
        "seed": config.seed,
    }
    trained: list[str] = []
    augment_mask: torch.Tensor | None = None

    poisoned: PoisonedSet | None = None
    victim_data = train
    artifacts: dict[str, str] = {}
    objective = None
    if attack is not None and controls_training(config.attack.name):
        # the attack is in the training objective (AdvTrojan Eq. 9), not in the data
        objective = attack.objective()
        victim_key = stable_hash(
            {"data": data_fp, "attack": config.attack.model_dump(mode="json"), **model_inputs}
        )
    elif attack is not None:
        stage("poison training set")
        poison_key = stable_hash(
            {"data": data_fp, "attack": config.attack.model_dump(mode="json"), "seed": config.seed}
        )

        def write_poison(folder: Path) -> None:
            gen = torch.Generator().manual_seed(config.seed)
            poisoner = attack
            if any(isinstance(config.attack.params.get(k), dict) for k in AUXILIARY_PARAMS) or (
                config.attack.params.get("perturbation") == "gan"
            ):
                resolved = resolve_attack_params(
                    {"target": config.attack.target, "rate": config.attack.rate, **config.attack.params},
                    train=train,
                    data_fp=data_fp,
                    cache=cache,
                    build=lambda mcfg: build_model(config.model_copy(update={"model": mcfg}), train),
                    model_cfg=config.model,
                    recipe=config.train,
                    seed=config.seed,
                    device=config.device,
                    progress=progress,
                    trained=trained,
                )
                resolved.pop("target")
                resolved.pop("rate")
                poisoner = build_attack(config, train.num_classes, resolved)
            stage("poison training set")
            _save_poison(folder, _field_error("attack", lambda: poisoner.poison(train, gen)))

        folder, _ = cache.get_or_create("poison", poison_key, write_poison)
        poisoned = _load_poison(folder, train)
        victim_data = poisoned.data
        artifacts["poison"] = str(folder)
        victim_inputs: dict[str, Any] = {"data": poison_key, **model_inputs}
        if not config.augment_poisoned:  # benign images augmented, triggers kept where they were stamped
            victim_inputs["augment_poisoned"] = False
            augment_mask = torch.ones(len(victim_data), dtype=torch.bool)
            augment_mask[poisoned.poison_idx] = False
        victim_key = stable_hash(victim_inputs)
    else:
        victim_key = stable_hash({"data": data_fp, **model_inputs})

    victim_label = (
        "train infected model (attack objective)"
        if objective is not None
        else ("train poisoned model" if attack is not None else "train model")
    )
    victim, victim_hist = _train_cached(
        cache, victim_key, config, victim_data, test, victim_label, progress, trained, augment_mask, objective
    )
    artifacts["victim"] = str(cache.path("model", victim_key))
    clean = clean_hist = None
    if config.clean_reference and attack is not None:
        clean_key = stable_hash({"data": data_fp, **model_inputs})
        clean, clean_hist = _train_cached(
            cache, clean_key, config, train, test, "train clean model", progress, trained
        )
        artifacts["clean"] = str(cache.path("model", clean_key))

    stage("evaluate")
    metrics: dict[str, Any] = {
        "victim": _evaluate(victim, test, attack, config.seed),
        "history": {"victim": victim_hist},
        "n_train": len(train),
        "n_test": len(test),
        "classes": list(train.classes),
        "asr_convention": ASR_CONVENTION,
    }
    if poisoned is not None:
        metrics["n_poisoned"] = len(poisoned.poison_idx)
        metrics["poison_rate"] = poisoned.rate
    if clean is not None:
        metrics["clean"] = _evaluate(clean, test, attack, config.seed)
        metrics["history"]["clean"] = clean_hist

    run_id = secrets.token_hex(4)
    while (ws.run_dir(run_id)).exists():
        run_id = secrets.token_hex(4)
    record = RunRecord(
        id=run_id,
        name=config.name,
        created=time.time(),
        seconds=time.time() - t0,
        config=config.model_dump(mode="json"),
        metrics=metrics,
        artifacts=artifacts,
        report=None,
    )
    # the run folder is written under a temporary name and renamed: never half-visible
    run_dir = ws.run_dir(run_id)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(run_dir.parent, f".{run_id}.")
    try:
        examples = _examples(test, poisoned, attack, victim, config.report_samples, config.seed)
        if examples:
            save_file(examples, str(tmp / "examples.safetensors"))
        (tmp / "run.json").write_text(json.dumps({"id": run_id, "config": record.config, "metrics": metrics}))
        if report:
            from backdoorlab.experiments.report import render_run_report

            stage("write report")
            (tmp / "report.html").write_text(render_run_report(record, examples))
        os.replace(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if report:
        record = RunRecord(**{**record.__dict__, "report": str(run_dir / "report.html")})
    if store:
        ws.store.add(record)
    return RunResult(
        record=record,
        train=train,
        test=test,
        attack=attack,
        poisoned=poisoned,
        victim=victim,
        clean=clean,
        cache_hits=cache.hits,
        cache_misses=cache.misses,
        trained=trained,
    )


def rerender_report(workspace: Workspace | str | Path, run_id: str) -> Path:
    """Render the HTML report of a stored run again from its run folder."""
    from backdoorlab.experiments.report import render_run_report

    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    record = ws.store.get(run_id)
    run_dir = ws.run_dir(record.id)
    ex_path = run_dir / "examples.safetensors"
    examples = load_file(str(ex_path)) if ex_path.is_file() else {}
    out = write_atomic(run_dir / "report.html", render_run_report(record, examples))
    ws.store.set_report(record.id, str(out))
    return out
