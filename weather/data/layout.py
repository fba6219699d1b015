"""The forecast layout shared by the model, the baselines and the scores.

Dims ``member, init_time, lead_time, [level,] latitude, longitude``; ``lead_time`` a timedelta;
``member`` with ``standard_name: realization``; variables with the catalogue's CF attributes.
"""

from __future__ import annotations

import xarray as xr

from weather.data.variables import CATALOGUE

FORECAST_DIMS = ("member", "init_time", "lead_time", "level", "latitude", "longitude")


def annotate_forecast(ds: xr.Dataset) -> None:
    """Set (in place) the CF attributes of a forecast dataset's variables and coordinates."""
    for name in ds.data_vars:
        entry = CATALOGUE.get(str(name))
        if entry is not None:
            ds[name].attrs.update(units=entry.units, long_name=entry.long_name)
            if entry.standard_name:
                ds[name].attrs["standard_name"] = entry.standard_name
    ds["member"].attrs.update(standard_name="realization", long_name="ensemble member")
    ds["lead_time"].attrs.update(long_name="forecast lead time")
    ds["init_time"].attrs.update(long_name="forecast initial time")
    ds["latitude"].attrs.update(units="degrees_north", standard_name="latitude")
    ds["longitude"].attrs.update(units="degrees_east", standard_name="longitude")
    if "level" in ds.coords:
        ds["level"].attrs.update(units="hPa", long_name="pressure level")
