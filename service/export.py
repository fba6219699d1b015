"""Result formats: a zipped Zarr store, NetCDF, GRIB2, and JSON ensemble summaries at points or
regions.

Zarr and NetCDF follow CF (`weather.data.layout`); the zipped Zarr store carries consolidated
metadata, so ``xarray.open_zarr`` opens it silently. GRIB2 is `weather.data.grib`: one message per
member, lead and field.

Summaries per lead, from the members' values ``[M, S]`` at a point (its nearest grid point) or
averaged over a region (area-weighted with the whole grid's cell areas):
mean; spread, the standard deviation with ``M - 1`` (0 for one member); quantiles
(`numpy.quantile`, linear); the fraction of members above each threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from service.points import iso_time, numbers, quantile_key, summaries
from service.schemas import JobRequest
from weather.data.grib import write_grib2
from weather.data.grid import cell_area_weights
from weather.data.layout import consolidate
from weather.data.layout import write_netcdf as write_forecast_netcdf


def write_zarr_zip(ds: xr.Dataset, path: Path) -> None:
    """``ds`` as a Zarr v3 store inside one zip file (readable with `zarr.storage.ZipStore`).

    The store is written to a directory first and then zipped: writing into a zip directly
    would store metadata files twice (a zip member cannot be replaced).
    """
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        store = Path(tmp) / "store.zarr"
        ds.to_zarr(store, zarr_format=3, consolidated=False)
        consolidate(store)
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            for file in sorted(store.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(store).as_posix())


def write_netcdf(ds: xr.Dataset, path: Path) -> None:
    """``ds`` as NetCDF-4 (CF)."""
    write_forecast_netcdf(ds, path)


def write_grib(ds: xr.Dataset, path: Path) -> None:
    """``ds`` as GRIB2 (24-bit simple packing).

    Raises:
      ValueError: naming a variable without a GRIB2 code (`weather.data.grib.PARAMETERS`).
    """
    write_grib2(ds, path)


def _summaries(values: np.ndarray, request: JobRequest, name: str) -> dict[str, Any]:
    """Summary fields of a `service.schemas.Series` from ``values`` ``[M, S]``."""
    summary = request.summary
    mean, spread, quantiles = summaries(values, summary.quantiles)
    out: dict[str, Any] = {
        "mean": numbers(mean),
        "spread": numbers(spread),
        "quantiles": {
            quantile_key(q): numbers(quantiles[k]) for k, q in enumerate(summary.quantiles)
        },
        "exceedance": {
            f"{t:g}": numbers((values > t).mean(axis=0)) for t in summary.thresholds.get(name, [])
        },
    }
    if summary.members:
        out["members"] = [numbers(row) for row in values]
    return out


def _nearest(grid: np.ndarray, value: float, periodic: bool) -> int:
    distance = (grid - value + 180.0) % 360.0 - 180.0 if periodic else grid - value
    return int(np.argmin(np.abs(distance)))


def json_result(
    job_id: str,
    ds: xr.Dataset,
    request: JobRequest,
    *,
    complete: bool,
    model_latitude: np.ndarray,
) -> dict[str, Any]:
    """The `service.schemas.JsonResult` of a forecast (leads done so far) as a dict.

    Args:
      ds: the job's forecast ``[member, init_time, lead_time, ...]`` (its stored subset).
      model_latitude: the whole grid's latitudes (for a region's area weights).
    """
    ds = ds.isel(init_time=0).load()
    lat = ds["latitude"].values
    lon = ds["longitude"].values
    init = ds["init_time"].values
    leads = ds["lead_time"].values
    places: list[tuple[dict[str, Any], Any]] = []
    if request.points is not None:
        for p in request.points:
            i, j = _nearest(lat, p.latitude, False), _nearest(lon, p.longitude, True)
            where: dict[str, Any] = {
                "kind": "point",
                "name": p.name,
                "latitude": p.latitude,
                "longitude": p.longitude,
                "grid_latitude": float(lat[i]),
                "grid_longitude": float(lon[j]),
            }
            places.append((where, (i, j)))
    elif request.region is not None:
        full = np.sort(model_latitude)
        weights = cell_area_weights(full)[np.searchsorted(full, lat)]  # [h]
        places.append(({"kind": "region", "region": request.region.model_dump()}, weights))
    series = []
    for name in request.variables:
        field = ds[name]
        levels = list(request.levels) if "level" in field.dims else [None]
        for level in levels:
            one = field.sel(level=level) if level is not None else field
            x = one.transpose("member", "lead_time", "latitude", "longitude").values
            for where, how in places:
                if isinstance(how, tuple):
                    values = x[:, :, how[0], how[1]]
                else:
                    w = how[None, None, :, None] * np.ones_like(x)
                    values = (x * w).sum(axis=(2, 3)) / w.sum(axis=(2, 3))
                series.append(
                    {
                        "variable": name,
                        "units": str(field.attrs.get("units", "")),
                        "level": level,
                        "location": where,
                        **_summaries(values, request, name),
                    }
                )
    valid = init + leads
    return {
        "job_id": job_id,
        "complete": complete,
        "init_time": iso_time(init),
        "lead_hours": [int(h) for h in leads // np.timedelta64(1, "h")],
        "valid_times": [iso_time(t) for t in valid],
        "members": int(ds.sizes["member"]),
        "series": series,
    }
