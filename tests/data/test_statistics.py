"""Tests of the normalisation statistics against a float64 numpy brute force."""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback

from weather.data import statistics
from weather.data.errors import ArchiveError
from weather.data.grid import cell_area_weights

LEVEL_VARS = ("geopotential", "temperature")
ALL_VARS = (*LEVEL_VARS, "surface_pressure", "geopotential_at_surface")
START = np.datetime64("2000-01-01T00", "ns")


def random_archive(
    *,
    n_times: int = 40,
    step_hours: int = 6,
    levels: tuple[int, ...] = (250, 500, 850),
    n_lat: int = 7,
    n_lon: int = 8,
    seed: int = 0,
) -> xr.Dataset:
    """A canonical archive of float32 noise around realistic magnitudes (a large mean per level
    makes a naive one-pass variance visibly wrong)."""
    rng = np.random.default_rng(seed)
    time = START + np.arange(n_times) * np.timedelta64(step_hours, "h")
    lat = np.linspace(-90.0, 90.0, n_lat)  # includes both poles: weight ~0 there
    lon = np.arange(n_lon) * (360.0 / n_lon)
    shape = (n_times, len(levels), n_lat, n_lon)
    level_offset = np.linspace(1.0, 2.0, len(levels))[None, :, None, None]

    def noise(*s: int) -> np.ndarray:
        return rng.standard_normal(s)

    data = {
        "geopotential": (5e4 * level_offset + 800.0 * noise(*shape), "m2 s-2"),
        "temperature": (220.0 + 30.0 * level_offset + 5.0 * noise(*shape), "K"),
    }
    ds = xr.Dataset(
        {
            name: (("time", "level", "latitude", "longitude"), v.astype(np.float32), {"units": u})
            for name, (v, u) in data.items()
        },
        coords={"time": time, "level": list(levels), "latitude": lat, "longitude": lon},
    )
    ds["surface_pressure"] = (
        ("time", "latitude", "longitude"),
        (1e5 + 900.0 * noise(n_times, n_lat, n_lon)).astype(np.float32),
        {"units": "Pa"},
    )
    ds["geopotential_at_surface"] = (
        ("latitude", "longitude"),
        (2000.0 + 3000.0 * noise(n_lat, n_lon)).astype(np.float32),
        {"units": "m2 s-2"},
    )
    return ds


def brute_force(
    ds: xr.Dataset, name: str, start: np.datetime64, end: np.datetime64, weighted: bool
) -> dict[str, np.ndarray]:
    """Two-pass float64 statistics, with 12 h pairs found by looping over time labels."""
    x = ds[name].values.astype(np.float64)
    lat = ds["latitude"].values
    w = cell_area_weights(lat) if weighted else np.ones_like(lat)

    def mean_std(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # a: [sample, (level,) lat, lon] -> per level
        a = np.moveaxis(a, 0, -1)  # [(level,) lat, lon, sample]
        ww = np.broadcast_to(w[:, None, None], a.shape[-3:])
        m = (a * ww).sum(axis=(-3, -2, -1)) / ww.sum()
        centred = a - np.asarray(m)[..., None, None, None]
        v = (centred**2 * ww).sum(axis=(-3, -2, -1)) / ww.sum()
        return m, np.sqrt(v)

    if "time" not in ds[name].dims:
        m, s = mean_std(x[None])
        return {"mean": m, "std": s}
    times = ds["time"].values
    inside = [i for i, t in enumerate(times) if start <= t <= end]
    m, s = mean_std(x[inside])
    diffs = []
    for i in inside:
        for j in inside:
            if times[j] - times[i] == np.timedelta64(12, "h"):
                diffs.append(x[j] - x[i])
    _, ds_ = mean_std(np.stack(diffs))
    return {"mean": m, "std": s, "diff_std": ds_}


def assert_matches_brute_force(
    stats: xr.Dataset, ds: xr.Dataset, start: np.datetime64, end: np.datetime64, weighted: bool
) -> None:
    for name in stats.attrs["variables"].split(","):
        expected = brute_force(ds, name, start, end, weighted)
        for kind, value in expected.items():
            np.testing.assert_allclose(
                stats[f"{name}_{kind}"].values, value, rtol=1e-11, err_msg=f"{name}_{kind}"
            )
        if "time" not in ds[name].dims:
            assert f"{name}_diff_std" not in stats


@pytest.mark.parametrize("weighted", [True, False], ids=["area-weighted", "unweighted"])
def test_matches_brute_force_over_a_period(weighted: bool) -> None:
    ds = random_archive()
    start, end = START + np.timedelta64(18, "h"), START + np.timedelta64(7 * 24, "h")
    stats = statistics.compute_statistics(
        ds, ALL_VARS, start=start, end=end, area_weighted=weighted
    )
    assert_matches_brute_force(stats, ds, start, end, weighted)
    assert stats["geopotential_mean"].dims == ("level",)
    np.testing.assert_array_equal(stats["level"].values, [250, 500, 850])
    assert stats["surface_pressure_std"].dims == ()
    assert stats["temperature_mean"].attrs["units"] == "K"
    assert all(v.dtype == np.float64 for v in stats.data_vars.values())


def test_area_weighting_changes_the_answer() -> None:
    # Guards the brute-force comparison: both settings must not coincide by accident.
    ds = random_archive()
    kwargs = {"start": START, "end": START + np.timedelta64(5, "D")}
    a = statistics.compute_statistics(ds, ["temperature"], area_weighted=True, **kwargs)
    b = statistics.compute_statistics(ds, ["temperature"], area_weighted=False, **kwargs)
    assert not np.allclose(a["temperature_std"], b["temperature_std"], rtol=1e-4)


@pytest.mark.parametrize("step_hours", [3, 12])
def test_other_steps_pair_times_12_hours_apart(step_hours: int) -> None:
    ds = random_archive(step_hours=step_hours, n_times=30)
    end = ds["time"].values[-1]
    stats = statistics.compute_statistics(ds, ["temperature"], start=START, end=end)
    assert_matches_brute_force(stats, ds, START, end, True)
    assert stats.attrs["time_step_seconds"] == step_hours * 3600
    assert stats.attrs["n_diff_pairs"] == 30 - 12 // step_hours


def test_gaps_in_the_archive_only_pair_existing_times() -> None:
    full = random_archive(n_times=40)
    ds = full.isel(time=np.setdiff1d(np.arange(40), [5, 6, 17, 30]))
    end = full["time"].values[-1]
    stats = statistics.compute_statistics(ds, ALL_VARS, start=START, end=end)
    assert_matches_brute_force(stats, ds, START, end, True)
    assert stats.attrs["n_times"] == 36


def test_dask_chunked_input_gives_the_same_numbers() -> None:
    ds = random_archive()
    kwargs = {"start": START, "end": START + np.timedelta64(9, "D")}
    eager = statistics.compute_statistics(ds, ALL_VARS, **kwargs)
    chunked = ds.chunk({"time": 7, "level": 2, "latitude": 4})
    lazy = statistics.compute_statistics(chunked, ALL_VARS, **kwargs)
    xr.testing.assert_allclose(eager, lazy, rtol=1e-12)
    assert eager.attrs == lazy.attrs


class _CountComputes(Callback):
    def __init__(self) -> None:
        super().__init__()
        self.computes = 0

    def _start(self, dsk: object) -> None:
        self.computes += 1


def test_one_compute_for_all_variables() -> None:
    ds = random_archive().chunk({"time": 5})
    counter = _CountComputes()
    with counter, dask.config.set(scheduler="threads"):
        statistics.compute_statistics(ds, ALL_VARS, start=START, end="2000-01-10")
    assert counter.computes == 1


def test_levels_can_be_selected() -> None:
    ds = random_archive()
    kwargs = {"start": START, "end": START + np.timedelta64(9, "D")}
    every = statistics.compute_statistics(ds, ALL_VARS, **kwargs)
    some = statistics.compute_statistics(ds, ALL_VARS, levels=[850, 250], **kwargs)
    np.testing.assert_array_equal(some["level"].values, [850, 250])
    xr.testing.assert_allclose(
        some["temperature_std"], every["temperature_std"].sel(level=[850, 250])
    )
    xr.testing.assert_allclose(some["surface_pressure_std"], every["surface_pressure_std"])


def test_constant_fields_get_a_floored_std() -> None:
    ds = random_archive()
    ds["temperature"] = xr.full_like(ds["temperature"], 300.0)
    ds["surface_pressure"] = xr.zeros_like(ds["surface_pressure"])
    stats = statistics.compute_statistics(
        ds, ["temperature", "surface_pressure"], start=START, end="2000-01-05"
    )
    np.testing.assert_allclose(stats["temperature_mean"], 300.0, rtol=1e-15)
    np.testing.assert_allclose(stats["temperature_std"], 300.0 * statistics.STD_REL_FLOOR)
    np.testing.assert_allclose(stats["temperature_diff_std"], 300.0 * statistics.STD_REL_FLOOR)
    assert stats["surface_pressure_std"] == statistics.STD_ABS_FLOOR
    assert stats["surface_pressure_diff_std"] == statistics.STD_ABS_FLOOR


def test_attrs_record_the_provenance() -> None:
    ds = random_archive()
    stats = statistics.compute_statistics(
        ds,
        ["temperature", "surface_pressure"],
        start="2000-01-02",
        end="2000-01-06T12",
        source="gs://bucket/era5.zarr",
    )
    assert stats.attrs["statistics_version"] == statistics.STATISTICS_VERSION
    assert stats.attrs["period_start"] == "2000-01-02T00:00:00"
    assert stats.attrs["period_end"] == "2000-01-06T12:00:00"
    assert stats.attrs["variables"] == "temperature,surface_pressure"
    assert stats.attrs["time_step_seconds"] == 6 * 3600
    assert stats.attrs["lead_hours"] == 12
    assert stats.attrs["area_weighted"] == 1
    assert stats.attrs["source"] == "gs://bucket/era5.zarr"
    assert stats.attrs["n_times"] == 19
    assert stats.attrs["n_diff_pairs"] == 17


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    ds = random_archive()
    stats = statistics.compute_statistics(ds, ALL_VARS, start=START, end="2000-01-08")
    path = tmp_path / "stats.nc"
    statistics.save_statistics(stats, path)
    loaded = statistics.load_statistics(path)
    xr.testing.assert_identical(stats, loaded)
    # Loaded fully: the file can be replaced while the statistics are in use.
    path.unlink()
    assert float(loaded["temperature_std"][0]) == float(stats["temperature_std"][0])


def test_load_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="does not exist"):
        statistics.load_statistics(tmp_path / "nope.nc")
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"a": ("x", [1.0])}).to_netcdf(foreign)
    with pytest.raises(ArchiveError, match="statistics_version"):
        statistics.load_statistics(foreign)
    with pytest.raises(ArchiveError, match="statistics_version"):
        statistics.save_statistics(xr.Dataset(), tmp_path / "empty.nc")


@pytest.mark.parametrize(
    ("change", "kwargs", "match"),
    [
        (None, {"variables": ["humidity"]}, "variable 'humidity' is not in the archive"),
        (None, {"variables": []}, "at least one"),
        (None, {"start": "2001-01-01", "end": "2001-02-01"}, "no value in the period"),
        (None, {"start": "2000-01-02T00", "end": "2000-01-02T06"}, "no pair of times 12 h"),
        (None, {"start": "2000-01-05", "end": "2000-01-02"}, "after its end"),
        (None, {"start": "soon"}, "start 'soon' is not a date-time"),
        (None, {"levels": [300]}, r"lacks \[300\] hPa"),
        ("step5h", {}, "step of 5 h, which does not divide"),
        ("nan", {}, "variable 'temperature' has NaN"),
        ("bad-dims", {}, "variable 'temperature' has dims"),
    ],
)
def test_errors_name_the_culprit(change: str | None, kwargs: dict, match: str) -> None:
    ds = random_archive(step_hours=5 if change == "step5h" else 6)
    if change == "nan":
        ds["temperature"][3, 0, 2, 2] = np.nan
    if change == "bad-dims":
        ds["temperature"] = ds["temperature"].isel(latitude=0)
    args: dict = {"variables": ["temperature"], "start": START, "end": "2000-01-08"} | kwargs
    with pytest.raises(ArchiveError, match=match):
        statistics.compute_statistics(ds, **args)


def test_sea_surface_temperature_is_described_where_it_is_defined() -> None:
    """SST is NaN over land (ERA5 stores it so): its statistics are those of the sea points,
    each weighted by its cell area (brute force over the defined points only); a NaN in any
    other field is still refused."""
    ds = random_archive()
    rng = np.random.default_rng(1)
    land = rng.random((ds.sizes["latitude"], ds.sizes["longitude"])) < 0.3
    sst = 290.0 + 3.0 * rng.standard_normal((ds.sizes["time"], *land.shape))
    sst[:, land] = np.nan
    ds["sea_surface_temperature"] = (("time", "latitude", "longitude"), sst.astype(np.float32))
    start, end = START, START + np.timedelta64(7 * 24, "h")
    stats = statistics.compute_statistics(ds, ["sea_surface_temperature"], start=start, end=end)
    times = ds["time"].values
    inside = np.flatnonzero((times >= start) & (times <= end))
    x = ds["sea_surface_temperature"].values.astype(np.float64)
    w = np.broadcast_to(cell_area_weights(ds["latitude"].values)[:, None], land.shape)
    sea = w * ~land

    def mean_std(a: np.ndarray) -> tuple[float, float]:
        filled = np.nan_to_num(a)
        m = (filled * sea).sum() / (sea.sum() * len(a))
        return m, np.sqrt((np.nan_to_num(a - m) ** 2 * sea).sum() / (sea.sum() * len(a)))

    mean, std = mean_std(x[inside])
    pairs = [
        (i, j) for i in inside for j in inside if times[j] - times[i] == np.timedelta64(12, "h")
    ]
    diffs = np.stack([x[j] - x[i] for i, j in pairs])
    d_mean = (np.nan_to_num(diffs) * sea).sum() / (sea.sum() * len(diffs))
    diff_std = np.sqrt((np.nan_to_num(diffs - d_mean) ** 2 * sea).sum() / (sea.sum() * len(diffs)))
    # One-pass shifted moments against two-pass ones, float64 (as the other brute-force tests).
    np.testing.assert_allclose(stats["sea_surface_temperature_mean"], mean, rtol=1e-11)
    np.testing.assert_allclose(stats["sea_surface_temperature_std"], std, rtol=1e-9)
    np.testing.assert_allclose(stats["sea_surface_temperature_diff_std"], diff_std, rtol=1e-9)
    ds["temperature"][3, 0, 2, 2] = np.nan
    with pytest.raises(ArchiveError, match="variable 'temperature' has NaN"):
        statistics.compute_statistics(ds, ["temperature"], start=start, end=end)
