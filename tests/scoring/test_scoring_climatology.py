"""The climatological mean by day of year and time of day against a brute-force loop over times."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from weather.data.errors import ArchiveError
from weather.scoring.climatology import climatological_mean, day_distance, window_weights

# 2003 (common) and 2004 (leap), 12-hourly: 1462 times, several of the module's read blocks.
TIMES = pd.date_range("2003-01-01", "2004-12-31T12", freq="12h").values
LAT = np.array([-45.0, 45.0])
LON = np.array([0.0, 120.0, 240.0])


@pytest.fixture(scope="module")
def archive() -> xr.Dataset:
    """A seasonal cycle, a daily cycle, a trend between the years and noise, in float32 (as the
    archives are); a level field and a surface field."""
    rng = np.random.default_rng(3)
    t = pd.DatetimeIndex(TIMES)
    season = np.cos(2 * np.pi * t.day_of_year.values / 365.25)[:, None, None]
    daily = (t.hour.values == 12)[:, None, None] * 1.5
    trend = (t.year.values - 2003)[:, None, None] * 0.7
    shape = (TIMES.size, LAT.size, LON.size)
    surface = 1e5 + 800 * season + 50 * daily + 30 * trend + 20 * rng.standard_normal(shape)
    levels = np.stack([250 + 10 * season + daily + trend + rng.standard_normal(shape)] * 2, 1)
    levels[:, 1] += 30
    coords = {"time": TIMES, "level": [500, 850], "latitude": LAT, "longitude": LON}
    return xr.Dataset(
        {
            "temperature": (("time", "level", "latitude", "longitude"), levels.astype("f4")),
            "surface_pressure": (("time", "latitude", "longitude"), surface.astype("f4")),
            "geopotential_at_surface": (("latitude", "longitude"), np.zeros((2, 3), "f4")),
        },
        coords=coords,
    )


def brute_force(archive: xr.Dataset, name: str, when: np.datetime64, window: int) -> np.ndarray:
    """The weighted mean over archive times, one time at a time: weight ``1 - d / h`` (``h`` the
    half window) for a time at the same hour ``d`` days of the year away on a 366-day circle."""
    target = pd.Timestamp(when)
    half = window // 2
    total = np.zeros(archive[name].shape[1:])
    norm = 0.0
    for i, time in enumerate(pd.DatetimeIndex(archive["time"].values)):
        if (time.hour, time.minute) != (target.hour, target.minute):
            continue
        d = abs(time.day_of_year - target.day_of_year)
        d = min(d, 366 - d)
        weight = float(d == 0) if half == 0 else max(0.0, 1.0 - d / half)
        if weight:
            total += weight * archive[name].values[i].astype(np.float64)
            norm += weight
    return total / norm


# Across the new year (the window wraps), on 29 February, at either hour, and in a year the
# archive does not hold (a climatology is by day of year).
ASKED = np.array(
    ["2005-01-01T00", "2004-12-31T12", "2004-02-29T12", "2010-07-15T00", "2003-06-01T12"],
    "datetime64[ns]",
)


@pytest.mark.parametrize("window", [1, 61, 15])
def test_climatological_mean_equals_a_weighted_loop_over_the_archive(archive, window):
    clim = climatological_mean(archive, ASKED, window_days=window)
    assert clim["temperature"].dims == ("time", "level", "latitude", "longitude")
    assert clim["surface_pressure"].dims == ("time", "latitude", "longitude")
    assert "geopotential_at_surface" not in clim
    np.testing.assert_array_equal(clim["time"].values, np.sort(ASKED))
    assert clim["temperature"].dtype == np.float64
    assert clim.attrs["window_days"] == window
    for name in ("temperature", "surface_pressure"):
        for when in ASKED:
            want = brute_force(archive, name, when, window)
            # float64 sums of the same float32 values in another order: ~1e-16 relative per
            # addition, ~1e3 additions; measured at most 1.1e-15 relative. 1e-12 leaves room.
            np.testing.assert_allclose(
                clim[name].sel(time=when).values, want, rtol=1e-12, err_msg=f"{name} {when}"
            )


def test_one_day_window_is_the_mean_of_the_same_day_and_hour_over_the_years(archive):
    clim = climatological_mean(archive, ASKED[[4]], variables=["surface_pressure"], window_days=1)
    same = archive["surface_pressure"].sel(time=["2003-06-01T12", "2004-05-31T12"])  # day 152
    assert {pd.Timestamp(t).day_of_year for t in same["time"].values} == {152}
    np.testing.assert_allclose(
        clim["surface_pressure"].values[0], same.values.astype(np.float64).mean(0), rtol=1e-14
    )
    # 29 February (day 60 in 2004) is day 60: 1 March of the common year, as in WeatherBench2.
    leap = climatological_mean(archive, ASKED[[2]], variables=["surface_pressure"], window_days=1)
    same = archive["surface_pressure"].sel(time=["2003-03-01T12", "2004-02-29T12"])
    np.testing.assert_allclose(
        leap["surface_pressure"].values[0], same.values.astype(np.float64).mean(0), rtol=1e-14
    )


def test_levels_variables_and_dask_backed_archives(archive):
    picked = climatological_mean(archive, ASKED, variables=["temperature"], levels=[850])
    full = climatological_mean(archive, ASKED)
    assert list(picked.data_vars) == ["temperature"]
    assert picked["level"].values.tolist() == [850]
    # The same float64 sums, weighted by a matrix product of another shape (another BLAS
    # summation order): measured 4e-16 relative.
    np.testing.assert_allclose(
        picked["temperature"].values, full["temperature"].sel(level=[850]).values, rtol=1e-14
    )
    lazy = climatological_mean(archive.chunk({"time": 7}), ASKED)
    xr.testing.assert_allclose(lazy, full, rtol=1e-14)
    assert lazy.attrs == full.attrs


def test_window_weights_and_distances():
    np.testing.assert_array_equal(day_distance(np.array([1, 366, 10]), np.array([366, 1, 200])),
                                  [1, 1, 176])  # fmt: skip
    np.testing.assert_allclose(window_weights(np.array([0, 15, 30, 31]), 61), [1, 0.5, 0, 0])
    np.testing.assert_array_equal(window_weights(np.array([0, 1]), 1), [1, 0])


def test_errors_name_the_problem(archive):
    with pytest.raises(ValueError, match="window_days: 60 must be a positive odd number"):
        climatological_mean(archive, ASKED, window_days=60)
    with pytest.raises(ArchiveError, match=r"no time at the time of day of \[2004-03-01T06:00\]"):
        climatological_mean(archive, np.array(["2004-03-01T06"], "datetime64[ns]"))
    with pytest.raises(ArchiveError, match="'u_component_of_wind' is missing from the climatology"):
        climatological_mean(archive, ASKED, variables=["u_component_of_wind"])
    with pytest.raises(ArchiveError, match=r"'level' lacks \[1000\] hPa"):
        climatological_mean(archive, ASKED, levels=[850, 1000])
    with pytest.raises(ValueError, match="at least one time"):
        climatological_mean(archive, np.array([], "datetime64[ns]"))
