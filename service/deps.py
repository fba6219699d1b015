"""What the routes share: the service state, the caller's identity, the path and query types,
job lookup and its status body, the long-poll wait, the answer to a damaged result.

Everything here reads the app's state (`app.state.settings`, `app.state.service`, set by
`service.app.create_app`), so the routes are plain module-level functions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from service.auth import bearer, owner_of
from service.results import DamagedResultError
from service.runtime import Service
from service.schemas import Problem
from service.settings import Settings
from service.store import Job, JobState

log = logging.getLogger("service")

JobId = Annotated[
    str, Path(pattern=r"^[0-9a-f]{32}$", description="job id (32 lower-case hex digits)")
]
MAX_WAIT_S = 900.0
Wait = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_WAIT_S,
        description="seconds (at most 900) to wait for the job to end before answering: a long "
        "poll, so that one request gets a finished result; 0 answers at once",
    ),
]
_WAIT_POLL_S = 0.5

# The answers every keyed route can give, for the OpenAPI description.
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing or unknown API key"},
    403: {"model": Problem, "description": "no API keys configured: loopback clients only"},
    404: {"model": Problem, "description": "no such job (for this key)"},
}


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


async def owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The caller's owner id (`service.auth.owner_of`). ``async``: it only hashes a token, and
    a plain ``def`` dependency would cost every request a thread-pool hop."""
    token = credentials.credentials if credentials else None
    return owner_of(settings_of(request), request, token)


Owner = Annotated[str, Depends(owner)]


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def status_body(job: Job, queue_position: int | None, now: float) -> dict[str, Any]:
    """A `JobStatus` as a dict."""
    base = f"/forecast/{job.id}"
    return {
        "id": job.id,
        "status": job.status.value,
        "queue_position": queue_position,
        "progress": {
            "steps_done": job.steps_done,
            "steps_total": job.steps_total,
            "leads_done_hours": 12 * job.steps_done,
            "fraction": job.steps_done / job.steps_total,
            "eta_seconds": job.eta_seconds(now),
        },
        "request": job.request,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "expires_at": _iso(job.expires_at),
        "result_expired": job.expired,
        "attempts": job.attempts,
        "error": job.error,
        "links": {"self": base, "result": f"{base}/result", "scores": f"{base}/scores"},
    }


def find(request: Request, job_id: str, owner: str) -> Job:
    """The caller's job, or 404."""
    job = service(request).store.get(job_id, owner)
    if job is None:
        raise HTTPException(404, f"job {job_id}: not found")
    return job


def body(request: Request, job: Job) -> dict[str, Any]:
    """The job's `JobStatus` answer, with its place in the queue now."""
    return status_body(job, service(request).store.queue_position(job), time.time())


async def settled(request: Request, job_id: str, owner: str, wait: float) -> Job:
    """The job, once it has ended or ``wait`` seconds have passed (or the client left).
    It waits on the event loop, not in a thread, so long polls never starve the thread
    pool the other routes run in."""
    job = await run_in_threadpool(find, request, job_id, owner)
    deadline = time.monotonic() + wait
    while job.status in (JobState.QUEUED, JobState.RUNNING):
        left = deadline - time.monotonic()
        if left <= 0 or await request.is_disconnected():
            break
        await asyncio.sleep(min(_WAIT_POLL_S, left))
        job = await run_in_threadpool(find, request, job_id, owner)
    return job


def damaged(job_id: str, error: BaseException) -> HTTPException:
    """The answer to a job whose stored result cannot be read (logged with the job id)."""
    reason = (
        str(error) if isinstance(error, DamagedResultError) else f"{type(error).__name__}: {error}"
    )
    log.error("job %s: stored result damaged: %s", job_id, reason)
    return HTTPException(500, f"the stored result of job {job_id} is damaged: {reason}")
