"""Run a list of experiments, one after another or in parallel worker processes.

A reproduction that trains dozens of independent victims (Turner et al. train one per variant, class and
poisoning rate) hands them to :func:`run_experiments`. With ``workers > 1`` they run in a spawned process
pool, one torch thread per worker, exactly as a sweep's local backend runs its experiments: each worker runs
``run_experiment(store=False)`` and this process, the store's only writer, records every finished run. The
artefact cache's per-key locks make shared steps (a robust source model, a GAN) build once.

Workers are *spawned*: a script that calls this with ``workers > 1`` must keep its top-level code under
``if __name__ == "__main__":`` (each worker imports the script again; the CLI needs nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from backdoorlab.errors import BackdoorLabError
from backdoorlab.experiments.config import ExperimentConfig
from backdoorlab.experiments.runner import StageProgress, Workspace, run_experiment
from backdoorlab.experiments.store import RunRecord

_RUNNER = "backdoorlab.experiments.sweep:execute"


def run_experiments(
    configs: Sequence[ExperimentConfig],
    workspace: Workspace | str | Path,
    *,
    workers: int = 1,
    progress: StageProgress | None = None,
    label: str = "experiments",
) -> list[RunRecord]:
    """Run every config (no HTML report per run) and return their stored records, in ``configs`` order.

    ``workers == 1`` runs them here, in order; more run in that many processes of one torch thread each.
    A failing experiment stops the batch with its name and error (finished runs stay stored and cached, so
    running the batch again only redoes what is missing from the cache).
    """
    if workers < 1:
        raise BackdoorLabError(f"workers must be ≥ 1, got {workers}")
    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    total = len(configs)
    tick = (lambda done: progress(label, done, total)) if progress else (lambda done: None)
    if workers == 1 or total <= 1:
        records = []
        for i, cfg in enumerate(configs):
            tick(i)
            records.append(run_experiment(cfg, ws, report=False).record)
        tick(total)
        return records
    return _run_parallel(configs, ws, min(workers, total), tick)


def _run_parallel(
    configs: Sequence[ExperimentConfig], ws: Workspace, workers: int, tick: Callable[[int], None]
) -> list[RunRecord]:
    from backdoorlab.experiments.sweep import LocalBackend

    backend = LocalBackend(workers)
    records: list[RunRecord | None] = [None] * len(configs)
    abort = True
    try:
        ws.root.mkdir(parents=True, exist_ok=True)
        handles = {
            backend.submit(_RUNNER, cfg.model_dump(mode="json"), str(ws.root), 1): i
            for i, cfg in enumerate(configs)
        }
        done = 0
        tick(0)
        while handles:
            for handle, result in backend.wait(list(handles), timeout=1.0):
                i = handles.pop(handle)
                if "error" in result:
                    raise BackdoorLabError(f"experiment {configs[i].name!r} failed: {result['error']}")
                record = RunRecord(**result["record"])
                ws.store.add(record)
                records[i] = record
                done += 1
                tick(done)
        abort = False
    finally:
        backend.close(abort=abort)
    return [r for r in records if r is not None]
