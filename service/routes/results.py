"""Routes of a job's results: the forecast (GET /forecast/{id}/result) and its scores."""

from __future__ import annotations

import logging
import os
import pathlib
import tempfile
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from service.deps import ERRORS, JobId, Owner, Wait, body, damaged, service, settings_of, settled
from service.errors import SafeJSONResponse
from service.export import json_result, write_netcdf, write_zarr_zip
from service.results import DamagedResultError, JobFiles
from service.schemas import JobRequest, JobStatus, JsonResult, OutputFormat, Problem, Scores
from service.store import Job, JobState

log = logging.getLogger("service")

router = APIRouter()
_MEDIA = {"zarr": "application/zip", "netcdf": "application/x-netcdf"}
_SUFFIX = {"zarr": ".zarr.zip", "netcdf": ".nc"}


@router.get(
    "/forecast/{job_id}/result",
    summary="The forecast (the leads done so far while the job runs)",
    response_model=JsonResult,
    responses={
        **ERRORS,
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
    files = JobFiles(settings_of(request).data_dir, job.id)
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
                f"job {job_id}: the server could not write the export ({error}); try again later",
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
        **ERRORS,
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
        return SafeJSONResponse(body(request, job), status_code=202, headers={"Retry-After": "1"})
    if job.status != JobState.SUCCEEDED:
        raise HTTPException(409, f"job {job_id}: {job.status.value}, so it has no scores")
    try:
        scores = JobFiles(settings_of(request).data_dir, job.id).read_scores()
    except DamagedResultError as error:
        raise damaged(job_id, error) from None
    if scores is None:
        raise HTTPException(410, f"job {job_id}: its scores were deleted")
    return scores
