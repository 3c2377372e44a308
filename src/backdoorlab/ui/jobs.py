"""Background jobs for the web tool: a small thread pool, progress the page polls, results kept in memory.

Long work (an attack with hundreds of PGD steps, training a denoiser, measuring dozens of candidate triggers)
runs in a worker thread so every request returns at once and the page stays responsive; the page polls
``GET /api/jobs/{id}`` for the stage and progress. Finished jobs are kept, oldest dropped first, up to
``max_jobs``; at most ``max_pending`` jobs may wait or run at once (a further submission is refused).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from backdoorlab.errors import BackdoorLabError

log = logging.getLogger("backdoorlab.ui")

JOB_ID = r"^[0-9a-f]{16}$"
STATUSES = ("queued", "running", "done", "failed")


class TooManyJobs(BackdoorLabError):
    """More jobs are waiting than the pool accepts."""


@dataclass
class Job:
    """One background task: its status, the current stage and step, and its result or error message."""

    id: str
    kind: str
    status: str = "queued"
    stage: str = ""
    done: int = 0
    total: int = 0
    result: Any = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None

    def progress(self, step: int, total: int, info: dict | None = None) -> None:
        """The ``progress(step, total, info)`` callback of the library's long loops."""
        stage = str((info or {}).get("stage", self.stage or self.kind))
        self.stage, self.done, self.total = stage, int(step), int(total)

    def set_stage(self, stage: str) -> None:
        self.stage, self.done, self.total = stage, 0, 0

    @property
    def fraction(self) -> float:
        if self.status == "done":
            return 1.0
        return min(1.0, self.done / self.total) if self.total else 0.0

    def to_json(self, result: bool = True) -> dict[str, Any]:
        end = self.finished or time.time()
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "stage": self.stage,
            "done": self.done,
            "total": self.total,
            "fraction": round(self.fraction, 4),
            "seconds": round(end - (self.started or end), 2),
            "error": self.error,
        }
        if result and self.status == "done":
            out["result"] = self.result
        return out


class JobManager:
    """A thread pool of ``workers`` threads running :class:`Job` functions; thread-safe."""

    def __init__(self, workers: int = 1, max_jobs: int = 64, max_pending: int = 8) -> None:
        if workers < 1 or max_jobs < 1 or max_pending < 1:
            raise BackdoorLabError("workers, max_jobs and max_pending must be ≥ 1")
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backdoorlab-ui")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self.max_jobs = max_jobs
        self.max_pending = max_pending

    def submit(self, kind: str, fn: Callable[[Job], Any]) -> Job:
        """Queue ``fn(job)``; its return value (JSON-able) becomes ``job.result``."""
        with self._lock:
            pending = sum(j.status in ("queued", "running") for j in self._jobs.values())
            if pending >= self.max_pending:
                raise TooManyJobs(
                    f"{pending} jobs are already queued or running; wait for one to finish and try again"
                )
            job = Job(id=secrets.token_hex(8), kind=kind)
            self._jobs[job.id] = job
            self._evict()
        self._pool.submit(self._run, job, fn)
        return job

    def _evict(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.status in ("done", "failed")]
        while len(self._jobs) > self.max_jobs and finished:
            self._jobs.pop(finished.pop(0), None)

    def _run(self, job: Job, fn: Callable[[Job], Any]) -> None:
        job.status, job.started = "running", time.time()
        try:
            job.result = fn(job)
            job.status = "done"
        except BackdoorLabError as exc:
            job.error, job.status = str(exc), "failed"
        except Exception as exc:  # a bug: keep the server alive, report one line, log the traceback
            log.exception("job %s (%s) failed", job.id, job.kind)
            job.error, job.status = f"internal error in {job.kind}: {type(exc).__name__}: {exc}", "failed"
        finally:
            job.finished = time.time()

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def list(self) -> list[Job]:
        with self._lock:
            return list(reversed(self._jobs.values()))

    def wait(self, job_id: str, timeout: float = 60.0) -> Job:
        """Block until the job finishes (for scripts and tests); raises TimeoutError."""
        end = time.time() + timeout
        job = self.get(job_id)
        while job.status in ("queued", "running"):
            if time.time() > end:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
            time.sleep(0.02)
        return job

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["JOB_ID", "STATUSES", "Job", "JobManager", "TooManyJobs"]
