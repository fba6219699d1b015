"""The climatological mean by day of year and time of day: the reference of anomaly scores (ACC).

WeatherBench2's climatology (``scripts/compute_climatology.py``, ``utils.compute_hourly_stat``)
is, for each hour of the day and each day of the year 1..366, the mean over the climatology's
years of that hour's states on the days around it, weighted by a triangular window of
``window_size`` days (61 for its ERA5 climatology): weight ``1 - |d| / h`` at ``d`` days away
(``h = window_size // 2``, zero from ``|d| = h`` on), the days of the year on a circle of 366
(day 366 next to day 1). `climatological_mean` computes the same mean for the times it is asked
about, from every time of the archives: weights ``w(d)`` with ``d`` the circular distance
between days of the year, only times at the same time of day, normalised over the times there
are. It differs from WeatherBench2's only where a year is incomplete: WeatherBench2 fills day
366 of common years with a copy of day 365, here such a day is absent and the others'
weights are renormalised.

Computed in two passes so that the archives are read once: sums and counts per (day of year,
time of day) over every archive time that some asked time's window reaches, then the windowed
weighted mean of those sums for each asked time (float64 throughout).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from weather.data.errors import ArchiveError
from weather.data.times import format_times

WINDOW_DAYS = 61
YEAR_DAYS = 366
# Archive times read per pass (each a whole field; 256 x 13 levels x 32 x 64 x 8 bytes ~ 55 MB).
_BLOCK = 256


def window_weights(distance_days: np.ndarray, window_days: int) -> np.ndarray:
    """Triangular window weights for circular day-of-year distances ``[...]`` (days, >= 0).

    ``1 - d / h`` for ``d < h = window_days // 2``, else 0 (WeatherBench2's
    ``create_window_weights``, before its normalisation, which cancels in a weighted mean); for
    ``window_days = 1``, 1 at ``d = 0`` only.
    """
    d = np.abs(np.asarray(distance_days, np.float64))
    half = window_days // 2
    if half == 0:
        return (d == 0).astype(np.float64)
    return np.clip(1.0 - d / half, 0.0, None)


def day_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Days between days of the year ``a`` and ``b`` (1..366) on a circle of 366 days."""
    d = np.abs(np.asarray(a, np.int64) - np.asarray(b, np.int64)) % YEAR_DAYS
    return np.minimum(d, YEAR_DAYS - d)


def _calendar(times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(day of year 1..366, time of day in seconds)`` of ``times``."""
    index = pd.DatetimeIndex(np.asarray(times, "datetime64[ns]"))
    seconds = (index - index.normalize()) // pd.Timedelta(1, "s")
    return np.asarray(index.day_of_year, np.int64), np.asarray(seconds, np.int64)


def climatological_mean(
    archive: xr.Dataset,
    times: np.ndarray | Sequence[np.datetime64],
    *,
    variables: Sequence[str] | None = None,
    levels: Sequence[int] | None = None,
    window_days: int = WINDOW_DAYS,
) -> xr.Dataset:
    """The climatological mean of ``archive`` at each of ``times`` (see the module docstring).

    Args:
      archive: the climatology's archives (e.g. the training years, `open_archives`), dims
        ``[time, (level,) latitude, longitude]``; numpy- or dask-backed (read in blocks of
        times, never whole).
      times: the times to give the climatology at (e.g. the forecasts' valid times); repeated
        times are given once.
      variables: time-dependent variables of the archive; all when None.
      levels: pressure levels (hPa) of the level variables; all the archive's when None.
      window_days: the triangular window's width in days, odd (WeatherBench2: 61); 1 averages
        the same day of the year and time of day only.

    Returns:
      Dataset ``[time, (level,) latitude, longitude]`` float64 in the variables' units, ``time``
      the distinct ``times`` ascending; attributes ``window_days`` and the archive's span.

    Raises:
      ValueError: a window that is not a positive odd number of days; no times.
      ArchiveError: a variable or level the archive lacks; an asked time that no archive time
        reaches (no time at that time of day within the window), naming it.
    """
    if not isinstance(window_days, int | np.integer) or window_days < 1 or window_days % 2 == 0:
        raise ValueError(f"window_days: {window_days!r} must be a positive odd number of days")
    wanted = np.unique(np.asarray(times, "datetime64[ns]"))
    if wanted.size == 0:
        raise ValueError("times: need at least one time")
    if "time" not in archive.dims:
        raise ArchiveError("climatology archive: has no 'time' dimension")
    names = _variables(archive, variables)
    if levels is not None and any("level" in archive[n].dims for n in names):
        have = set(archive["level"].values.tolist())
        absent = sorted(set(levels) - have)
        if absent:
            raise ArchiveError(f"climatology archive: coordinate 'level' lacks {absent} hPa")

    archive_times = archive["time"].values.astype("datetime64[ns]")
    day_a, tod_a = _calendar(archive_times)
    day_s, tod_s = _calendar(wanted)
    # Keys of the (day, time of day) slots that some asked time's window reaches.
    slot_a = (day_a - 1) * 86400 + tod_a
    keys, key_of_time = np.unique(slot_a, return_inverse=True)
    key_day, key_tod = keys // 86400 + 1, keys % 86400
    weights = window_weights(day_distance(day_s[:, None], key_day[None, :]), window_days)
    weights = weights * (tod_s[:, None] == key_tod[None, :])  # [asked, slot]
    used = weights.any(axis=0)
    counts = np.bincount(key_of_time, minlength=keys.size).astype(np.float64)
    norm = weights @ counts
    if np.any(norm == 0):
        missing = wanted[norm == 0]
        raise ArchiveError(
            f"climatology archive ({format_times(archive_times[[0, -1]])}) has no time at the "
            f"time of day of {format_times(missing)} within {window_days // 2} days of its day "
            "of the year"
        )
    # Slots in use, renumbered 0..K-1; archive times outside them are not read.
    slot_number = np.full(keys.size, -1)
    slot_number[used] = np.arange(int(used.sum()))
    weights = weights[:, used] / norm[:, None]  # [asked, K], rows summing to 1 over the counts
    time_slot = slot_number[key_of_time]  # [archive time], -1 where unused

    data = {}
    for name in names:
        field = archive[name]
        if levels is not None and "level" in field.dims:
            field = field.sel(level=list(levels))
        field = field.transpose("time", ...)
        sums = np.zeros((int(used.sum()), *field.shape[1:]), np.float64)
        for start in range(0, archive_times.size, _BLOCK):
            slots = time_slot[start : start + _BLOCK]
            keep = slots >= 0
            if not keep.any():
                continue
            block = np.asarray(field.isel(time=slice(start, start + _BLOCK)).values, np.float64)
            np.add.at(sums, slots[keep], block[keep])
        mean = (weights @ sums.reshape(sums.shape[0], -1)).reshape(wanted.size, *sums.shape[1:])
        data[name] = xr.DataArray(
            mean,
            dims=field.dims,
            coords={d: field[d].values for d in field.dims if d != "time"} | {"time": wanted},
            attrs=dict(field.attrs),
        )
    out = xr.Dataset(data)
    out.attrs.update(
        window_days=int(window_days),
        climatology_span=format_times(archive_times[[0, -1]]),
        description="climatological mean by day of year and time of day (WeatherBench2's "
        "triangular window)",
    )
    return out


def _variables(archive: xr.Dataset, variables: Sequence[str] | None) -> list[str]:
    if variables is None:
        return [str(n) for n, da in archive.data_vars.items() if "time" in da.dims]
    for name in variables:
        if name not in archive.data_vars:
            raise ArchiveError(f"variable {name!r} is missing from the climatology archive")
        if "time" not in archive[name].dims:
            raise ArchiveError(f"variable {name!r} of the climatology archive is static")
    return list(variables)


__all__ = ["WINDOW_DAYS", "climatological_mean", "day_distance", "window_weights"]
