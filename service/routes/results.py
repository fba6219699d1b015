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
from service.export import json_result, write_grib, write_netcdf, write_zarr_zip
from service.results import DamagedResultError, JobFiles
from service.schemas import JobRequest, JobStatus, JsonResult, OutputFormat, Problem, Scores
from service.scoring import select_region
from service.store import Job, JobState
from weather.data.grib import without_grib2_code
from weather.scoring.regions import REGIONS

log = logging.getLogger("service")

router = APIRouter()
_MEDIA = {
    "zarr": "application/zip",
    "netcdf": "application/x-netcdf",
    "grib2": "application/x-grib",
}
_SUFFIX = {"zarr": ".zarr.zip", "netcdf": ".nc", "grib2": ".grib2"}
_WRITERS = {"zarr": write_zarr_zip, "netcdf": write_netcdf, "grib2": write_grib}


@router.get(
    "/forecast/{job_id}/result",
    summary="The forecast (the leads done so far while the job runs)",
    response_model=JsonResult,
    responses={
        **ERRORS,
        200: {
            "description": "the forecast: zipped Zarr v3, NetCDF-4 (both CF), GRIB2 or JSON "
            "summaries; headers X-Forecast-Complete (true/false) and X-Leads-Done (hours)",
            "content": {
                "application/zip": {},
                "application/x-netcdf": {},
                "application/x-grib": {},
            },
        },
        202: {"model": JobStatus, "description": "no lead is done yet; poll again"},
        400: {
            "model": Problem,
            "description": "JSON without points or region; GRIB2 of a variable it has no code for",
        },
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
        Query(description="zarr, netcdf, grib2 or json (default: the request's format)"),
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
    uncoded = without_grib2_code(run.variables) if chosen == "grib2" else []
    if uncoded:
        raise HTTPException(
            400,
            f"format grib2: variables {uncoded} have no GRIB2 parameter code; ask for zarr or "
            "netcdf",
        )
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
    writer = _WRITERS[chosen]
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
        409: {
            "model": Problem,
            "description": "the job failed or was cancelled; or it was scored before per-region "
            "scores existed",
        },
        410: {"model": Problem, "description": "the results expired and were deleted"},
        422: {
            "model": Problem,
            "description": "an unknown region, or one that holds no grid point of the job's box",
        },
    },
)
async def get_scores(
    job_id: JobId,
    request: Request,
    owner: Owner,
    wait: Wait = 0,
    region: Annotated[
        str | None,
        Query(
            description="average over a WeatherBench2 region instead of the job's whole domain: "
            + ", ".join(f"{name} ({r.describe()})" for name, r in REGIONS.items())
            + "; edges inclusive, the whole grid's cell areas; for a box job, the part of the "
            "box inside the region",
        ),
    ] = None,
) -> Any:
    """Fair CRPS, ensemble-mean RMSE and spread/skill per variable, level and lead
    (area-weighted over the globe or the job's region, or over ``region``); leads whose
    verifying analysis the archive lacks are marked unverified. ``wait`` > 0 answers once the
    job ended (or ``wait`` seconds have passed): POST, then one GET with ``wait`` gets the
    scores."""
    if region is not None and region not in REGIONS:
        # Before waiting: a bad request is answered at once.
        reason = f"unknown region {region!r}; choose from {list(REGIONS)}"
        raise HTTPException(
            422, [{"loc": ["query", "region"], "msg": reason, "type": "value_error"}]
        )
    job = await settled(request, job_id, owner, wait)
    return await run_in_threadpool(scores_answer, request, job, region)


def scores_answer(request: Request, job: Job, region: str | None = None) -> Any:
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
    if region is None:
        return {k: v for k, v in scores.items() if k != "regions"}
    try:
        return select_region(scores, region)
    except LookupError as error:
        # FastAPI's validation layout, naming the parameter (as the views' errors do).
        detail = [
            {"loc": ["query", "region"], "msg": f"job {job_id}: {error}", "type": "value_error"}
        ]
        raise HTTPException(409 if "regions" not in scores else 422, detail) from None
