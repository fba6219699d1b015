"""The HTTP interface's bodies (pydantic): every field with its units and limits, for OpenAPI.

Only the members limit depends on the settings; `request_model` makes the submission model with
it, so the OpenAPI document states the server's real bound.
"""

from __future__ import annotations

import datetime
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from service.store import JobState

MAX_VARIABLES = 16
MAX_LEVELS = 64
MAX_POINTS = 64
MAX_QUANTILES = 19
MAX_THRESHOLDS = 16
OutputFormat = Literal["zarr", "netcdf", "grib2", "json"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Region(_Strict):
    """A latitude-longitude box (edges included)."""

    lat_min: float = Field(ge=-90, le=90, description="southern edge, degrees north (-90..90)")
    lat_max: float = Field(ge=-90, le=90, description="northern edge, degrees north (-90..90)")
    lon_min: float = Field(
        ge=-180,
        le=360,
        description="western edge, degrees east (-180..360); a western edge east of the eastern "
        "one makes a box across the dateline",
    )
    lon_max: float = Field(ge=-180, le=360, description="eastern edge, degrees east (-180..360)")

    @model_validator(mode="after")
    def _ordered(self) -> Region:
        if self.lat_min > self.lat_max:
            raise ValueError(f"lat_min ({self.lat_min}) is north of lat_max ({self.lat_max})")
        return self


class Point(_Strict):
    """A location; forecasts are given at its nearest grid point."""

    latitude: float = Field(ge=-90, le=90, description="degrees north (-90..90)")
    longitude: float = Field(ge=-180, le=360, description="degrees east (-180..360)")
    name: str | None = Field(
        default=None, max_length=64, description="a label echoed in the result"
    )


class Summary(_Strict):
    """Ensemble summaries of the JSON result."""

    quantiles: list[float] = Field(
        default_factory=lambda: [0.1, 0.5, 0.9],
        max_length=MAX_QUANTILES,
        description=f"ensemble quantiles to report, each in (0, 1); at most {MAX_QUANTILES}",
    )
    thresholds: dict[str, list[float]] = Field(
        default_factory=dict,
        description="per variable, values (the variable's units, e.g. K, m s-1, Pa) whose "
        f"probability of being exceeded is reported; at most {MAX_THRESHOLDS} per variable",
    )
    members: bool = Field(default=False, description="also report every member's values")

    @field_validator("quantiles")
    @classmethod
    def _unit_interval(cls, quantiles: list[float]) -> list[float]:
        bad = [q for q in quantiles if not 0 < q < 1]
        if bad:
            raise ValueError(f"quantiles must lie strictly between 0 and 1; got {bad}")
        return quantiles

    @field_validator("thresholds")
    @classmethod
    def _finite(cls, thresholds: dict[str, list[float]]) -> dict[str, list[float]]:
        for name, values in thresholds.items():
            if len(values) > MAX_THRESHOLDS:
                raise ValueError(f"{name}: at most {MAX_THRESHOLDS} thresholds, got {len(values)}")
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name}: thresholds must be finite numbers")
        return thresholds


class ForecastRequestBase(_Strict):
    """An ensemble forecast to run (``members`` is added with the server's limit)."""

    init_time: str = Field(
        description="initial time, ISO 8601 (UTC unless an offset is given), e.g. "
        "1991-03-01T00:00Z; the analysis archive must hold it and the time 12 h before",
        max_length=64,
        examples=["1991-03-01T00:00Z"],
    )
    lead: float | str = Field(
        default="P15D",
        description="total lead: hours (a number), an ISO 8601 duration ('P15D', 'PT36H') or "
        "'15d'/'36h'; a positive multiple of 12 h, at most 15 days (360 h)",
        examples=["P15D", 36],
    )

    @field_validator("lead", mode="before")
    @classmethod
    def _lead_in_range(cls, value: Any) -> Any:
        # Numbers beyond any lead get one clear message here rather than a float conversion's
        # ("int too big to convert", "Input should be a finite number") on each union branch.
        if isinstance(value, bool):
            raise ValueError("give hours as a number or a duration such as 'P15D', not a boolean")
        if isinstance(value, int) and abs(value) > 10**6:
            raise ValueError("must be a positive multiple of 12 h, at most 360 h (15 days)")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number of hours (a multiple of 12, at most 360)")
        return value

    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="seed of the ensemble (member i is the same for any ensemble size); the "
        "server draws one when absent and reports it",
    )
    variables: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_VARIABLES,
        description="variables to return (canonical names, e.g. 'temperature'); default all "
        "the model forecasts. The model always runs its full state.",
    )
    levels: list[int] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_LEVELS,
        description="pressure levels to return (hPa), a subset of the model's; default all",
    )
    region: Region | None = Field(
        default=None, description="return only this box (default: the globe)"
    )
    points: list[Point] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_POINTS,
        description=f"locations for the JSON result (at most {MAX_POINTS}); not with region",
    )
    format: OutputFormat = Field(
        default="zarr",
        description="default result format: 'zarr' (a zipped Zarr v3 store), 'netcdf', "
        "'grib2', or 'json' (summaries at points or the area mean of a region; needs points or "
        "region)",
    )
    summary: Summary = Field(
        default_factory=Summary, description="what the JSON result reports per lead"
    )

    @model_validator(mode="after")
    def _one_place(self) -> ForecastRequestBase:
        if self.region is not None and self.points is not None:
            raise ValueError("give either region or points, not both")
        if self.format == "json" and self.region is None and self.points is None:
            raise ValueError("format 'json' needs points or a region")
        return self


def request_model(max_members: int) -> type[ForecastRequestBase]:
    """The submission model with ``members`` bounded by the server's ``max_members``."""
    model: type[ForecastRequestBase] = create_model(
        "ForecastRequest",
        __base__=ForecastRequestBase,
        __doc__=ForecastRequestBase.__doc__,
        members=(
            int,
            Field(
                default=8,
                ge=1,
                le=max_members,
                description=f"ensemble size (1..{max_members}); fair CRPS needs at least 2",
            ),
        ),
    )
    return model


class JobRequest(_Strict):
    """The request as the server runs it: every default filled in, times and leads normalised."""

    init_time: datetime.datetime = Field(description="initial time (UTC)")
    lead_hours: int = Field(ge=12, le=360, description="total lead (hours, a multiple of 12)")
    members: int = Field(ge=1, description="ensemble size")
    seed: int = Field(ge=0, description="the ensemble's seed")
    variables: list[str] = Field(description="variables returned")
    levels: list[int] = Field(description="pressure levels returned (hPa, ascending)")
    region: Region | None = Field(default=None, description="the box returned (None: the globe)")
    points: list[Point] | None = Field(default=None, description="locations of the JSON result")
    format: OutputFormat = Field(description="default result format")
    summary: Summary = Field(description="what the JSON result reports")


class Progress(BaseModel):
    steps_done: int = Field(description="12 h steps written so far")
    steps_total: int = Field(description="12 h steps of the whole forecast")
    leads_done_hours: int = Field(description="longest lead readable now (hours)")
    fraction: float = Field(description="steps_done / steps_total (0..1)")
    eta_seconds: float | None = Field(
        default=None, description="seconds to completion at the current pace (running jobs)"
    )


class Links(BaseModel):
    self: str = Field(description="this job's status")
    result: str = Field(description="the forecast (partial while running)")
    scores: str = Field(description="scores against the verifying analysis")


class JobStatus(BaseModel):
    id: str = Field(description="job id (32 hex digits)")
    status: JobState = Field(description="queued, running, succeeded, failed or cancelled")
    queue_position: int | None = Field(
        default=None, description="1 = next to run (queued jobs only)"
    )
    progress: Progress = Field(description="steps done, total and eta")
    request: JobRequest = Field(description="the request as it runs (defaults filled in)")
    created_at: datetime.datetime = Field(description="submission time (UTC)")
    started_at: datetime.datetime | None = Field(default=None, description="first claim (UTC)")
    finished_at: datetime.datetime | None = Field(default=None, description="end time (UTC)")
    expires_at: datetime.datetime | None = Field(
        default=None, description="results are deleted after this time (UTC)"
    )
    result_expired: bool = Field(description="the results were deleted")
    attempts: int = Field(description="claims by workers (more than 1 after a worker died)")
    error: str | None = Field(default=None, description="why the job failed")
    links: Links = Field(description="related resources")


class JobList(BaseModel):
    jobs: list[JobStatus] = Field(description="newest first")


class ScoreRow(BaseModel):
    variable: str = Field(description="canonical variable name")
    units: str = Field(description="units of crps and rmse")
    level: int | None = Field(default=None, description="hPa; None for surface variables")
    lead_hours: int = Field(description="lead (hours)")
    valid_time: datetime.datetime = Field(description="init_time + lead (UTC)")
    verified: bool = Field(description="the archive holds the verifying analysis")
    crps: float | None = Field(
        default=None,
        description="fair CRPS, area-weighted mean (variable's units); None if unverified "
        "or a single member",
    )
    rmse: float | None = Field(
        default=None, description="RMSE of the ensemble mean (variable's units)"
    )
    spread_skill: float | None = Field(
        default=None,
        description="spread/skill ratio with the sqrt((M+1)/M) correction (about 1 if calibrated)",
    )


class Scores(BaseModel):
    job_id: str = Field(description="the job scored")
    members: int = Field(description="ensemble size M")
    domain: str = Field(description="'globe' or the region box the scores average over")
    rows: list[ScoreRow] = Field(description="one per variable, level and lead")
    error: str | None = Field(default=None, description="why no rows could be computed")


class Location(BaseModel):
    kind: Literal["point", "region"] = Field(description="a grid point or a region's mean")
    name: str | None = Field(default=None, description="the point's label from the request")
    latitude: float | None = Field(default=None, description="requested latitude (degrees north)")
    longitude: float | None = Field(default=None, description="requested longitude (degrees east)")
    grid_latitude: float | None = Field(
        default=None, description="the grid point used (degrees north)"
    )
    grid_longitude: float | None = Field(
        default=None, description="the grid point used (degrees east)"
    )
    region: Region | None = Field(default=None, description="the box, area-weighted mean over it")


class Series(BaseModel):
    variable: str = Field(description="canonical variable name")
    units: str = Field(description="units of every value of the series")
    level: int | None = Field(default=None, description="hPa; None for surface variables")
    location: Location = Field(description="where the values are")
    mean: list[float | None] = Field(description="ensemble mean per lead")
    spread: list[float | None] = Field(
        description="ensemble standard deviation per lead (n-1 normalised; 0 for one member)"
    )
    quantiles: dict[str, list[float | None]] = Field(
        default_factory=dict, description="per quantile (e.g. '0.9'), values per lead"
    )
    exceedance: dict[str, list[float | None]] = Field(
        default_factory=dict,
        description="per threshold, the fraction of members above it per lead (0..1)",
    )
    members: list[list[float | None]] | None = Field(
        default=None, description="[member][lead] values, when the request asked for them"
    )


class JsonResult(BaseModel):
    job_id: str = Field(description="the job")
    complete: bool = Field(description="all leads are done (else the leads done so far)")
    init_time: datetime.datetime = Field(description="initial time (UTC)")
    lead_hours: list[int] = Field(description="the leads of every series (hours)")
    valid_times: list[datetime.datetime] = Field(description="init_time + lead (UTC)")
    members: int = Field(description="ensemble size M")
    series: list[Series] = Field(description="one per variable, level and location")


class Health(BaseModel):
    status: Literal["ok"] = Field(description="the process answers")


class Readiness(BaseModel):
    ready: bool = Field(description="jobs will run without waiting for a compilation")
    model: str = Field(description="compatibility key of the model jobs are queued for")
    worker: str = Field(
        description="'process' (the server's child process), 'in-process' (a thread of the "
        "server), or the number of live external workers"
    )
    detail: str = Field(description="what the server is waiting for, or why it cannot start")


class Problem(BaseModel):
    detail: Any = Field(description="what was wrong, naming the field and the reason")
