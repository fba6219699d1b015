"""Routes that read a job's forecast when asked: values at places (``GET /forecast/{id}/points``,
JSON or CSV, `service.points`), a map (``map.png``) and a meteogram (``meteogram.png``), drawn by
`weather.evaluation.maps`.

They serve the leads done so far while the job runs (202 with the job's status before its first
lead), like ``GET /forecast/{id}/result``, with the same headers (``X-Forecast-Complete``,
``X-Leads-Done``). A query parameter the server cannot use is a 422 whose ``loc`` names it
(``["query", "lead"]``); a lead of the forecast that is not done yet is a 409 naming ``lead``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import xarray as xr
from fastapi import APIRouter, HTTPException, Query, Request, Response

from service.deps import ERRORS, JobId, Owner, body, damaged, find, service, settings_of
from service.errors import SafeJSONResponse
from service.points import (
    PointsFormat,
    PointsResult,
    QueryError,
    iso_time,
    nearest_places,
    parse_floats,
    parse_quantiles,
    point_values,
    points_csv,
    points_json,
    split_list,
    targets_of,
)
from service.results import DamagedResultError, JobFiles
from service.schemas import MAX_LEVELS, MAX_VARIABLES, JobRequest, JobStatus, Problem
from service.store import Job, JobState
from weather.data.times import parse_lead

router = APIRouter()

MapField = Literal["mean", "spread", "member"]
_PNG: dict[str, Any] = {"content": {"image/png": {}}}
_ANSWERS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    202: {"model": JobStatus, "description": "no lead is done yet; poll again"},
    409: {
        "model": Problem,
        "description": "the lead asked for is not done yet, or the job failed or was cancelled "
        "before its first lead",
    },
    410: {"model": Problem, "description": "the results expired and were deleted"},
    422: {"model": Problem, "description": "a query parameter the server cannot use (named)"},
}


def query_error(
    param: str, reason: str, status: int = 422, headers: dict[str, str] | None = None
) -> HTTPException:
    """An error naming the query parameter at fault, in FastAPI's validation layout."""
    detail = [{"loc": ["query", param], "msg": reason, "type": "value_error"}]
    return HTTPException(status, detail, headers)


def _headers(job: Job) -> dict[str, str]:
    return {
        "X-Forecast-Complete": str(job.status == JobState.SUCCEEDED).lower(),
        "X-Leads-Done": str(12 * job.steps_done),
    }


def _run(job: Job) -> JobRequest:
    if job.expired:
        raise HTTPException(410, f"job {job.id}: its results expired and were deleted")
    return JobRequest.model_validate(job.request)


def _not_started(request: Request, job: Job) -> Response | None:
    """The answer while no lead is done: 202 with the status, or 409 once it ended so."""
    if job.steps_done > 0:
        return None
    if job.status in (JobState.QUEUED, JobState.RUNNING):
        return SafeJSONResponse(body(request, job), status_code=202, headers={"Retry-After": "1"})
    raise HTTPException(409, f"job {job.id}: {job.status.value} before its first lead")


def _open(request: Request, job: Job, variables: list[str]) -> xr.Dataset:
    """The leads done so far of ``variables`` (checked readable)."""
    try:
        return JobFiles(settings_of(request).data_dir, job.id).open_forecast(
            job.steps_done, variables
        )
    except FileNotFoundError:
        raise HTTPException(410, f"job {job.id}: its results were deleted") from None
    except DamagedResultError as error:
        raise damaged(job.id, error) from None


def _shown(values: list[str]) -> str:
    """What a client sent, shortened for an error message."""
    shown = [v[:40] for v in values[:5]]
    return f"{shown}{' ...' if len(values) > 5 else ''}"


def _variables(run: JobRequest, given: list[str], param: str) -> list[str]:
    if len(given) > MAX_VARIABLES:
        raise query_error(param, f"at most {MAX_VARIABLES} variables, got {len(given)}")
    unknown = [v for v in given if v not in run.variables]
    if unknown:
        raise query_error(
            param, f"{_shown(unknown)} are not in this forecast; it holds {list(run.variables)}"
        )
    if len(set(given)) != len(given):
        raise query_error(param, "a variable is repeated")
    return given


def _levels(run: JobRequest, given: list[str]) -> list[int]:
    if len(given) > MAX_LEVELS:
        raise query_error("levels", f"at most {MAX_LEVELS} levels, got {len(given)}")
    try:
        levels = [int(text) for text in given]
    except ValueError:
        raise query_error("levels", f"{_shown(given)} are not whole numbers of hPa") from None
    missing = sorted(set(levels) - set(run.levels))
    if missing:
        raise query_error(
            "levels",
            f"{_shown([str(v) for v in missing])} hPa are not in this forecast; it "
            f"holds {run.levels}",
        )
    if len(set(levels)) != len(levels):
        raise query_error("levels", "a level is repeated")
    return levels


def _level(request: Request, run: JobRequest, variable: str, level: int | None) -> int | None:
    """The level of a map or meteogram: one of the job's (default 500 hPa, else its first);
    None for a surface variable."""
    if variable not in service(request).catalog.info.task.level_variables:
        if level is not None:
            raise query_error("level", f"{variable!r} is a surface variable; give no level")
        return None
    if level is None:
        return 500 if 500 in run.levels else run.levels[0]
    if level not in run.levels:
        raise query_error("level", f"{level} hPa is not in this forecast; it holds {run.levels}")
    return level


def _lead_step(run: JobRequest, job: Job, lead: str | None) -> int:
    """The 0-based step of ``lead`` (default: the latest done)."""
    if lead is None:
        return job.steps_done - 1
    try:
        hours = int(parse_lead(lead) // np.timedelta64(1, "h"))
    except ValueError as error:
        raise query_error("lead", str(error)) from None
    if hours > run.lead_hours:
        raise query_error("lead", f"{hours} h is beyond this forecast's {run.lead_hours} h")
    if hours > 12 * job.steps_done:
        raise query_error(
            "lead",
            f"{hours} h is not done yet (done: 12..{12 * job.steps_done} h of "
            f"{run.lead_hours} h); try again later",
            409,
            {"Retry-After": "1"},
        )
    return hours // 12 - 1


def _spacing(request: Request) -> tuple[float, float]:
    info = service(request).catalog.info
    return abs(float(info.latitude[1] - info.latitude[0])), abs(
        float(info.longitude[1] - info.longitude[0])
    )


def _where(lat: float, lon: float) -> str:
    """``47.3N 8.5E``, ``33.9S 151.2E`` (longitudes east, 0..360)."""
    return f"{abs(lat):g}{'N' if lat >= 0 else 'S'} {lon % 360:g}E"


def _png(data: bytes, job: Job) -> Response:
    return Response(data, media_type="image/png", headers=_headers(job))


def _map_png(fig: Any, job: Job) -> Response:
    """The map as PNG, with where its map axes lie in the image, so that a client (the web page)
    can turn a click into a place: ``X-Map-Axes: left,top,right,bottom`` (fractions of the
    image's width and height, from its top-left corner) and ``X-Map-Extent:
    west,east,south,north`` (degrees at those edges; west and east as drawn, past 360 for a box
    across the dateline)."""
    from weather.evaluation.maps import png_bytes

    data = png_bytes(fig)
    ax = fig.axes[0]
    # Read after the draw: the layout engine's place, shrunk to the equal aspect. Figure
    # fractions, so the same at any dpi the PNG is rendered with.
    box = ax.get_position()
    (west, east), (south, north) = ax.get_xlim(), ax.get_ylim()
    response = _png(data, job)
    response.headers["X-Map-Axes"] = ",".join(
        f"{v:.5f}" for v in (box.x0, 1 - box.y1, box.x1, 1 - box.y0)
    )
    response.headers["X-Map-Extent"] = ",".join(f"{v:.5f}" for v in (west, east, south, north))
    return response


@router.get(
    "/forecast/{job_id}/points",
    summary="The forecast at places (members, mean, spread, quantiles; JSON or CSV)",
    response_model=PointsResult,
    responses={
        **_ANSWERS,
        200: {
            "description": "every member at each place's nearest grid point per lead, with the "
            "ensemble mean, spread and quantiles: JSON, or CSV with Open-Meteo-like columns "
            "(`temperature_850hPa_mean (K)`, `..._p10`, `..._member00`; one row per place and "
            "lead); headers X-Forecast-Complete and X-Leads-Done",
            "content": {"text/csv": {}},
        },
    },
)
def get_points(
    job_id: JobId,
    request: Request,
    owner: Owner,
    latitude: Annotated[
        list[str],
        Query(description="degrees north (-90..90), repeated or comma-separated: 47.4,-33.9"),
    ],
    longitude: Annotated[
        list[str],
        Query(description="degrees east (-180..360), one per latitude: 8.5,151.2"),
    ],
    variables: Annotated[
        list[str] | None,
        Query(description="variables (repeated or comma-separated; default the job's)"),
    ] = None,
    levels: Annotated[
        list[str] | None,
        Query(description="pressure levels in hPa (default the job's)"),
    ] = None,
    quantiles: Annotated[
        list[str] | None,
        Query(description="ensemble quantiles, each in (0, 1) (default 0.1,0.5,0.9)"),
    ] = None,
    format: Annotated[PointsFormat, Query(description="json or csv")] = "json",
) -> Response:
    """Members, mean, spread (M-1 normalised) and quantiles at the nearest grid point of each
    place, for the leads done so far (all once the job succeeded)."""
    job = find(request, job_id, owner)
    run = _run(job)
    names = _variables(run, split_list(variables) or list(run.variables), "variables")
    wanted_levels = _levels(run, split_list(levels)) if split_list(levels) else list(run.levels)
    try:
        lats = parse_floats("latitude", split_list(latitude))
        lons = parse_floats("longitude", split_list(longitude))
        if not lats:
            raise QueryError("latitude", "give at least one place")
        qs = parse_quantiles(quantiles)
    except QueryError as error:
        raise query_error(error.param, error.reason) from None
    waiting = _not_started(request, job)
    if waiting is not None:
        return waiting
    ds = _open(request, job, names)
    try:
        places = nearest_places(
            ds["latitude"].values, ds["longitude"].values, lats, lons, _spacing(request)
        )
    except QueryError as error:
        raise query_error(error.param, error.reason) from None
    try:
        values = point_values(ds, places, targets_of(ds, names, wanted_levels))
    except Exception as error:  # a chunk that fails to decode while reading
        raise damaged(job.id, error) from None
    headers = _headers(job)
    if format == "csv":
        headers["Content-Disposition"] = f'attachment; filename="points-{job.id}.csv"'
        return Response(points_csv(values, qs), media_type="text/csv", headers=headers)
    data = points_json(job.id, values, qs, complete=job.status == JobState.SUCCEEDED)
    return SafeJSONResponse(data, headers=headers)


@router.get(
    "/forecast/{job_id}/map.png",
    summary="A map of one field: ensemble mean, spread or a member",
    response_class=Response,
    responses={
        **_ANSWERS,
        200: {
            **_PNG,
            "description": "PNG, coastlines, a colour bar; headers X-Map-Axes (the map's "
            "left,top,right,bottom as fractions of the image) and X-Map-Extent "
            "(west,east,south,north in degrees at those edges)",
        },
    },
)
def get_map(
    job_id: JobId,
    request: Request,
    owner: Owner,
    variable: Annotated[
        str | None, Query(max_length=64, description="variable (default the job's first)")
    ] = None,
    level: Annotated[
        int | None, Query(description="hPa, for a variable on levels (default 500 or the first)")
    ] = None,
    lead: Annotated[
        str | None,
        Query(max_length=32, description="hours, '36h', '2d' or 'P2D' (default the latest done)"),
    ] = None,
    field: Annotated[
        MapField | None,
        Query(description="mean, spread (M-1 normalised) or member (default mean)"),
    ] = None,
    member: Annotated[
        int | None, Query(ge=0, description="member number, with field=member (0..M-1)")
    ] = None,
) -> Response:
    """The field at one lead on the job's grid (its region), with coastlines and a colour bar in
    display units (geopotential as height in m, surface pressure in hPa)."""
    from weather.evaluation.maps import field_map, quantity_label

    job = find(request, job_id, owner)
    run = _run(job)
    name = _variables(run, [variable], "variable")[0] if variable else run.variables[0]
    chosen_level = _level(request, run, name, level)
    kind: MapField = field or ("member" if member is not None else "mean")
    if kind == "member" and member is None:
        raise query_error("member", "field=member needs a member number")
    if kind != "member" and member is not None:
        raise query_error("member", f"a member number goes with field=member, not {kind}")
    if member is not None and member >= run.members:
        raise query_error(
            "member", f"{member} is not a member; this forecast has 0..{run.members - 1}"
        )
    waiting = _not_started(request, job)
    if waiting is not None:
        return waiting
    step = _lead_step(run, job, lead)
    ds = _open(request, job, [name])
    try:
        x = ds[name].isel(init_time=0, lead_time=step)
        if chosen_level is not None:
            x = x.sel(level=chosen_level)
        x = x.load()
        if kind == "member":
            values = x.sel(member=member)
            what = f"member {member} of {run.members}"
        elif kind == "spread":
            values = x.std("member", ddof=1) if run.members > 1 else xr.zeros_like(x.isel(member=0))
            what = f"ensemble spread ({run.members} members)"
        else:
            values = x.mean("member")
            what = f"ensemble mean of {run.members}"
        init = np.datetime64(ds["init_time"].values[0], "ns")
        lead_td = np.asarray(ds["lead_time"].values[step]).astype("timedelta64[ns]")
    except Exception as error:  # a chunk that fails to decode while reading
        raise damaged(job.id, error) from None
    hours = int(lead_td // np.timedelta64(1, "h"))
    long_name = ds[name].attrs.get("long_name")
    title = (
        f"{quantity_label(name, chosen_level, long_name)}: {what}\n"
        f"+{hours} h, valid {iso_time(init + lead_td)} (init {iso_time(init)})"
    )
    fig = field_map(
        values,
        variable=name,
        units=str(ds[name].attrs.get("units", "")),
        level=chosen_level,
        title=title,
        spread=kind == "spread",
        long_name=long_name,
    )
    return _map_png(fig, job)


@router.get(
    "/forecast/{job_id}/meteogram.png",
    summary="A meteogram (ensemble plume) at one place",
    response_class=Response,
    responses={**_ANSWERS, 200: {**_PNG, "description": "PNG: members, mean, 10-90 % band"}},
)
def get_meteogram(
    job_id: JobId,
    request: Request,
    owner: Owner,
    lat: Annotated[float, Query(ge=-90, le=90, description="degrees north (-90..90)")],
    lon: Annotated[float, Query(ge=-180, le=360, description="degrees east (-180..360)")],
    variable: Annotated[
        str | None, Query(max_length=64, description="variable (default the job's first)")
    ] = None,
    level: Annotated[
        int | None, Query(description="hPa, for a variable on levels (default 500 or the first)")
    ] = None,
) -> Response:
    """Every member (thin lines), the ensemble mean and the 10-90 % band of the members at the
    nearest grid point, against valid time, for the leads done so far."""
    from weather.evaluation.maps import meteogram, png_bytes

    job = find(request, job_id, owner)
    run = _run(job)
    name = _variables(run, [variable], "variable")[0] if variable else run.variables[0]
    chosen_level = _level(request, run, name, level)
    waiting = _not_started(request, job)
    if waiting is not None:
        return waiting
    ds = _open(request, job, [name])
    try:
        (place,) = nearest_places(
            ds["latitude"].values,
            ds["longitude"].values,
            [lat],
            [lon],
            _spacing(request),
            names=("lat", "lon"),
        )
    except QueryError as error:
        raise query_error(error.param, error.reason) from None
    try:
        (target,) = targets_of(ds, [name], [chosen_level] if chosen_level is not None else [])
        values = point_values(ds, [place], [target])
    except Exception as error:  # a chunk that fails to decode while reading
        raise damaged(job.id, error) from None
    members = xr.DataArray(
        values.values[0, 0],
        dims=("member", "lead_time"),
        coords={"member": values.member, "lead_time": values.lead_time},
    )
    title = (
        f"{_where(lat, lon)} (grid point {_where(place.grid_latitude, place.grid_longitude)}), "
        f"{run.members} members from {iso_time(values.init_time)}"
    )
    fig = meteogram(
        members,
        variable=name,
        units=target.units,
        level=chosen_level,
        init_time=values.init_time,
        title=title,
        long_name=ds[name].attrs.get("long_name"),
    )
    return _png(png_bytes(fig), job)
