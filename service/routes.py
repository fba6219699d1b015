"""The HTTP routes. Plain ``def`` routes: FastAPI runs them in its thread pool, so store calls
and result exports never block the event loop. The dependencies they share (the API key) are
``async``: they only compute, and each plain ``def`` dependency would cost a request one more
thread hop. The result and scores routes are ``async`` because they can long-poll (``wait``):
they wait on the event loop and do their store and file work in the thread pool."""

import asyncio
import logging
import os
import pathlib
import tempfile
import time
import uuid
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import FileResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from service.auth import owner_dependency
from service.catalog import request_hash
from service.errors import SafeJSONResponse
from service.export import json_result, write_netcdf, write_zarr_zip
from service.metrics import ServiceMetrics
from service.results import DamagedResultError, JobFiles
from service.runtime import Service
from service.schemas import (
    ForecastRequestBase,
    Health,
    JobList,
    JobRequest,
    JobStatus,
    JsonResult,
    OutputFormat,
    Problem,
    Readiness,
    Scores,
    request_model,
)
from service.settings import Settings
from service.store import IdempotencyConflictError, Job, JobState, NewJob, QueueFullError

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
_MEDIA = {"zarr": "application/zip", "netcdf": "application/x-netcdf"}
_SUFFIX = {"zarr": ".zarr.zip", "netcdf": ".nc"}


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


def damaged(job_id: str, error: BaseException) -> HTTPException:
    """The answer to a job whose stored result cannot be read (logged with the job id)."""
    reason = (
        str(error) if isinstance(error, DamagedResultError) else f"{type(error).__name__}: {error}"
    )
    log.error("job %s: stored result damaged: %s", job_id, reason)
    return HTTPException(500, f"the stored result of job {job_id} is damaged: {reason}")


def build_router(settings: Settings, metrics: ServiceMetrics) -> APIRouter:
    """All routes, with the submission model bounded by ``settings.max_members``."""
    ForecastRequest = request_model(settings.max_members)
    Owner = Annotated[str, Depends(owner_dependency(settings))]
    router = APIRouter()
    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": Problem, "description": "missing or unknown API key"},
        403: {"model": Problem, "description": "no API keys configured: loopback clients only"},
        404: {"model": Problem, "description": "no such job (for this key)"},
    }

    def service(request: Request) -> Service:
        svc: Service = request.app.state.service
        return svc

    def find(request: Request, job_id: str, owner: str) -> Job:
        job = service(request).store.get(job_id, owner)
        if job is None:
            raise HTTPException(404, f"job {job_id}: not found")
        return job

    def body(request: Request, job: Job) -> dict[str, Any]:
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

    @router.post(
        "/forecast",
        status_code=202,
        response_model=JobStatus,
        summary="Queue an ensemble forecast",
        responses={
            **errors,
            409: {"model": Problem, "description": "Idempotency-Key reused for another request"},
            413: {"model": Problem, "description": "request body too large"},
            429: {"model": Problem, "description": "the queue is full; see Retry-After (s)"},
        },
    )
    def submit(
        forecast: ForecastRequest,  # type: ignore[valid-type]
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
        checked = cast(ForecastRequestBase, forecast)
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
            job, created = svc.store.submit(new, max_queued=settings.max_queued, now=time.time())
        except QueueFullError as error:
            metrics.submissions.labels("throttled").inc()
            raise HTTPException(
                429, f"{error}; retry later", {"Retry-After": str(settings.retry_after_s)}
            ) from None
        except IdempotencyConflictError as error:
            metrics.submissions.labels("rejected").inc()
            raise HTTPException(409, str(error)) from None
        metrics.submissions.labels("accepted" if created else "replayed").inc()
        if created:
            svc.wake_worker()
        else:
            response.headers["Idempotent-Replayed"] = "true"
        response.headers["Location"] = f"/forecast/{job.id}"
        return body(request, job)

    @router.get("/forecast", response_model=JobList, summary="List your jobs", responses=errors)
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
        responses=errors,
    )
    def get_job(job_id: JobId, request: Request, owner: Owner) -> dict[str, Any]:
        """Status (queued, running, succeeded, failed, cancelled), progress (steps done and
        total, eta in seconds), timestamps and the error of a failed job."""
        return body(request, find(request, job_id, owner))

    @router.get(
        "/forecast/{job_id}/result",
        summary="The forecast (the leads done so far while the job runs)",
        response_model=JsonResult,
        responses={
            **errors,
            200: {
                "description": "the forecast: zipped Zarr v3, NetCDF-4 or JSON summaries; "
                "headers X-Forecast-Complete (true/false) and X-Leads-Done (hours)",
                "content": {"application/zip": {}, "application/x-netcdf": {}},
            },
            202: {"model": JobStatus, "description": "no lead is done yet; poll again"},
            400: {"model": Problem, "description": "JSON without points or region"},
            409: {"model": Problem, "description": "the job failed or was cancelled, no lead"},
            410: {"model": Problem, "description": "the results expired and were deleted"},
        },
    )
    async def get_result(
        job_id: JobId,
        request: Request,
        owner: Owner,
        format: Annotated[
            OutputFormat | None,
            Query(description="zarr, netcdf or json (default: the request's format)"),
        ] = None,
        wait: Wait = 0,
    ) -> Response:
        """Dims ``member, init_time, lead_time, [level,] latitude, longitude``, physical units.
        Leads already written are readable while the job still runs (``wait`` > 0: once it
        ended or ``wait`` seconds have passed)."""
        job = await settled(request, job_id, owner, wait)
        return await run_in_threadpool(result_answer, request, job, format)

    def result_answer(request: Request, job: Job, format: OutputFormat | None) -> Response:
        job_id = job.id
        svc = service(request)
        if job.expired:
            raise HTTPException(410, f"job {job_id}: its results expired and were deleted")
        run = JobRequest.model_validate(job.request)
        chosen = format or run.format
        if chosen == "json" and run.points is None and run.region is None:
            raise HTTPException(400, "format json: the job's request has no points or region")
        if job.steps_done == 0:
            if job.status in (JobState.QUEUED, JobState.RUNNING):
                return SafeJSONResponse(
                    body(request, job), status_code=202, headers={"Retry-After": "1"}
                )
            raise HTTPException(409, f"job {job_id}: {job.status.value} before its first lead")
        files = JobFiles(settings.data_dir, job.id)
        headers = {
            "X-Forecast-Complete": str(job.status == JobState.SUCCEEDED).lower(),
            "X-Leads-Done": str(12 * job.steps_done),
        }
        try:
            ds = files.open_forecast(job.steps_done, run.variables)
            if chosen == "json":
                data = json_result(
                    job.id,
                    ds,
                    run,
                    complete=job.status == JobState.SUCCEEDED,
                    model_latitude=svc.catalog.info.latitude,
                )
                return SafeJSONResponse(data, headers=headers)
        except FileNotFoundError:
            raise HTTPException(410, f"job {job_id}: its results were deleted") from None
        except DamagedResultError as error:
            raise damaged(job_id, error) from None
        except Exception as error:  # e.g. a chunk that fails to decode while summarising
            raise damaged(job_id, error) from None
        try:
            fd, name = tempfile.mkstemp(prefix=f"{job.id}-", suffix=_SUFFIX[chosen], dir=svc.tmp)
            os.close(fd)
        except OSError as error:
            log.error("job %s: cannot export: %s", job_id, error)
            raise HTTPException(
                503,
                f"job {job_id}: the server cannot write the export now (its temporary folder: "
                f"{error.strerror or error}); try again later",
                {"Retry-After": "30"},
            ) from None
        path = pathlib.Path(name)
        path.unlink()  # the writers create the file themselves
        writer = write_zarr_zip if chosen == "zarr" else write_netcdf
        try:
            writer(ds, path)
        except BaseException as error:
            path.unlink(missing_ok=True)  # never leave a partial export behind
            if isinstance(error, FileNotFoundError) and not files.forecast.exists():
                raise HTTPException(410, f"job {job_id}: its results were deleted") from None
            if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
                log.error("job %s: export failed: %s", job_id, error)
                raise HTTPException(
                    503,
                    f"job {job_id}: the server could not write the export ({error}); try again "
                    "later",
                    {"Retry-After": "30"},
                ) from None
            if isinstance(error, Exception):
                raise damaged(job_id, error) from None
            raise
        return FileResponse(
            name,
            media_type=_MEDIA[chosen],
            filename=f"forecast-{job.id}{_SUFFIX[chosen]}",
            headers=headers,
            background=BackgroundTask(os.unlink, name),
        )

    @router.get(
        "/forecast/{job_id}/scores",
        response_model=Scores,
        summary="Scores against the verifying analysis",
        responses={
            **errors,
            202: {"model": JobStatus, "description": "the job has not ended yet"},
            409: {"model": Problem, "description": "the job failed or was cancelled"},
            410: {"model": Problem, "description": "the results expired and were deleted"},
        },
    )
    async def get_scores(job_id: JobId, request: Request, owner: Owner, wait: Wait = 0) -> Any:
        """Fair CRPS, ensemble-mean RMSE and spread/skill per variable, level and lead
        (area-weighted over the globe or the job's region); leads whose verifying analysis the
        archive lacks are marked unverified. ``wait`` > 0 answers once the job ended (or
        ``wait`` seconds have passed): POST, then one GET with ``wait`` gets the scores."""
        job = await settled(request, job_id, owner, wait)
        return await run_in_threadpool(scores_answer, request, job)

    def scores_answer(request: Request, job: Job) -> Any:
        job_id = job.id
        if job.expired:
            raise HTTPException(410, f"job {job_id}: its results expired and were deleted")
        if job.status in (JobState.QUEUED, JobState.RUNNING):
            return SafeJSONResponse(
                body(request, job), status_code=202, headers={"Retry-After": "1"}
            )
        if job.status != JobState.SUCCEEDED:
            raise HTTPException(409, f"job {job_id}: {job.status.value}, so it has no scores")
        try:
            scores = JobFiles(settings.data_dir, job.id).read_scores()
        except DamagedResultError as error:
            raise damaged(job_id, error) from None
        if scores is None:
            raise HTTPException(410, f"job {job_id}: its scores were deleted")
        return scores

    @router.delete(
        "/forecast/{job_id}",
        response_model=JobStatus,
        summary="Cancel a queued or running job",
        responses={**errors, 409: {"model": Problem, "description": "the job already ended"}},
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
            job_id, owner, now=now, expires_at=now + settings.result_ttl_hours * 3600
        )
        assert after is not None
        if after.status != JobState.CANCELLED:
            raise HTTPException(409, f"job {job_id}: already {after.status.value}")
        return body(request, after)

    @router.get("/healthz", response_model=Health, summary="Liveness")
    async def healthz() -> dict[str, str]:
        """The process answers (no key needed)."""
        return {"status": "ok"}

    @router.get(
        "/readyz",
        response_model=Readiness,
        summary="Readiness: a worker has the model loaded and compiled",
        responses={503: {"model": Readiness, "description": "not ready"}},
    )
    def readyz(request: Request) -> Response:
        """Ready when the server's worker (its child process or thread) has loaded and warmed
        up the model, or (without one) when a live external worker for this model has (no key
        needed)."""
        svc = service(request)
        key = svc.catalog.info.key
        if svc.worker_process is not None:
            ready, detail = svc.worker_process.readiness(svc.store, time.time())
            worker = "process"
        elif svc.worker is not None:
            ready = svc.worker.ready.is_set()
            worker = "in-process"
            detail = (
                "model loaded and compiled"
                if ready
                else svc.worker.failure or "loading and compiling the model"
            )
        else:
            live = [
                w
                for w in svc.store.live_workers(now=time.time(), timeout=settings.worker_timeout_s)
                if w.model == key and w.ready
            ]
            ready = bool(live)
            worker = str(len(live))
            detail = f"{len(live)} live worker(s) for this model"
        data = {"ready": ready, "model": key, "worker": worker, "detail": detail}
        return SafeJSONResponse(data, status_code=200 if ready else 503)

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={**errors, 200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    def prometheus(request: Request, owner: Owner) -> Response:
        """Queue depth, jobs per state, job durations, member-steps per second, batch fill
        and jobs per sampling call."""
        metrics.refresh(service(request).store)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
