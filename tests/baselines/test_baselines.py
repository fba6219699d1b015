"""Baselines: persistence and climatological ensembles from an analysis archive."""

from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr
from support import LEVELS, synthetic_archive

from weather.baselines import (
    Climatology,
    DiffusionModel,
    EnsembleForecaster,
    PerfectModel,
    Persistence,
    PhysicsEnsemble,
    climatology_ensemble,
    persistence,
)
from weather.data.errors import ArchiveError
from weather.data.layout import ForecastWriter
from weather.forecast.run import _forecast_layout
from weather.model.task import TaskConfig

HOURS = np.timedelta64(1, "h")


@pytest.fixture(scope="module")
def small() -> xr.Dataset:
    return synthetic_archive(n_lat=4, n_lon=8, days=3)


@pytest.fixture(scope="module")
def years() -> xr.Dataset:
    """Three Januaries (distinct noise each), 6-hourly."""
    parts = [
        synthetic_archive(n_lat=4, n_lon=8, days=5, start=f"{y}-01-01", seed=y)
        for y in (2001, 2002, 2003)
    ]
    return xr.concat(parts, "time", data_vars="minimal", coords="minimal", compat="override")


@pytest.mark.parametrize("lazy", [False, True])
def test_persistence_is_the_analysis_at_init_for_every_lead(small, lazy):
    archive = small.chunk({"time": 2}) if lazy else small
    inits = ["2001-01-01T12", "2001-01-02T06"]
    fc = persistence(archive, inits, [0, 12, "36h", np.timedelta64(2, "D")])
    assert fc.sizes["member"] == 1
    assert bool(fc["temperature"].chunks) == lazy
    for name in ("temperature", "surface_pressure"):
        for init in inits:
            analysis = small[name].sel(time=init).values
            for lead in fc["lead_time"].values:
                value = fc[name].sel(member=0, init_time=init, lead_time=lead).values
                np.testing.assert_array_equal(value, analysis)
    assert "geopotential_at_surface" not in fc  # static fields are not forecast


def test_layout_matches_the_model_forecast(small):
    task = TaskConfig(levels=LEVELS)
    model = SimpleNamespace(
        task=task, latitude=small["latitude"].values, longitude=small["longitude"].values
    )
    init = np.datetime64("2001-01-02T00", "ns")
    leads = np.array([12, 24], "timedelta64[h]").astype("m8[ns]")
    layout = _forecast_layout(model, init, leads, np.arange(2), {})  # type: ignore[arg-type]
    template = ForecastWriter(layout).dataset()  # what the model's forecast holds
    names = [*task.level_variables, *task.surface_variables]
    baselines = [
        persistence(small, [init], leads, variables=names),
        climatology_ensemble(small, [init], leads, 2, [2001], variables=names),
    ]
    for fc in baselines:
        assert list(fc.data_vars) == list(template.data_vars)
        assert set(fc.coords) == set(template.coords)
        for name in template.variables:
            assert fc[name].dims == template[name].dims, name
            assert fc[name].dtype == template[name].dtype, name
            assert fc[name].attrs == template[name].attrs, name
        for name in ("init_time", "lead_time", "level", "latitude", "longitude"):
            np.testing.assert_array_equal(fc[name].values, template[name].values)
    assert baselines[1].sizes["member"] == 2


def _candidates(valid: np.datetime64, years: list[int], offsets: list[int]) -> dict:
    out = {}
    for y in years:
        moved = np.datetime64(f"{y}" + str(valid.astype("datetime64[s]"))[4:], "ns")
        for d in offsets:
            out[(y, d)] = moved + d * np.timedelta64(1, "D")
    return out


def test_climatology_members_come_from_the_right_years_and_days(years):
    inits = ["2010-01-02T00", "2010-01-03T06"]
    leads = np.array([12, 18], "timedelta64[h]")
    fc = climatology_ensemble(years.chunk({"time": 3}), inits, leads, 5, [2001, 2002, 2003], seed=3)
    fc = fc.compute()
    assert fc.sizes["member"] == 5
    for init in inits:
        for lead in fc["lead_time"].values:
            valid = np.datetime64(init, "ns") + lead
            pool = _candidates(valid, [2001, 2002, 2003], [0, -1])
            found = []
            for k in range(5):
                member = fc["temperature"].sel(member=k, init_time=init, lead_time=lead).values
                hits = [
                    key
                    for key, t in pool.items()
                    if np.array_equal(member, years["temperature"].sel(time=t).values)
                ]
                assert len(hits) == 1, (init, lead, k, hits)
                found.append(hits[0])
            # All years at the same day and hour first, then the day before to fill up.
            assert sorted(found[:3]) == [(2001, 0), (2002, 0), (2003, 0)]
            assert len(set(found)) == 5 and all(d == -1 for _, d in found[3:])
            # Every variable of a member comes from the same time.
            for k, key in enumerate(found):
                np.testing.assert_array_equal(
                    fc["surface_pressure"].sel(member=k, init_time=init, lead_time=lead).values,
                    years["surface_pressure"].sel(time=pool[key]).values,
                )


def test_climatology_is_deterministic_for_a_seed_and_distinct_years_when_enough(years):
    args = (years, ["2010-01-02T00"], [12, 24, 36], 3, [2001, 2002, 2003])
    a, b = climatology_ensemble(*args, seed=7), climatology_ensemble(*args, seed=7)
    xr.testing.assert_identical(a, b)
    orders = {
        tuple(climatology_ensemble(*args, seed=s)["temperature"][:, 0, 0, 0, 0, 0].values)
        for s in range(6)
    }
    assert len(orders) > 1  # the seed shuffles the years
    for lead in a["lead_time"].values:
        members = {
            a["temperature"].sel(member=k, lead_time=lead).values.tobytes() for k in range(3)
        }
        assert len(members) == 3
    assert a.attrs["years"] == [2001, 2002, 2003] and a.attrs["seed"] == 7


def test_climatology_moves_29_february_to_28_february():
    archive = synthetic_archive(n_lat=4, n_lon=8, days=2, start="2001-02-27")
    fc = climatology_ensemble(archive, ["2004-02-28T12"], [12], 1, [2001])
    np.testing.assert_array_equal(
        fc["temperature"].values[0, 0, 0], archive["temperature"].sel(time="2001-02-28T00").values
    )


def test_errors_name_the_init_time_and_variable(small, years):
    with pytest.raises(ArchiveError, match=r"init_time 2001-02-01T00:00.*lacks"):
        persistence(small, ["2001-02-01"], [12])
    with pytest.raises(ArchiveError, match="'relative_humidity' is missing"):
        persistence(small, ["2001-01-02"], [12], variables=["relative_humidity"])
    with pytest.raises(ArchiveError, match="'geopotential_at_surface' is static"):
        persistence(small, ["2001-01-02"], [12], variables=["geopotential_at_surface"])
    with pytest.raises(
        ArchiveError, match=r"init_time 2010-01-02T00:00, lead 12 h.*\(year 1999, day offset \+0\)"
    ):
        climatology_ensemble(years, ["2010-01-02"], [12], 2, [2001, 1999], seed=0)
    with pytest.raises(ValueError, match="years: must be distinct"):
        climatology_ensemble(years, ["2010-01-02"], [12], 2, [2001, 2001])
    with pytest.raises(ValueError, match="members"):
        climatology_ensemble(years, ["2010-01-02"], [12], 0, [2001])
    with pytest.raises(ValueError, match="lead 'soon'"):
        persistence(small, ["2001-01-02"], ["soon"])


def test_every_forecaster_meets_the_interface(small, tmp_path):
    forecasters = [
        Persistence(),
        Climatology(small, (2001,)),
        PhysicsEnsemble(),
        PerfectModel(),
        DiffusionModel(tmp_path / "unused.msgpack"),
    ]
    assert all(isinstance(f, EnsembleForecaster) for f in forecasters)


def test_interface_store_holds_what_the_function_returns(small, tmp_path):
    """Through the interface, the baselines write the stores evaluation scores: the same
    numbers as the functions, one chunk per init time and lead."""
    init = np.datetime64("2001-01-02T00", "ns")
    leads = np.array([12, 24, 36], "timedelta64[h]").astype("m8[ns]")
    cases = [
        (Persistence(), persistence(small, [init], leads)),
        (
            Climatology(small, (2001,)),
            climatology_ensemble(small, [init], leads, 2, [2001], seed=4),
        ),
    ]
    for i, (forecaster, expected) in enumerate(cases):
        store = tmp_path / f"{i}.zarr"
        forecaster.forecast(small, init, leads, 2, 4, out=store)
        got = xr.open_zarr(store, consolidated=False)
        assert got["temperature"].encoding["chunks"][1:3] == (1, 1)
        xr.testing.assert_identical(got.load(), expected.load())
        with pytest.raises(FileExistsError):  # a store is never written twice
            forecaster.forecast(small, init, leads, 2, 4, out=store)


def test_climatology_needs_a_whole_year_and_simulators_contiguous_leads(small):
    with pytest.raises(ArchiveError, match="no whole calendar year"):
        Climatology.of(small)  # three days of 2001
    gappy = np.array([12, 36], "timedelta64[h]").astype("m8[ns]")
    with pytest.raises(ValueError, match="every 12 h from 12 h"):
        PhysicsEnsemble().forecast(small, np.datetime64("2001-01-02T00"), gappy, 2, 0)
