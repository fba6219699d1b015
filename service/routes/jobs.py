"""Routes of the jobs: submit (POST /forecast), list, status, cancel."""

from __future__ import annotations

import functools
import inspect
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response

from service.catalog import request_hash
from service.deps import ERRORS, JobId, Owner, body, find, service, settings_of
from service.schemas import ForecastRequestBase, JobList, JobStatus, Problem, request_model
from service.settings import Settings
from service.store import IdempotencyConflictError, JobState, NewJob, QueueFullError

router = APIRouter()


def submit(
    forecast: ForecastRequestBase,
    request: Request,
    response: Response,
    owner: Owner,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=128,
            description="a client-chosen key: submitting again with it returns the same job",
        ),
    ] = None,
) -> dict[str, Any]:
    """Validate the request against the model and the archive and queue it (202). The
    answer holds the job id, its status and its place in the queue."""
    svc = service(request)
    checked = forecast
    digest = request_hash(checked.model_dump(mode="json"))
    run = svc.catalog.normalize(checked)
    new = NewJob(
        id=uuid.uuid4().hex,
        owner=owner,
        model=svc.catalog.info.key,
        request=run.model_dump(mode="json"),
        request_hash=digest,
        members=run.members,
        steps_total=run.lead_hours // 12,
        idempotency_key=idempotency_key,
    )
    try:
        job, created = svc.store.submit(
            new, max_queued=settings_of(request).max_queued, now=time.time()
        )
    except QueueFullError as error:
        svc.metrics.submissions.labels("throttled").inc()
        raise HTTPException(
            429, f"{error}; retry later", {"Retry-After": str(settings_of(request).retry_after_s)}
        ) from None
    except IdempotencyConflictError as error:
        svc.metrics.submissions.labels("rejected").inc()
        raise HTTPException(409, str(error)) from None
    svc.metrics.submissions.labels("accepted" if created else "replayed").inc()
    if created:
        svc.wake_worker()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/forecast/{job.id}"
    return body(request, job)


def add_submission(target: APIRouter, settings: Settings) -> None:
    """Add ``POST /forecast`` to ``target``, its body model bounded by the server's
    ``max_members`` (the one route whose types depend on the settings)."""
    target.add_api_route(
        "/forecast",
        _with_annotation(submit, "forecast", request_model(settings.max_members)),
        methods=["POST"],
        status_code=202,
        response_model=JobStatus,
        summary="Queue an ensemble forecast",
        responses={
            **ERRORS,
            409: {"model": Problem, "description": "Idempotency-Key reused for another request"},
            413: {"model": Problem, "description": "request body too large"},
            429: {"model": Problem, "description": "the queue is full; see Retry-After (s)"},
        },
    )


def _with_annotation(fn: Callable[..., Any], name: str, annotation: Any) -> Callable[..., Any]:
    """``fn`` with its parameter ``name`` annotated ``annotation`` (FastAPI reads the
    signature to validate and document the body)."""

    @functools.wraps(fn)
    def endpoint(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    signature = inspect.signature(fn)
    endpoint.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            p.replace(annotation=annotation) if p.name == name else p
            for p in signature.parameters.values()
        ]
    )
    return endpoint


@router.get("/forecast", response_model=JobList, summary="List your jobs", responses=ERRORS)
def list_jobs(
    request: Request,
    owner: Owner,
    status: Annotated[
        list[JobState] | None, Query(description="only jobs in these states (repeatable)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="at most this many jobs")] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="skip this many")] = 0,
) -> dict[str, Any]:
    """Your jobs, newest first."""
    store = service(request).store
    jobs = store.list_jobs(owner, status or (), limit=limit, offset=offset)
    return {"jobs": [body(request, job) for job in jobs]}


@router.get(
    "/forecast/{job_id}",
    response_model=JobStatus,
    summary="A job's status and progress",
    responses=ERRORS,
)
def get_job(job_id: JobId, request: Request, owner: Owner) -> dict[str, Any]:
    """Status (queued, running, succeeded, failed, cancelled), progress (steps done and
    total, eta in seconds), timestamps and the error of a failed job."""
    return body(request, find(request, job_id, owner))


@router.delete(
    "/forecast/{job_id}",
    response_model=JobStatus,
    summary="Cancel a queued or running job",
    responses={**ERRORS, 409: {"model": Problem, "description": "the job already ended"}},
)
def cancel(job_id: JobId, request: Request, owner: Owner) -> dict[str, Any]:
    """A queued job never runs; a running one stops at its next chunk of leads (the leads
    written stay readable until the results expire)."""
    store = service(request).store
    job = find(request, job_id, owner)
    if job.status.terminal:
        raise HTTPException(409, f"job {job_id}: already {job.status.value}")
    now = time.time()
    after = store.cancel(
        job_id, owner, now=now, expires_at=now + settings_of(request).result_ttl_hours * 3600
    )
    assert after is not None
    if after.status != JobState.CANCELLED:
        raise HTTPException(409, f"job {job_id}: already {after.status.value}")
    return body(request, after)
