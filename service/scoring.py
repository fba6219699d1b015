"""Scores of a finished job against the archive's verifying analysis (where the archive has it).

Fair CRPS, ensemble-mean RMSE and the spread/skill ratio (`weather.scoring.metrics`) per
variable, level and lead, area-weighted over the job's domain (the globe or its region). Leads
whose valid time the archive lacks are marked unverified with null scores; when no lead is
verifiable nothing is computed.

Every (variable, level) pair is stacked along one ``field`` dim first, so each metric is one
call over all fields (a worker scores a job in tens of milliseconds rather than one call per
variable and metric).

Per region: the same rows for each of WeatherBench2's named regions other than the globe
(`weather.scoring.regions.REGIONS`: tropics, extra-tropics, extra-tropics-north, -south) that
holds grid points of the job's domain, averaged over the part of the domain inside the region
with the whole grid's cell areas. They are stored with the scores under ``regions`` (``{name:
{"domain", "rows"}}``) and served by ``GET /forecast/{id}/scores?region=NAME`` (`select_region`).
The per-point scores are computed once for all regions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from service.catalog import ModelInfo
from service.results import Subset
from service.schemas import JobRequest
from weather.data.variables import CATALOGUE
from weather.scoring import metrics
from weather.scoring.regions import GLOBAL, REGIONS, Region

# The regions whose rows are stored with every job's scores (the globe is the job's own rows).
STORED_REGIONS: tuple[Region, ...] = tuple(r for r in REGIONS.values() if r.name != GLOBAL.name)


def _number(x: Any) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None


def _fields(ds: xr.Dataset, levels: list[tuple[str, int | None]]) -> xr.DataArray:
    """``ds``'s variables at their levels stacked along ``field`` (level dropped)."""
    parts = [
        (ds[name].sel(level=level, drop=True) if level is not None else ds[name]).drop_vars(
            "level", errors="ignore"
        )
        for name, level in levels
    ]
    return xr.concat(parts, dim="field", coords="minimal", compat="override", join="exact")


def score_job(
    job_id: str,
    forecast: xr.Dataset,
    archive: xr.Dataset,
    info: ModelInfo,
    request: JobRequest,
    subset: Subset,
) -> dict[str, Any]:
    """The `service.schemas.Scores` of a forecast, as a JSON-able dict, with the rows of each
    region of `STORED_REGIONS` that holds points of the job's domain under ``regions``.

    Args:
      forecast: the job's forecast (its stored subset), ``[member, init_time, lead_time, ...]``.
      archive: the canonical analysis archive on the model's grid.
      info, request, subset: the model, the job's request and what it stores.
    """
    names = list(subset.variables)
    pairs: list[tuple[str, int | None]] = [
        (name, level)
        for name in names
        for level in (subset.levels if "level" in forecast[name].dims else (None,))
    ]
    leads = (forecast["lead_time"].values // np.timedelta64(1, "h")).astype(int)
    valid_times = forecast["init_time"].values[0] + forecast["lead_time"].values
    verified = np.isin(valid_times, archive["time"].values)  # [lead]
    lat = np.asarray(forecast["latitude"].values)
    lon = np.asarray(forecast["longitude"].values)
    regions = [GLOBAL] + [
        r for r in STORED_REGIONS if r.latitude_mask(lat).any() and r.longitude_mask(lon).any()
    ]
    # [region, field, lead] per metric; region 0 is the job's whole domain.
    crps = rmse = ratio = np.full((len(regions), len(pairs), leads.size), np.nan)
    if verified.any():
        fc = _fields(forecast.load(), pairs)  # [field, member, init_time, lead, lat, lon]
        truth = archive[names]
        if "level" in forecast.dims:
            truth = truth.sel(level=list(subset.levels))
        truth = metrics.align_truth(forecast, truth, missing="nan")
        truth = truth.isel(latitude=subset.lat_index, longitude=subset.lon_index)
        # The worker checked that the archive's grid is the model's: share exact coordinates.
        truth = truth.assign_coords(latitude=forecast.latitude, longitude=forecast.longitude)
        tr = _fields(truth.drop_vars("valid_time").load(), pairs)
        # Sea-surface temperature is NaN over land in forecast and truth alike: averaged where
        # it is defined. Every other field is finite (the reader refuses NaN in the truth).
        skipna = any(name in CATALOGUE and CATALOGUE[name].undefined_somewhere for name in names)
        if request.region is not None:
            # Area weights come from the whole grid (a region's edge rows are not polar caps):
            # pad the region to every latitude with NaN and leave NaN out of the averages.
            full = {"latitude": np.sort(info.latitude)}
            fc, tr = fc.sortby("latitude").reindex(full), tr.sortby("latitude").reindex(full)
            skipna = True
        # A region covering the padded grid (the globe) averages exactly as without one.
        crps, rmse, ratio = (
            score(fc, tr, skipna=skipna, region=regions)
            .transpose("region", "field", "lead_time")
            .values
            for score in (
                lambda f, t, **kw: metrics.crps(f, t, fair=True, **kw),
                metrics.ensemble_mean_rmse,
                metrics.spread_skill_ratio,
            )
        )

    def rows_of(k: int) -> list[dict[str, Any]]:
        rows = []
        for f, (name, level) in enumerate(pairs):
            units = str(forecast[name].attrs.get("units", ""))
            for i, lead in enumerate(leads):
                ok = bool(verified[i])
                rows.append(
                    {
                        "variable": name,
                        "units": units,
                        "level": level,
                        "lead_hours": int(lead),
                        "valid_time": np.datetime_as_string(valid_times[i], unit="s") + "Z",
                        "verified": ok,
                        "crps": _number(crps[k, f, i]) if ok else None,
                        "rmse": _number(rmse[k, f, i]) if ok else None,
                        "spread_skill": _number(ratio[k, f, i]) if ok else None,
                    }
                )
        return rows

    whole = domain(request)
    return {
        "job_id": job_id,
        "members": request.members,
        "domain": whole,
        "rows": rows_of(0),
        "regions": {
            region.name: {"domain": region_domain(region, whole), "rows": rows_of(k)}
            for k, region in enumerate(regions)
            if k > 0
        },
    }


def domain(request: JobRequest) -> str:
    """'globe', or the region's box as text."""
    if request.region is None:
        return "globe"
    return ", ".join(f"{k}={v:g}" for k, v in request.region.model_dump().items())


def region_domain(region: Region, whole: str) -> str:
    """``tropics (latitude -20..20, every longitude)``, plus ``within <box>`` for a box job."""
    text = f"{region.name} ({region.describe()})"
    return text if whole == "globe" else f"{text} within {whole}"


def select_region(scores: dict[str, Any], region: str) -> dict[str, Any]:
    """The stored scores (`score_job`) of one named region: the same layout, its rows and
    domain.

    ``global`` is the job's own rows (the globe, or the part of it a box job stores). Scores
    whose computation failed are returned as they are (their ``error`` says why).

    Raises:
      LookupError: naming why the region has no scores for this job: it holds no grid point of
        the job's box, or the scores were stored before per-region scores existed.
    """
    base = {k: v for k, v in scores.items() if k != "regions"}
    if region == GLOBAL.name or scores.get("error"):
        return base
    stored = scores.get("regions")
    if stored is None:
        raise LookupError(
            "the job was scored before per-region scores existed; only its whole domain's "
            "scores (no region) are available"
        )
    if region not in stored:
        raise LookupError(
            f"{region!r} ({REGIONS[region].describe()}) holds no grid point of the job's "
            f"domain ({scores.get('domain')})"
        )
    return {**base, "domain": stored[region]["domain"], "rows": stored[region]["rows"]}
