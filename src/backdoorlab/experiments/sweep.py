"""Sweeps: a base experiment config and a grid of overrides, run locally or on Ray, resumable.

A sweep file::

    name: rates-by-class
    base: recipe:badnets/small               # a packaged recipe, a config file (relative to this file)
                                             # or an inline mapping
    grid:
      product:                               # every combination of these lists
        attack.target: [0, 1, 2]
        attack.rate: [0.01, 0.05, 0.1]
        seed: [0, 1, 2]
      zip:                                   # each group: lists of equal length, taken element-wise
        - attack.name: [badnets, blended]
          attack.trigger.kind: [square, blend]
    retries: 1                               # a failed experiment is tried 1 + retries times

Dotted fields reach any depth of the config (``attack.params.robust_model.eps``); a value replaces the
field whole (a mapping, a list or ``null``: ``attack: null`` is a clean baseline). Every expanded config
is validated — fields, names, shapes, a dry run of the trigger — before anything runs.

Execution: the sweep's id is the hash of its expanded configs, so the same command finds the same sweep
and redoes only unfinished work. Workers run :func:`~backdoorlab.experiments.runner.run_experiment`
without touching the store; the driver is the store's one writer and commits each finished run together
with its item's status. Shared steps (a clean reference, a poisoned set, a robust model, a GAN) are cached
by the hash of their inputs under a file lock (:mod:`~backdoorlab.experiments.cache`), so parallel workers
compute each once. A failed experiment is retried ``retries`` times, then recorded as failed with its
error while the others go on.
"""

from __future__ import annotations

import copy
import importlib
import itertools
import math
import os
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.config import (
    ExperimentConfig,
    _Strict,
    parse_config,
    parse_config_model,
    read_yaml,
    stable_hash,
)
from backdoorlab.experiments.store import RunRecord, SweepItem

DEFAULT_RUNNER = "backdoorlab.experiments.sweep:execute"


class GridSpec(_Strict):
    product: dict[str, list[Any]] = Field(default_factory=dict, description="field -> values, all combined")
    zip: list[dict[str, list[Any]]] = Field(
        default_factory=list, description="groups of fields whose value lists are taken element-wise"
    )


class SweepSpec(_Strict):
    """A sweep file: a base config, a grid of overrides and how to run it."""

    name: str = "sweep"
    base: str | dict[str, Any] = Field(
        description="recipe:NAME/SCALE, a config file (relative to the sweep file) or a mapping"
    )
    grid: GridSpec = Field(default_factory=GridSpec)
    retries: int = Field(1, ge=0, le=20, description="extra attempts of a failed experiment")
    workers: int | Literal["auto"] = Field(
        "auto", description="parallel experiments; auto: cores / threads_per_worker"
    )
    threads_per_worker: int = Field(1, ge=1, le=256, description="torch threads of each worker")

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 1024:
            raise ValueError(f"must be 'auto' or a count in 1..1024, got {v}")
        return v


@dataclass(frozen=True)
class Sweep:
    """A validated, expanded sweep: its id, spec and one :class:`SweepItem` per experiment."""

    id: str
    spec: SweepSpec
    items: tuple[SweepItem, ...]

    @property
    def axes(self) -> list[str]:
        """The swept fields, in grid order."""
        return axes_of(self.spec)


def axes_of(spec: SweepSpec) -> list[str]:
    return [*spec.grid.product, *(f for group in spec.grid.zip for f in group)]


# -- expansion --------------------------------------------------------------------------------------------
def set_field(raw: dict[str, Any], path: str, value: Any) -> None:
    """Set dotted ``path`` in the nested mapping ``raw`` (creating groups), replacing the value whole."""
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise BackdoorLabError(f"grid field {path!r}: write it as dotted names, e.g. attack.rate")
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            where = ".".join(parts[: i + 1])
            raise BackdoorLabError(f"grid field {path!r}: {where} is a value, not a group of fields")
        node = nxt
    node[parts[-1]] = copy.deepcopy(value)


def _axes(grid: GridSpec) -> list[list[dict[str, Any]]]:
    """Each axis as its list of override dicts: one axis per product field, one per zip group."""
    axes: list[list[dict[str, Any]]] = []
    for field_name, values in grid.product.items():
        if not values:
            raise BackdoorLabError(f"grid.product.{field_name}: give at least one value")
        axes.append([{field_name: v} for v in values])
    for g, group in enumerate(grid.zip):
        if not group:
            raise BackdoorLabError(f"grid.zip[{g}]: give at least one field")
        lengths = {f: len(v) for f, v in group.items()}
        if len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise BackdoorLabError(
                f"grid.zip[{g}]: the lists must have the same non-zero length, got {lengths}"
            )
        n = next(iter(lengths.values()))
        axes.append([{f: group[f][i] for f in group} for i in range(n)])
    seen: set[str] = set()
    for axis in axes:
        for f in axis[0]:
            if f in seen:
                raise BackdoorLabError(f"grid: field {f!r} is swept twice; keep it in one place")
            seen.add(f)
    return axes


def _label(overrides: dict[str, Any]) -> str:
    def short(v: Any) -> str:
        return "null" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))

    return ",".join(f"{k.rsplit('.', 1)[-1]}={short(v)}" for k, v in overrides.items())


def expand(spec: SweepSpec, base: dict[str, Any]) -> list[tuple[dict[str, Any], ExperimentConfig]]:
    """Every ``(overrides, validated config)`` of the grid, in a fixed order (first axis slowest)."""
    out = []
    for combo in itertools.product(*_axes(spec.grid)):
        overrides = {k: v for part in combo for k, v in part.items()}
        raw = copy.deepcopy(base)
        for path, value in overrides.items():
            set_field(raw, path, value)
        if "name" not in overrides:
            raw["name"] = f"{spec.name}[{_label(overrides)}]" if overrides else spec.name
        try:
            config = parse_config(raw)
        except BackdoorLabError as exc:
            raise BackdoorLabError(f"sweep experiment {len(out)} ({_label(overrides)}): {exc}") from None
        out.append((overrides, config))
    return out


def load_sweep(source: str | Path | dict[str, Any], *, check: bool = True) -> Sweep:
    """Read and expand a sweep (a YAML path or a mapping); with ``check`` every config is also validated
    against its data (names, shapes, the trigger's dry run) before anything runs."""
    root = Path(".")
    if isinstance(source, dict):
        raw = source
    else:
        root = Path(source).parent
        raw = read_yaml(source)
    spec = parse_config_model(raw, SweepSpec)
    if isinstance(spec.base, str) and spec.base.startswith("recipe:"):
        from backdoorlab.experiments.reproduce import recipe_path

        name, _, scale = spec.base.removeprefix("recipe:").partition("/")
        base = read_yaml(recipe_path(name, scale or "small"))
    elif isinstance(spec.base, str):
        base_path = Path(spec.base)
        if not base_path.is_absolute():
            base_path = root / base_path
        if not base_path.is_file():
            raise BackdoorLabError(
                f"base: config file {base_path} not found (paths are relative to the sweep file)"
            )
        base = read_yaml(base_path)
    else:
        base = copy.deepcopy(spec.base)
    expanded = expand(spec, base)
    digests: dict[str, int] = {}
    for i, (overrides, config) in enumerate(expanded):
        d = config.digest()
        if d in digests:
            raise BackdoorLabError(
                f"sweep experiments {digests[d]} and {i} ({_label(overrides)}) are the same experiment; "
                "a grid field has no effect on the results (or a value is repeated)"
            )
        digests[d] = i
    if check:
        check_configs(expanded)
    items = tuple(
        SweepItem(idx=i, digest=c.digest(), overrides=o, config=c.model_dump(mode="json"))
        for i, (o, c) in enumerate(expanded)
    )
    sweep_id = stable_hash({"name": spec.name, "experiments": [it.digest for it in items]})[:10]
    return Sweep(id=sweep_id, spec=spec, items=items)


def check_configs(expanded: Sequence[tuple[dict[str, Any], ExperimentConfig]]) -> None:
    """Validate every config against its data (loading each distinct data config once)."""
    from backdoorlab.experiments.runner import load_data, validate

    data: dict[str, Any] = {}
    for i, (overrides, config) in enumerate(expanded):
        key = stable_hash({"data": config.data.model_dump(mode="json"), "seed": config.seed})
        try:
            if key not in data:
                data[key] = load_data(config)
            validate(config, *data[key])
        except BackdoorLabError as exc:
            raise BackdoorLabError(f"sweep experiment {i} ({_label(overrides)}): {exc}") from None


# -- one experiment, in a worker ----------------------------------------------------------------------------
def execute(config: dict[str, Any], root: str, threads: int) -> dict[str, Any]:
    """Run one experiment without writing the store; return its record, or its error as text.

    Runs in a worker process (local pool or Ray): everything in and out is plain data.
    """
    import torch

    from backdoorlab.experiments.runner import run_experiment

    torch.set_num_threads(threads)
    try:
        result = run_experiment(parse_config(config), root, store=False)
    except Exception as exc:  # reported to the driver, which retries or records it
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return {"error": tb}
    return {"record": result.record.__dict__, "trained": result.trained}


def _resolve(runner: str) -> Callable[..., dict[str, Any]]:
    module, _, name = runner.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise BackdoorLabError(f"runner {runner!r}: not an importable module:function") from None


def _call(runner: str, config: dict[str, Any], root: str, threads: int) -> dict[str, Any]:
    try:
        return _resolve(runner)(config, root, threads)
    except Exception as exc:  # a runner that raises instead of returning its error
        return {"error": traceback.format_exception_only(type(exc), exc)[-1].strip()}


# -- backends ---------------------------------------------------------------------------------------------
def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the driver, which stops them (no traceback from every worker)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalBackend:
    """A process pool (spawned, so each worker starts clean), rebuilt if a worker dies."""

    name = "local"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: Any = None

    def _pool(self) -> Any:
        if self.pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(
                self.workers, mp_context=mp.get_context("spawn"), initializer=_ignore_sigint
            )
        return self.pool

    def submit(self, runner: str, config: dict[str, Any], root: str, threads: int) -> Any:
        return self._pool().submit(_call, runner, config, root, threads)

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, dict[str, Any]]]:
        from concurrent.futures import FIRST_COMPLETED
        from concurrent.futures import wait as cf_wait
        from concurrent.futures.process import BrokenProcessPool

        done, _ = cf_wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        out = []
        broken = False
        for f in done:
            try:
                out.append((f, f.result()))
            except BrokenProcessPool:
                broken = True
                out.append((f, {"error": "a worker process died (killed or out of memory) while this ran"}))
        if broken:  # every other future of the pool fails the same way; start a fresh pool
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
        return out

    def close(self, abort: bool = False) -> None:
        """Shut the pool down; ``abort`` (Ctrl-C) also stops the experiments still running."""
        if self.pool is not None:
            if abort:
                for proc in list(getattr(self.pool, "_processes", {}).values()):
                    proc.terminate()
            self.pool.shutdown(wait=not abort, cancel_futures=True)
            self.pool = None


class _RayBackend:
    """Ray tasks (one CPU each); a local Ray is started when no address is given."""

    name = "ray"

    def __init__(self, workers: int, address: str | None, threads: int = 1) -> None:
        try:
            import ray
        except ImportError:
            raise BackdoorLabError(
                "--backend ray needs Ray: pip install 'backdoorlab[ray]' (or pip install ray)"
            ) from None
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                kwargs["num_cpus"] = workers * threads
            ray.init(address=address, **kwargs)
            self.started = True
        # a task reserves the CPUs its torch threads use; Ray's own retries are off: the driver retries
        self.task = ray.remote(num_cpus=threads, max_retries=0)(_call)

    def submit(self, runner: str, config: dict[str, Any], root: str, threads: int) -> Any:
        return self.task.remote(runner, config, root, threads)

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, dict[str, Any]]]:
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            try:
                out.append((ref, self.ray.get(ref)))
            except Exception as exc:  # worker crash or Ray failure: treated like a failed attempt
                out.append((ref, {"error": f"Ray task failed: {type(exc).__name__}: {exc}"[:2000]}))
        return out

    def close(self, abort: bool = False) -> None:
        if self.started:  # shutting down the local Ray we started stops its tasks too
            self.ray.shutdown()


def default_workers(threads_per_worker: int = 1) -> int:
    """As many workers as the cores hold at ``threads_per_worker`` torch threads each."""
    return max(1, (os.cpu_count() or 1) // threads_per_worker)


# -- the driver ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepStatus:
    """Where a sweep stands, for a progress view."""

    total: int
    done: int
    running: int
    failed: int
    elapsed: float
    eta: float | None

    @property
    def remaining(self) -> int:
        return self.total - self.done - self.failed

    def line(self) -> str:
        eta = "—" if self.eta is None else _duration(self.eta)
        return (
            f"done {self.done}/{self.total} · running {self.running} · failed {self.failed} · "
            f"remaining {self.remaining} · elapsed {_duration(self.elapsed)} · left ≈ {eta}"
        )


def _duration(s: float) -> str:
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@dataclass(frozen=True)
class SweepOutcome:
    sweep: Sweep
    items: list[SweepItem]
    seconds: float
    trained: dict[int, list[str]]

    @property
    def failed(self) -> list[SweepItem]:
        return [it for it in self.items if it.status == "failed"]


def run_sweep(
    sweep: Sweep | str | Path | dict[str, Any],
    workspace: str | Path,
    *,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    retry_failed: bool = False,
    progress: Callable[[SweepStatus], None] | None = None,
    runner: str = DEFAULT_RUNNER,
) -> SweepOutcome:
    """Run (or resume) a sweep in ``workspace``; experiments already done are skipped.

    ``backend`` ``"local"`` (a process pool) or ``"ray"`` (``address`` of a cluster, or a local Ray; on a
    cluster every node needs backdoorlab installed and ``workspace`` on a shared file system);
    ``workers`` overrides the spec's count; ``retry_failed`` gives items recorded as failed by an earlier
    invocation a new set of attempts. ``runner`` (``module:function``, called as ``fn(config, root,
    threads) -> {"record": …} | {"error": …}``) is the per-experiment work; tests swap it to inject faults.
    """
    from backdoorlab.experiments.runner import Workspace

    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep)
    if backend not in ("local", "ray"):
        raise BackdoorLabError(f"backend must be 'local' or 'ray', got {backend!r}")
    _resolve(runner)
    spec = sweep.spec
    threads = spec.threads_per_worker
    n_workers = workers or (default_workers(threads) if spec.workers == "auto" else int(spec.workers))
    if n_workers < 1:
        raise BackdoorLabError(f"workers must be ≥ 1, got {n_workers}")
    ws = Workspace(Path(workspace))
    store = ws.store
    store.open_sweep(sweep.id, spec.name, spec.model_dump(mode="json"), list(sweep.items))
    state = {it.idx: it for it in store.sweep_items(sweep.id)}
    attempts = {i: 0 for i in state}  # attempts in this invocation
    todo = deque(
        i
        for i, it in sorted(state.items())
        if it.status in ("pending", "running") or (retry_failed and it.status == "failed")
    )
    for i in todo:
        if state[i].status != "pending":
            store.set_item(sweep.id, i, "pending")
    done = sum(it.status == "done" for it in state.values())
    failed = sum(it.status == "failed" for it in state.values()) - sum(
        state[i].status == "failed" for i in todo
    )
    total = len(state)
    t0 = time.perf_counter()
    durations: list[float] = []
    trained: dict[int, list[str]] = {}
    running: dict[Any, tuple[int, float]] = {}

    def report() -> None:
        if progress is None:
            return
        left = len(todo) + len(running)
        eta = None
        if durations:
            eta = math.ceil(left / n_workers) * (sum(durations) / len(durations))
        progress(SweepStatus(total, done, len(running), failed, time.perf_counter() - t0, eta))

    be: LocalBackend | _RayBackend = (
        LocalBackend(n_workers) if backend == "local" else _RayBackend(n_workers, address, threads)
    )
    root = str(ws.root.resolve())
    try:
        report()
        while todo or running:
            while todo and len(running) < n_workers:
                i = todo.popleft()
                store.set_item(sweep.id, i, "running")
                handle = be.submit(runner, state[i].config, root, threads)
                running[handle] = (i, time.perf_counter())
            for handle, result in be.wait(list(running), timeout=0.5):
                i, started = running.pop(handle)
                if "record" in result:
                    store.finish_item(sweep.id, i, RunRecord(**result["record"]))
                    durations.append(time.perf_counter() - started)
                    trained[i] = list(result.get("trained", []))
                    done += 1
                else:
                    attempts[i] += 1
                    if attempts[i] <= spec.retries:
                        store.set_item(sweep.id, i, "pending", error=result["error"])
                        todo.append(i)
                    else:
                        store.set_item(sweep.id, i, "failed", error=result["error"])
                        failed += 1
            if isinstance(be, LocalBackend) and be.pool is None and running:
                # the pool broke: the futures still listed were lost with it; run them again
                for i, _ in running.values():
                    todo.appendleft(i)
                running.clear()
            report()
    except BaseException:  # Ctrl-C or a driver error: stop the workers; unfinished items resume next time
        be.close(abort=True)
        raise
    be.close()
    return SweepOutcome(sweep, store.sweep_items(sweep.id), time.perf_counter() - t0, trained)


def describe(sweep: Sweep) -> str:
    """A one-paragraph summary of what a sweep will run."""
    axes = sweep.axes
    return (
        f"sweep {sweep.id} ({sweep.spec.name}): {len(sweep.items)} experiments over "
        f"{', '.join(axes) if axes else 'no grid (the base config once)'}"
    )


__all__ = [
    "DEFAULT_RUNNER",
    "GridSpec",
    "Sweep",
    "SweepOutcome",
    "SweepSpec",
    "SweepStatus",
    "default_workers",
    "describe",
    "execute",
    "expand",
    "load_sweep",
    "run_sweep",
    "set_field",
]
