"""The simulated archive: layout, physics ranges, determinism, resumption and safety."""

import itertools

import numpy as np
import pytest
import xarray as xr

from weather.data.errors import ArchiveError
from weather.data.reader import open_archive
from weather.sim.dynamics import SimulationConfig, year_phase_seconds
from weather.sim.simulate import RunSpec, _check_finite, read_progress, simulate

# Tiny but real: T21, 8 sigma levels, 1 h steps, two days of spin-up.
CONFIG = SimulationConfig(
    resolution="T21", layers=8, dt_minutes=60, spinup_days=2, levels=(250, 500, 850, 925)
)
SPEC = RunSpec(start=np.datetime64("2001-03-01"), days=2, seed=7, chunk_days=1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "ref.zarr"
    simulate(path, config=CONFIG, spec=SPEC, native=True, progress=False)
    return path


def test_archive_is_canonical_for_plain_xarray(reference):
    ds = xr.open_zarr(reference)
    assert set(ds.data_vars) == {
        "geopotential",
        "temperature",
        "u_component_of_wind",
        "v_component_of_wind",
        "surface_pressure",
        "geopotential_at_surface",
    }
    assert ds["temperature"].dims == ("time", "level", "latitude", "longitude")
    assert ds["surface_pressure"].dims == ("time", "latitude", "longitude")
    assert ds["geopotential_at_surface"].dims == ("latitude", "longitude")
    assert ds.sizes == {"time": 8, "level": 4, "latitude": 32, "longitude": 64}
    np.testing.assert_array_equal(ds["level"], [250, 500, 850, 925])
    assert np.all(np.diff(ds["latitude"]) > 0) and ds["latitude"][0] == pytest.approx(-87.1875)
    assert ds["longitude"][0] == 0 and ds["longitude"][-1] == pytest.approx(354.375)
    expected = SPEC.start + np.timedelta64(6, "h") * np.arange(8)
    np.testing.assert_array_equal(ds["time"].values, expected)
    assert ds["temperature"].dtype == np.float32
    assert ds["temperature"].attrs["units"] == "K"
    assert ds["geopotential"].attrs["units"] == "m2 s-2"
    assert read_progress(reference)["complete"] is True
    native = xr.open_zarr(reference, group="native")
    assert native.sizes["latitude"] == 32 and native.sizes["longitude"] == 64
    # The archive reader finds it already canonical: same arrays, same order.
    canonical = open_archive(reference).load()
    for name in ds.data_vars:
        np.testing.assert_array_equal(canonical[name].values, ds[name].values)
        assert canonical[name].dims == ds[name].dims


def test_physical_ranges(reference):
    ds = xr.open_zarr(reference).load()
    assert np.isfinite(ds["temperature"]).all()
    sp = ds["surface_pressure"] / 100
    assert 940 < float(sp.mean()) < 1010  # orography lowers the mean below 1000 hPa
    assert float(sp.min()) < 800  # the Tibetan plateau and Antarctica are there
    t = ds["temperature"]
    assert float(t.min()) > 180 and float(t.max()) < 330
    zs = ds["geopotential_at_surface"] / 9.80665
    assert float(zs.max()) > 2000 and float(zs.min()) > -300
    # z500 close to the standard atmosphere's 5.5-5.9 km.
    z500 = float(ds["geopotential"].sel(level=500).mean()) / 9.80665
    assert 5300 < z500 < 6000
    # Geopotential increases upwards in every column.
    assert (ds["geopotential"].diff("level") < 0).all()


def test_interrupted_run_resumes_to_the_identical_archive(reference, tmp_path):
    path = tmp_path / "resumed.zarr"
    simulate(path, config=CONFIG, spec=SPEC, native=True, progress=False, stop_after_chunks=1)
    progress = read_progress(path)
    assert progress["chunks_done"] == 1 and not progress["complete"]
    partial = xr.open_zarr(path)
    assert np.isnan(partial["temperature"].isel(time=-1)).all()  # not yet simulated
    simulate(path, config=CONFIG, spec=SPEC, native=True, progress=False)
    for group in (None, "native"):
        xr.testing.assert_identical(
            xr.open_zarr(path, group=group).load(), xr.open_zarr(reference, group=group).load()
        )


def test_seeds_are_deterministic_and_independent(reference, tmp_path):
    cache = tmp_path / "cache"
    again = simulate(
        tmp_path / "again.zarr", config=CONFIG, spec=SPEC, cache_dir=cache, progress=False
    )
    xr.testing.assert_identical(xr.open_zarr(again).load(), xr.open_zarr(reference).load())
    assert list(cache.glob("spinup-*.npz")), "the spin-up state is cached"
    cached = simulate(
        tmp_path / "cached.zarr", config=CONFIG, spec=SPEC, cache_dir=cache, progress=False
    )
    xr.testing.assert_identical(xr.open_zarr(cached).load(), xr.open_zarr(reference).load())
    other = RunSpec(start=SPEC.start, days=SPEC.days, seed=8, chunk_days=1)
    different = simulate(tmp_path / "other.zarr", config=CONFIG, spec=other, progress=False)
    diff = xr.open_zarr(different)["temperature"] - xr.open_zarr(reference)["temperature"]
    assert float(np.abs(diff).max()) > 0


def test_existing_store_with_other_settings_is_refused_and_kept(reference):
    before = xr.open_zarr(reference).load()
    other = RunSpec(start=SPEC.start, days=SPEC.days, seed=99, chunk_days=1)
    with pytest.raises(ArchiveError, match="simulation_seed"):
        simulate(reference, config=CONFIG, spec=other, progress=False)
    xr.testing.assert_identical(xr.open_zarr(reference).load(), before)


def test_blown_up_chunk_is_refused():
    diags = {"temperature": np.ones((2, 3, 4, 4), np.float32)}
    diags["temperature"][1, 0, 0, 0] = np.nan
    times = np.array(["2000-01-01T00", "2000-01-01T06"], dtype="datetime64[ns]")
    with pytest.raises(ArchiveError, match="temperature: the simulation produced NaN"):
        _check_finite(diags, times)


def test_configuration_is_validated():
    with pytest.raises(ValueError, match="dt_minutes"):
        SimulationConfig(dt_minutes=25)
    with pytest.raises(ValueError, match="resolution"):
        SimulationConfig(resolution="T1000")
    with pytest.raises(ValueError, match="levels"):
        SimulationConfig(levels=(850, 500))


def test_year_phase_is_periodic():
    t0 = np.datetime64("2001-06-21T00")
    assert year_phase_seconds(t0) == pytest.approx(
        year_phase_seconds(t0 + np.timedelta64(int(365.24219 * 86400), "s")), abs=1.0
    )


def test_the_same_settings_spelled_differently_resume_the_same_store(reference):
    respelled = SimulationConfig(
        resolution="T21", layers=8, dt_minutes=60.0, spinup_days=2.0, levels=[250, 500, 850, 925]
    )
    assert respelled.to_attrs() == CONFIG.to_attrs()
    before = xr.open_zarr(reference).load()
    spec = RunSpec(start="2001-03-01", days=2.0, seed=7, chunk_days=1)
    simulate(reference, config=respelled, spec=spec, native=True, progress=False)
    xr.testing.assert_identical(xr.open_zarr(reference).load(), before)


def test_standard_splits_are_disjoint_and_train_is_ten_years_in_two_runs():
    from weather.sim.splits import SPLITS, split_names

    assert split_names("train") == ("train-1", "train-2")
    assert split_names("val") == ("val",)
    with pytest.raises(ValueError, match="split"):
        split_names("bogus")
    train = [SPLITS[name] for name in split_names("train")]
    assert sum(spec.days for spec in train) >= 3652  # at least ten years
    assert len({spec.seed for spec in SPLITS.values()}) == len(SPLITS)  # independent weather
    spans = sorted(
        (spec.start, spec.start + np.timedelta64(int(spec.days * 86400), "s"))
        for spec in SPLITS.values()
    )
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end  # no two splits share a time
    # The training runs are joined into one archive: a gap of at least 12 h after the first's
    # last time (end - 6 h) keeps every 12 h window inside one run.
    first_end = train[0].start + np.timedelta64(int(train[0].days * 86400), "s")
    assert train[1].start - (first_end - np.timedelta64(6, "h")) > np.timedelta64(12, "h")
