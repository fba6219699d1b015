"""A physical sanity check of an archive: jets, eddy kinetic energy, variability and seasons.

It answers "does this look like an Earth-like atmosphere?" with a few numbers a meteorologist
would look at first. Reference values from our T42 Held-Suarez runs: jet maxima ~30 m/s near
40-45 degrees, eddy kinetic energy at 250 hPa of a few hundred m2 s-2, a 60N 850 hPa temperature
swinging by tens of K over a year with the seasonal cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from weather.data.grid import cell_area_weights
from weather.data.reader import open_archive
from weather.sim.pressure import GRAVITY


def _nearest_level(ds: xr.Dataset, level: float) -> Any:
    levels = ds["level"].values
    return levels[int(np.argmin(np.abs(levels - level)))]


def _written(ds: xr.Dataset) -> xr.Dataset:
    """Drop trailing times that a still-running simulation has not written (NaN)."""
    sp = ds["surface_pressure"].isel(latitude=0, longitude=0).values
    finite = np.isfinite(sp)
    if not finite.any():
        raise ValueError("surface_pressure: no written (finite) times in the archive")
    return ds.isel(time=slice(0, int(np.nonzero(finite)[0][-1]) + 1))


def sanity_report(archive: str | Path | xr.Dataset) -> dict[str, Any]:
    """Headline physical diagnostics of a canonical archive.

    Args:
      archive: a canonical dataset (time, level, latitude, longitude) or a Zarr path.

    Returns:
      A JSON-friendly dict: jets (m s-1, degrees), eddy kinetic energy (m2 s-2), z500 variability
      (m), surface pressure (hPa), temperature ranges (K) and the seasonal swing (K).
    """
    # Through the reader: any supported layout, and a clear error for a bad path.
    ds = archive if isinstance(archive, xr.Dataset) else open_archive(archive)
    ds = _written(ds)
    lat = ds["latitude"].values
    weights = xr.DataArray(cell_area_weights(lat), dims="latitude", coords={"latitude": lat})
    p250, p500, p850 = (_nearest_level(ds, p) for p in (250, 500, 850))
    u250 = ds["u_component_of_wind"].sel(level=p250).astype(np.float64).load()
    v250 = ds["v_component_of_wind"].sel(level=p250).astype(np.float64).load()
    report: dict[str, Any] = {
        "times": int(ds.sizes["time"]),
        "first_time": str(ds["time"].values[0]),
        "last_time": str(ds["time"].values[-1]),
    }
    jet = u250.mean(("time", "longitude"))
    for name, hemi in (("north", jet.latitude > 0), ("south", jet.latitude < 0)):
        j = jet.where(hemi, drop=True)
        i = int(np.argmax(j.values))
        report[f"jet_{name}_max_u{int(p250)}_m_s"] = round(float(j[i]), 2)
        report[f"jet_{name}_latitude_deg"] = round(float(j.latitude[i]), 2)
    # The seasons move the jets: winter jets are the stronger ones.
    month = u250["time"].dt.month
    for season, months in (("DJF", (12, 1, 2)), ("JJA", (6, 7, 8))):
        in_season = month.isin(months)
        if not bool(in_season.any()):
            continue
        seasonal = u250.where(in_season, drop=True).mean(("time", "longitude"))
        for name, hemi in (("north", seasonal.latitude > 0), ("south", seasonal.latitude < 0)):
            j = seasonal.where(hemi, drop=True)
            report[f"jet_{name}_max_u{int(p250)}_{season}_m_s"] = round(float(j.max()), 2)
    eke = 0.5 * ((u250 - u250.mean("longitude")) ** 2 + (v250 - v250.mean("longitude")) ** 2)
    eke_zonal = eke.mean(("time", "longitude"))
    i = int(np.argmax(eke_zonal.values))
    report[f"eddy_kinetic_energy_{int(p250)}_peak_m2_s2"] = round(float(eke_zonal[i]), 1)
    report[f"eddy_kinetic_energy_{int(p250)}_peak_latitude_deg"] = round(float(lat[i]), 2)
    report[f"eddy_kinetic_energy_{int(p250)}_global_m2_s2"] = round(
        float(eke_zonal.weighted(weights).mean()), 1
    )
    z500 = ds["geopotential"].sel(level=p500).astype(np.float64).load() / GRAVITY
    z_std = z500.std("time")
    mid = (np.abs(z_std.latitude) >= 30) & (np.abs(z_std.latitude) <= 60)
    report["z500_temporal_std_midlatitudes_m"] = round(
        float(z_std.where(mid).weighted(weights).mean()), 1
    )
    report["z500_mean_m"] = round(
        float(z500.mean(("time", "longitude")).weighted(weights).mean()), 1
    )
    sp = ds["surface_pressure"].astype(np.float64).load() / 100.0
    report["surface_pressure_global_mean_hPa"] = round(
        float(sp.mean(("time", "longitude")).weighted(weights).mean()), 1
    )
    report["surface_pressure_min_hPa"] = round(float(sp.min()), 1)
    report["surface_pressure_max_hPa"] = round(float(sp.max()), 1)
    for p in (p850, p250):
        t = ds["temperature"].sel(level=p)
        report[f"t{int(p)}_min_K"] = round(float(t.min()), 1)
        report[f"t{int(p)}_max_K"] = round(float(t.max()), 1)
    t60n = ds["temperature"].sel(level=p850).sel(latitude=60, method="nearest").mean("longitude")
    monthly = t60n.load().groupby("time.month").mean()
    report["t850_60N_monthly_min_K"] = round(float(monthly.min()), 1)
    report["t850_60N_monthly_max_K"] = round(float(monthly.max()), 1)
    report["t850_60N_months_covered"] = int(monthly.sizes["month"])
    return report


def format_report(report: dict[str, Any]) -> str:
    """Aligned `name: value` lines."""
    width = max(len(k) for k in report)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in report.items())
