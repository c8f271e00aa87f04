"""The v2 queue: submitted jobs, their worker pool, and their results.

A job's credits are held from submission; it is charged when it completes
and the hold is released when it fails. Jobs wait in the queue (``QUEUED``)
while the concurrency cap is full, like the real queue, instead of answering
429. Results and output images expire ``result_ttl_s`` after completion.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from emulator.engine import ApiError, Engine
from emulator.state import EmulatorState
from segmind_core.contract import Endpoint, OutputFormat

__all__ = ["Job", "JobQueue", "JobStatus"]

_DEFAULT_WORKERS = 32


class JobStatus(StrEnum):
    """States of a v2 request."""

    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


@dataclass
class Job:
    """One v2 request and, once done, its result."""

    request_id: str
    endpoint: Endpoint
    payload: Mapping[str, Any]
    base_url: str
    created_at: float = field(default_factory=time.monotonic)
    status: JobStatus = JobStatus.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    image: bytes | None = None
    output_format: OutputFormat | None = None
    seed: int | None = None
    remaining_credits: Decimal | None = None

    @property
    def output_url(self) -> str | None:
        """Where the output image can be downloaded (no key needed), once completed."""
        if self.output_format is None:
            return None
        return f"{self.base_url}/outputs/{self.request_id}.{self.output_format.value}"

    def metrics(self) -> dict[str, Any]:
        """Timings, and for a completed job its cost, balance and seed."""
        now = time.monotonic()
        started = self.started_at if self.started_at is not None else now
        finished = self.finished_at if self.finished_at is not None else now
        metrics: dict[str, Any] = {
            "queue_time": round(started - self.created_at, 4),
            "inference_time": round(finished - started, 4) if self.started_at else 0.0,
            "total_time": round(finished - self.created_at, 4),
        }
        if self.status is JobStatus.COMPLETED:
            metrics["cost"] = float(self.endpoint.price_usd)
            metrics["remaining_credits"] = float(self.remaining_credits or 0)
            metrics["seed"] = self.seed
        return metrics


class JobQueue:
    """Runs v2 jobs on a worker pool and keeps their results for a while."""

    def __init__(
        self,
        engine: Engine,
        state: EmulatorState,
        stop: threading.Event,
        *,
        workers: int | None,
        result_ttl_s: float,
    ) -> None:
        self._engine = engine
        self._state = state
        self._stop = stop
        self._ttl = result_ttl_s
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._pool = ThreadPoolExecutor(
            max_workers=workers or _DEFAULT_WORKERS, thread_name_prefix="emulator-job"
        )

    def submit(self, endpoint: Endpoint, payload: Mapping[str, Any], base_url: str) -> Job:
        """Queue a job whose credits the caller has already held."""
        job = Job(str(uuid.uuid4()), endpoint, payload, base_url)
        with self._lock:
            self._expire_locked()
            self._jobs[job.request_id] = job
        self._state.count_job(JobStatus.QUEUED.value)
        self._pool.submit(self._run, job)
        return job

    def get(self, request_id: str) -> Job | None:
        """The job, or ``None`` when it never existed or its result expired."""
        with self._lock:
            self._expire_locked()
            return self._jobs.get(request_id)

    def clear(self) -> None:
        """Forget every finished job (queued and running jobs finish normally)."""
        with self._lock:
            self._jobs = {
                rid: job
                for rid, job in self._jobs.items()
                if job.status in (JobStatus.QUEUED, JobStatus.PROCESSING)
            }

    def close(self) -> None:
        """Drop queued jobs and wait for running ones to notice the stop."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _expire_locked(self) -> None:
        cutoff = time.monotonic() - self._ttl
        expired = [
            rid
            for rid, job in self._jobs.items()
            if job.finished_at is not None and job.finished_at < cutoff
        ]
        for rid in expired:
            del self._jobs[rid]

    def _run(self, job: Job) -> None:
        if not self._state.enter_when_free(self._stop):
            self._finish(job, error="the service is shutting down")
            return
        try:
            job.started_at = time.monotonic()
            job.status = JobStatus.PROCESSING
            request = self._engine.validate(job.endpoint, job.payload)
            generation = self._engine.produce(job.endpoint, request)
        except ApiError as exc:
            self._finish(job, error=exc.message)
        except Exception as exc:  # an emulator bug must still end the job
            self._finish(job, error=f"internal error: {type(exc).__name__}: {exc}")
        else:
            job.image = generation.image
            job.seed = generation.seed
            job.remaining_credits = self._engine.charge(job.endpoint)
            job.output_format = generation.output_format
            job.finished_at = time.monotonic()
            job.status = JobStatus.COMPLETED
            self._state.count_job(JobStatus.COMPLETED.value)
        finally:
            self._state.leave()

    def _finish(self, job: Job, *, error: str) -> None:
        self._engine.release(job.endpoint)
        job.error = error
        job.finished_at = time.monotonic()
        job.status = JobStatus.FAILED
        self._state.count_job(JobStatus.FAILED.value)
