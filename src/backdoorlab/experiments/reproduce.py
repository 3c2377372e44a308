"""``backdoorlab reproduce NAME --scale small|paper``: one command per paper table.

A reproduction is a function ``(scale, workspace, progress) -> report path`` registered under a name.
Its recipes live in ``backdoorlab/recipes/`` as YAML, one per scale: ``small`` runs on a laptop CPU in
minutes on offline data; ``paper`` is the paper's own setup, for a GPU and the original data.
Reproductions of the five papers are added by their issues; until then they answer "not yet".
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from backdoorlab.errors import BackdoorLabError, unknown_name
from backdoorlab.experiments.config import load_config
from backdoorlab.experiments.runner import StageProgress, Workspace, run_experiment

Reproduction = Callable[[str, Workspace, "StageProgress | None"], Path]


@dataclass(frozen=True)
class ReproductionInfo:
    name: str
    description: str
    fn: Reproduction | None  # None: planned, not built yet
    planned_in: str = ""

    @property
    def status(self) -> str:
        return "ready" if self.fn is not None else "not yet"

    @property
    def parallel(self) -> bool:
        """Whether it takes ``workers`` (independent models trained in parallel processes)."""
        return self.fn is not None and "workers" in inspect.signature(self.fn).parameters


_REGISTRY: dict[str, ReproductionInfo] = {}


def register_reproduction(name: str, description: str) -> Callable[[Reproduction], Reproduction]:
    def wrap(fn: Reproduction) -> Reproduction:
        _REGISTRY[name] = ReproductionInfo(name, description, fn)
        return fn

    return wrap


def _plan(name: str, description: str, where: str) -> None:
    _REGISTRY.setdefault(name, ReproductionInfo(name, description, None, where))


def recipe_path(name: str, scale: str | None = None) -> Path:
    """The packaged recipe ``recipes/<name>.yaml`` or ``recipes/<name>/<scale>.yaml``."""
    root = Path(str(resources.files("backdoorlab") / "recipes"))
    path = root / name / f"{scale}.yaml" if scale else root / f"{name}.yaml"
    if not path.is_file():
        raise BackdoorLabError(f"no recipe {path.relative_to(root)} in {root}")
    return path


def list_reproductions() -> list[ReproductionInfo]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def reproduce(
    name: str,
    scale: str,
    workspace: Workspace | str | Path,
    progress: StageProgress | None = None,
    recipe: str | Path | None = None,
    workers: int = 1,
) -> Path:
    """Run reproduction ``name`` at ``scale`` (or from a ``recipe`` file) and return its report path.

    ``workers > 1`` trains independent models in parallel processes, for reproductions that support it.
    """
    if scale not in ("small", "paper"):
        raise BackdoorLabError(f"scale must be 'small' or 'paper', got {scale!r}")
    if name not in _REGISTRY:
        raise unknown_name("reproduction", name, _REGISTRY)
    info = _REGISTRY[name]
    if info.fn is None:
        raise BackdoorLabError(f"reproduction {name!r} is not built yet: {info.planned_in}")
    if workers < 1:
        raise BackdoorLabError(f"workers must be ≥ 1, got {workers}")
    if workers > 1 and not info.parallel:
        raise BackdoorLabError(
            f"reproduction {name!r} runs in one process; --workers is supported by: "
            + ", ".join(r.name for r in list_reproductions() if r.parallel)
        )
    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    path = Path(recipe) if recipe is not None else None
    if workers > 1:
        return info.fn(scale, ws, progress, path, workers=workers)  # type: ignore[call-arg]
    return info.fn(scale, ws, progress, path)


@register_reproduction(
    "badnets", "Gu et al. BadNets on MNIST: poisoned vs clean LeNet (the demo, and its paper scale)"
)
def _badnets(scale: str, ws: Workspace, progress: StageProgress | None, recipe: Path | None = None) -> Path:
    result = run_experiment(load_config(recipe or recipe_path("badnets", scale)), ws, progress=progress)
    assert result.record.report is not None
    return Path(result.record.report)


@register_reproduction(
    "li2020", "Li et al., Rethinking the Trigger: Tables 1-5, Figs. 4, 5, 10, 13, 14, claims L1-L9"
)
def _li2020(scale: str, ws: Workspace, progress: StageProgress | None, recipe: Path | None = None) -> Path:
    from backdoorlab.papers.li2020 import load_li2020_config, run_li2020

    cfg = load_li2020_config(recipe or recipe_path("li2020", scale))
    return Path(run_li2020(cfg, ws, progress)["report"])


@register_reproduction(
    "turner2019", "Turner et al., Clean-Label Backdoor Attacks: Figs. 2, 5, 6, 8, 10-12, claims T1-T7"
)
def _turner2019(
    scale: str, ws: Workspace, progress: StageProgress | None, recipe: Path | None = None, workers: int = 1
) -> Path:
    from backdoorlab.papers.turner2019 import load_turner2019_config, run_turner2019

    cfg = load_turner2019_config(recipe or recipe_path("turner2019", scale))
    return Path(run_turner2019(cfg, ws, progress, workers=workers)["report"])


@register_reproduction(
    "saha2020", "Saha et al., Hidden Trigger Backdoor Attacks: Tables 1-5, 8, Fig. 2, claims H1-H5"
)
def _saha2020(scale: str, ws: Workspace, progress: StageProgress | None, recipe: Path | None = None) -> Path:
    from backdoorlab.papers.saha2020 import load_saha2020_config, run_saha2020

    cfg = load_saha2020_config(recipe or recipe_path("saha2020", scale))
    return Path(run_saha2020(cfg, ws, progress)["report"])


@register_reproduction(
    "advtrojan",
    "AdvTrojan: fake robustness (Fig. 4, Table 5), Neural Cleanse / STRIP / E-STRIP / adaptive NC / "
    "certified accuracy (Tables 2-4, Fig. 5, Eq. 10), App. G sweeps, Fig. 6, claims A1-A5",
)
def _advtrojan(scale: str, ws: Workspace, progress: StageProgress | None, recipe: Path | None = None) -> Path:
    from backdoorlab.papers.advtrojan import load_advtrojan_config, run_advtrojan

    cfg = load_advtrojan_config(recipe or recipe_path("advtrojan", scale))
    return Path(run_advtrojan(cfg, ws, progress)["report"])


@register_reproduction(
    "sun2020",
    "Sun et al., poisoned classifiers are fundamentally broken: Tables 1-2, Figs. 6-9, 18-19, 22, claims S1-S5",
)
def _sun2020(scale: str, ws: Workspace, progress: StageProgress | None, recipe: Path | None = None) -> Path:
    from backdoorlab.papers.sun2020 import load_sun2020_config, run_sun2020

    cfg = load_sun2020_config(recipe or recipe_path("sun2020", scale))
    return Path(run_sun2020(cfg, ws, progress)["report"])
