"""A forecast at places asked for when fetching it (``GET /forecast/{id}/points``): every
member's values at each place's nearest grid point, per lead, with the ensemble mean, spread and
quantiles, as JSON or as a CSV table with Open-Meteo-like column names.

Nearest grid point, not bilinear interpolation: the values are the model's own at one grid point
(every member a state the model produced, the numbers equal to the stored result's), as in the
JSON result of a job's points (`service.export`). The summaries follow that result too: spread is
the standard deviation with ``M - 1`` (0 for one member), quantiles are numpy's linear ones.

CSV columns: ``location_id, latitude, longitude, grid_latitude, grid_longitude, time,
lead_hours``, then per variable (``temperature_850hPa`` on a level, ``surface_pressure`` at the
surface) ``_mean``, ``_spread``, ``_p10`` (the 0.1 quantile) ... and ``_member00`` ... columns,
each header with its units in parentheses as Open-Meteo writes them: ``temperature_850hPa_mean
(K)``. One row per place and lead; times ISO 8601 UTC.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Sequence
from typing import Any, Literal, cast

import numpy as np
import xarray as xr
from pydantic import BaseModel, Field

from service.schemas import MAX_POINTS, MAX_QUANTILES

METHOD = "nearest grid point"
DEFAULT_QUANTILES = (0.1, 0.5, 0.9)
PointsFormat = Literal["json", "csv"]


class QueryError(ValueError):
    """A query parameter the server cannot use; ``param`` names it."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason


def split_list(values: Sequence[str] | None) -> list[str]:
    """Values given repeated (``latitude=1&latitude=2``), comma-separated (``latitude=1,2``, as
    Open-Meteo takes them) or both, in order."""
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


def parse_floats(param: str, values: Sequence[str]) -> list[float]:
    """Finite numbers, or `QueryError` naming ``param``."""
    out = []
    for text in values:
        try:
            value = float(text)
        except ValueError:
            raise QueryError(param, f"{text[:40]!r} is not a number") from None
        if not math.isfinite(value):
            raise QueryError(param, f"{text[:40]!r} is not a finite number")
        out.append(value)
    return out


def parse_quantiles(values: Sequence[str] | None) -> tuple[float, ...]:
    """Quantiles strictly between 0 and 1 (default `DEFAULT_QUANTILES`)."""
    given = split_list(values)
    if not given:
        return DEFAULT_QUANTILES
    if len(given) > MAX_QUANTILES:
        raise QueryError("quantiles", f"at most {MAX_QUANTILES}, got {len(given)}")
    quantiles = parse_floats("quantiles", given)
    bad = [q for q in quantiles if not 0 < q < 1]
    if bad:
        raise QueryError("quantiles", f"each must lie strictly between 0 and 1; got {bad}")
    return tuple(quantiles)


@dataclasses.dataclass(frozen=True)
class Place:
    """A requested place and the stored grid point nearest to it (degrees north / east)."""

    latitude: float
    longitude: float
    lat_index: int
    lon_index: int
    grid_latitude: float
    grid_longitude: float


def nearest_places(
    grid_latitude: np.ndarray,
    grid_longitude: np.ndarray,
    latitudes: Sequence[float],
    longitudes: Sequence[float],
    spacing: tuple[float, float],
    names: tuple[str, str] = ("latitude", "longitude"),
) -> list[Place]:
    """The nearest grid point of each place (longitude periodic).

    Args:
      grid_latitude, grid_longitude: the stored grid [h], [w] (degrees; a region's may cross the
        dateline).
      latitudes, longitudes: the places, pairwise.
      spacing: the model grid's latitude and longitude spacing (degrees): a place farther than
        half a cell from every stored point (outside a region job's box) is refused.
      names: the query parameters that carry latitudes and longitudes, for the errors.

    Raises:
      QueryError: a latitude outside -90..90, a longitude outside -180..360, lists of different
        lengths or more than `MAX_POINTS`, a place outside the stored grid.
    """
    lat_name, lon_name = names
    if len(latitudes) != len(longitudes):
        raise QueryError(
            lon_name, f"{len(longitudes)} longitudes for {len(latitudes)} latitudes; give pairs"
        )
    if len(latitudes) > MAX_POINTS:
        raise QueryError(lat_name, f"at most {MAX_POINTS} places, got {len(latitudes)}")
    places = []
    for lat, lon in zip(latitudes, longitudes, strict=True):
        if not -90 <= lat <= 90:
            raise QueryError(lat_name, f"{lat:g} is outside -90..90 (degrees north)")
        if not -180 <= lon <= 360:
            raise QueryError(lon_name, f"{lon:g} is outside -180..360 (degrees east)")
        dlat = np.abs(grid_latitude - lat)
        dlon = np.abs((grid_longitude - lon + 180.0) % 360.0 - 180.0)
        i, j = int(np.argmin(dlat)), int(np.argmin(dlon))
        # Within half a cell of a stored point: on a global grid that is everywhere (the outer
        # rows' cells reach the poles), on a region's the box and its edge cells.
        for name, distance, step in (
            (lat_name, dlat[i], spacing[0]),
            (lon_name, dlon[j], spacing[1]),
        ):
            if distance > step / 2 + 1e-9:
                raise QueryError(
                    name,
                    f"({lat:g}, {lon:g}) is outside this forecast's region (latitudes "
                    f"{grid_latitude.min():g}..{grid_latitude.max():g}, longitudes "
                    f"{grid_longitude[0]:g}..{grid_longitude[-1]:g} degrees)",
                )
        places.append(
            Place(
                latitude=lat,
                longitude=lon,
                lat_index=i,
                lon_index=j,
                grid_latitude=float(grid_latitude[i]),
                grid_longitude=float(grid_longitude[j]),
            )
        )
    return places


@dataclasses.dataclass(frozen=True)
class Target:
    """One variable at one level (None at the surface), with its stored units."""

    variable: str
    level: int | None
    units: str

    @property
    def column(self) -> str:
        """Open-Meteo's spelling: ``temperature_850hPa``, ``surface_pressure``."""
        return self.variable if self.level is None else f"{self.variable}_{self.level}hPa"


def targets_of(ds: xr.Dataset, variables: Sequence[str], levels: Sequence[int]) -> list[Target]:
    """Each variable at each of ``levels`` (once for surface variables), as stored in ``ds``."""
    out: list[Target] = []
    for name in variables:
        units = str(ds[name].attrs.get("units", ""))
        if "level" in ds[name].dims:
            out.extend(Target(name, int(level), units) for level in levels)
        else:
            out.append(Target(name, None, units))
    return out


@dataclasses.dataclass(frozen=True)
class PointValues:
    """Members at places.

    Attributes:
      init_time: datetime64.
      lead_time: [S] timedelta64 (the leads done so far).
      member: [M] member numbers.
      places, targets: [P], [T].
      values: [P, T, M, S] as stored (float32, the variables' units).
    """

    init_time: np.datetime64
    lead_time: np.ndarray
    member: np.ndarray
    places: list[Place]
    targets: list[Target]
    values: np.ndarray

    @property
    def lead_hours(self) -> list[int]:
        return [int(h) for h in self.lead_time // np.timedelta64(1, "h")]

    @property
    def valid_times(self) -> list[str]:
        return [iso_time(self.init_time + lead) for lead in self.lead_time]


def point_values(ds: xr.Dataset, places: list[Place], targets: list[Target]) -> PointValues:
    """Read the members at ``places`` from a forecast ``[member, init_time, lead_time, [level,]
    latitude, longitude]`` (one init time)."""
    ds = ds.isel(init_time=0)
    lat = xr.DataArray([p.lat_index for p in places], dims="place")
    lon = xr.DataArray([p.lon_index for p in places], dims="place")
    members, leads = ds.sizes["member"], ds.sizes["lead_time"]
    values = np.empty((len(places), len(targets), members, leads), np.float32)
    loaded: dict[str, xr.DataArray] = {}
    for t, target in enumerate(targets):
        if target.variable not in loaded:
            loaded[target.variable] = ds[target.variable].isel(latitude=lat, longitude=lon).load()
        field = loaded[target.variable]
        if target.level is not None:
            field = field.sel(level=target.level)
        values[:, t] = field.transpose("place", "member", "lead_time").values
    return PointValues(
        init_time=cast(np.datetime64, np.asarray(ds["init_time"].values, "datetime64[ns]")[()]),
        lead_time=np.asarray(ds["lead_time"].values).astype("timedelta64[ns]"),
        member=np.asarray(ds["member"].values),
        places=places,
        targets=targets,
        values=values,
    )


def summaries(
    values: np.ndarray, quantiles: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, spread, quantiles)`` over the member axis of ``values`` ``[..., M, S]``: shapes
    ``[..., S]``, ``[..., S]``, ``[Q, ..., S]`` (float64)."""
    x = np.asarray(values, np.float64)
    members = x.shape[-2]
    spread = x.std(axis=-2, ddof=1) if members > 1 else np.zeros_like(x[..., 0, :])
    return x.mean(axis=-2), spread, np.quantile(x, list(quantiles), axis=-2)


def numbers(x: np.ndarray) -> list[float | None]:
    """Values as JSON numbers, NaN and infinities as null (leads not done, masked points)."""
    return [float(v) if math.isfinite(v) else None for v in np.asarray(x, np.float64).ravel()]


def quantile_key(q: float) -> str:
    """``0.1`` -> ``"0.1"`` (JSON keys, as the job's JSON result writes them)."""
    return f"{q:g}"


def quantile_column(q: float) -> str:
    """``0.1`` -> ``"p10"`` (CSV columns: the percentile)."""
    return f"p{round(q * 100, 6):g}"


def points_json(
    job_id: str, values: PointValues, quantiles: Sequence[float], *, complete: bool
) -> dict[str, Any]:
    """The `PointsResult` as a dict."""
    mean, spread, qs = summaries(values.values, quantiles)
    places: list[dict[str, Any]] = []
    for p, place in enumerate(values.places):
        series = {}
        for t, target in enumerate(values.targets):
            series[target.column] = {
                "variable": target.variable,
                "level": target.level,
                "units": target.units,
                "mean": numbers(mean[p, t]),
                "spread": numbers(spread[p, t]),
                "quantiles": {
                    quantile_key(q): numbers(qs[k, p, t]) for k, q in enumerate(quantiles)
                },
                "members": [numbers(row) for row in values.values[p, t]],
            }
        where = {
            "latitude": place.latitude,
            "longitude": place.longitude,
            "grid_latitude": place.grid_latitude,
            "grid_longitude": place.grid_longitude,
        }
        places.append({**where, "series": series})
    return {
        "job_id": job_id,
        "complete": complete,
        "method": METHOD,
        "init_time": iso_time(values.init_time),
        "lead_hours": values.lead_hours,
        "valid_times": values.valid_times,
        "members": [int(m) for m in values.member],
        "quantiles": list(quantiles),
        "points": places,
    }


def csv_columns(values: PointValues, quantiles: Sequence[float]) -> list[str]:
    """The CSV header (see the module docstring)."""
    columns = [
        "location_id",
        "latitude",
        "longitude",
        "grid_latitude",
        "grid_longitude",
        "time",
        "lead_hours",
    ]
    for target in values.targets:
        stats = ["mean", "spread", *(quantile_column(q) for q in quantiles)]
        stats += [f"member{int(m):02d}" for m in values.member]
        columns += [f"{target.column}_{stat} ({target.units})" for stat in stats]
    return columns


def _cell(value: float) -> str:
    # 9 significant digits reproduce a float32 exactly.
    return format(value, ".9g") if math.isfinite(value) else ""


def points_csv(values: PointValues, quantiles: Sequence[float]) -> str:
    """The table as CSV text: one row per place and lead (see the module docstring)."""
    mean, spread, qs = summaries(values.values, quantiles)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_columns(values, quantiles))
    times = values.valid_times
    for p, place in enumerate(values.places):
        for s, hours in enumerate(values.lead_hours):
            row: list[Any] = [
                p,
                f"{place.latitude:g}",
                f"{place.longitude:g}",
                f"{place.grid_latitude:g}",
                f"{place.grid_longitude:g}",
                times[s],
                hours,
            ]
            for t in range(len(values.targets)):
                row += [_cell(mean[p, t, s]), _cell(spread[p, t, s])]
                row += [_cell(qs[k, p, t, s]) for k in range(len(quantiles))]
                row += [_cell(float(v)) for v in values.values[p, t, :, s]]
            writer.writerow(row)
    return out.getvalue()


def iso_time(t: Any) -> str:
    """A datetime64 as ISO 8601 UTC with a Z, to the second."""
    return f"{np.datetime_as_string(np.asarray(t, 'datetime64[s]'), unit='s')}Z"


# -- the JSON answer's layout, for the OpenAPI description --------------------------------------


class PointSeries(BaseModel):
    variable: str = Field(description="canonical variable name")
    level: int | None = Field(default=None, description="hPa; None for surface variables")
    units: str = Field(description="units of every value of the series")
    mean: list[float | None] = Field(description="ensemble mean per lead")
    spread: list[float | None] = Field(
        description="ensemble standard deviation per lead (M-1 normalised; 0 for one member)"
    )
    quantiles: dict[str, list[float | None]] = Field(
        description="per quantile (e.g. '0.9'), numpy's linear quantile of the members per lead"
    )
    members: list[list[float | None]] = Field(description="[member][lead] values as stored")


class PointForecast(BaseModel):
    latitude: float = Field(description="requested latitude (degrees north)")
    longitude: float = Field(description="requested longitude (degrees east)")
    grid_latitude: float = Field(description="the grid point used (degrees north)")
    grid_longitude: float = Field(description="the grid point used (degrees east)")
    series: dict[str, PointSeries] = Field(
        description="per column name: 'temperature_850hPa' on a level, 'surface_pressure' at "
        "the surface"
    )


class PointsResult(BaseModel):
    job_id: str = Field(description="the job")
    complete: bool = Field(description="all leads are done (else the leads done so far)")
    method: str = Field(description="how places map to the grid: 'nearest grid point'")
    init_time: str = Field(description="initial time (ISO 8601 UTC)")
    lead_hours: list[int] = Field(description="the leads of every series (hours)")
    valid_times: list[str] = Field(description="init_time + lead (ISO 8601 UTC)")
    members: list[int] = Field(description="member numbers, in the order of each 'members'")
    quantiles: list[float] = Field(description="the quantiles reported")
    points: list[PointForecast] = Field(description="one per requested place, in order")
