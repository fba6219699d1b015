"""The durable job queue: job records, their states, and the one interface both databases serve.

A job moves ``queued -> running -> succeeded | failed``, or to ``cancelled`` from either of the
first two. A worker *claims* queued jobs (atomically: two workers never get the same job),
heartbeats while it holds them, reports progress after each chunk of leads it has written, and
finishes them. A running job whose worker stopped heartbeating for ``timeout`` seconds is
claimed again by another worker (its attempts counted; after ``max_attempts`` it fails), so a
crash loses no job. Times are UNIX seconds (UTC).

Implementations: SQLite, the embedded default (`service.sql_store.SQLiteJobStore`), and
PostgreSQL for several API servers and workers on several hosts
(`service.sql_store.PostgresJobStore`); `service.sql_store.open_store` picks one from a URL.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Sequence
from typing import Any


class StoreUnavailableError(RuntimeError):
    """The job database cannot be opened; the message says in one line what is wrong (the
    database missing, the connection refused, authentication failed, the path not writable)."""


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NewJob:
    """What a submission stores.

    Attributes:
      id: 32 lower-case hex digits, made by the server (never by the client).
      owner: the API key's id (or ``"local"`` without keys); a key sees only its jobs.
      model: the compatibility key of the model that must run it (workers claim only theirs).
      request: the normalised request (JSON-able).
      request_hash: digest of ``request``, to tell an idempotent replay from a conflict.
      members: ensemble size M.
      steps_total: 12 h steps to run.
      idempotency_key: the client's ``Idempotency-Key`` header, if any.
    """

    id: str
    owner: str
    model: str
    request: dict[str, Any]
    request_hash: str
    members: int
    steps_total: int
    idempotency_key: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Job:
    """A stored job (see `NewJob` for the submitted fields)."""

    id: str
    owner: str
    model: str
    request: dict[str, Any]
    request_hash: str
    members: int
    steps_total: int
    idempotency_key: str | None
    status: JobState
    steps_done: int
    error: str | None
    worker_id: str | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    heartbeat_at: float | None
    claimed_at: float | None
    claimed_steps: int
    progress_at: float | None
    expires_at: float | None
    expired: bool

    def eta_seconds(self, now: float) -> float | None:
        """Seconds to finish at this attempt's pace so far (None before its first chunk)."""
        if self.status != JobState.RUNNING or self.claimed_at is None:
            return None
        done = self.steps_done - self.claimed_steps
        if done <= 0:
            return None
        per_step = (max(self.progress_at or now, self.claimed_at) - self.claimed_at) / done
        return per_step * (self.steps_total - self.steps_done)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkerInfo:
    id: str
    model: str
    host: str
    ready: bool
    started_at: float
    heartbeat_at: float


class QueueFullError(Exception):
    """The queue holds ``max_queued`` jobs already."""


class IdempotencyConflictError(Exception):
    """An ``Idempotency-Key`` was reused for a different request."""


class JobStore(abc.ABC):
    """The job queue. Every method is atomic and safe to call from several threads/processes."""

    @abc.abstractmethod
    def submit(self, job: NewJob, *, max_queued: int, now: float) -> tuple[Job, bool]:
        """Queue ``job``; returns ``(job, created)``.

        With an idempotency key that ``job.owner`` used before, returns the earlier job and
        ``created=False``.

        Raises:
          QueueFullError: ``max_queued`` jobs are queued already.
          IdempotencyConflictError: the key was used for a request with another hash.
        """

    @abc.abstractmethod
    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job, or None if absent (or not ``owner``'s when given)."""

    @abc.abstractmethod
    def list_jobs(
        self,
        owner: str | None,
        statuses: Sequence[JobState] = (),
        *,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs of ``owner`` (all owners when None), newest first, optionally by status."""

    @abc.abstractmethod
    def queue_position(self, job: Job) -> int | None:
        """1 for the next queued job of its model, ...; None unless queued."""

    @abc.abstractmethod
    def counts(self) -> dict[JobState, int]:
        """Jobs per state (every state present)."""

    @abc.abstractmethod
    def cancel(
        self, job_id: str, owner: str | None, *, now: float, expires_at: float
    ) -> Job | None:
        """Cancel a queued or running job (a worker drops it at its next chunk); returns the
        job as it is afterwards (unchanged when already terminal), None if not found."""

    @abc.abstractmethod
    def claim(
        self,
        worker_id: str,
        model: str,
        *,
        max_members: int,
        limit: int,
        now: float,
        timeout: float,
        max_attempts: int,
    ) -> list[Job]:
        """Atomically take up to ``limit`` jobs of ``model`` totalling at most ``max_members``.

        Candidates are queued jobs and running jobs whose heartbeat is older than ``timeout``,
        oldest first; taking stops at the first that does not fit (first come, first served).
        A stale job that reached ``max_attempts`` claims is failed instead.
        """

    @abc.abstractmethod
    def heartbeat(self, worker_id: str, model: str, host: str, *, ready: bool, now: float) -> None:
        """Record that the worker lives (and whether it is warmed up); renews its jobs."""

    @abc.abstractmethod
    def remove_worker(self, worker_id: str) -> None:
        """Forget a worker that stops cleanly."""

    @abc.abstractmethod
    def live_workers(self, *, now: float, timeout: float) -> list[WorkerInfo]:
        """Workers whose last heartbeat is at most ``timeout`` seconds old."""

    @abc.abstractmethod
    def progress(self, job_id: str, worker_id: str, steps_done: int, *, now: float) -> bool:
        """Record progress; False when the job is no longer this worker's running job
        (cancelled, or claimed by another after a missed heartbeat): drop it."""

    @abc.abstractmethod
    def finish(
        self,
        job_id: str,
        worker_id: str,
        status: JobState,
        *,
        now: float,
        expires_at: float,
        error: str | None = None,
    ) -> bool:
        """End this worker's running job as succeeded or failed; False if it was not its."""

    @abc.abstractmethod
    def expire(self, now: float) -> list[str]:
        """Mark ended jobs whose ``expires_at`` passed as expired; returns their ids."""

    @abc.abstractmethod
    def prune_workers(self, *, now: float, grace: float) -> list[str]:
        """Forget workers silent for more than ``grace`` seconds (killed without a clean stop:
        their jobs were already claimable again after the job timeout); returns their ids."""

    @abc.abstractmethod
    def maintain(self) -> None:
        """Housekeeping that a long-lived owner runs every second or so from a background
        thread, so that no request pays for it (SQLite: checkpoint the WAL)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""
